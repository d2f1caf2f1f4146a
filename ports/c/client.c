/* One client's round: local SGD steps with NSConv, SAP and BaE, then the growth scores of an
 * adjustment round (SPEC LT-1..3, BAE-2..4, PG-5), run event by event as the plan header lists
 * them (MEM-5). Every array lives in the arena at the plan's offset; the code reaches a buffer
 * only between the events the plan opens and closes it (arena.c). docs/porting.md maps each
 * part to refimpl (refimpl/fl/client.py local_train, growth_scores; refimpl/fl/bae.py).
 */
#include "fedmef_plan.h"
#include "client.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

enum { FM_LAYER_CONV = 1, FM_LAYER_RELU, FM_LAYER_MAXPOOL, FM_LAYER_GAP, FM_LAYER_LINEAR };

typedef struct {
    int index, bwd;
    const char *scope, *op;
} plan_event;

#define FM_EVENT_ENTRY(i, phase, scope, op) {i, phase, scope, op},
static const plan_event EVENTS[] = {FM_PLAN_EVENTS(FM_EVENT_ENTRY)};
#define FM_BUFFER_ENTRY(name, off, bytes, born, died) {name, off, bytes, born, died},
static const fm_plan_buffer BUFFERS[] = {FM_PLAN_BUFFERS(FM_BUFFER_ENTRY)};
typedef struct {
    int kind;
    const char *name;
    int32_t a, b, k, s, p, bias;
} plan_layer;
#define FM_LAYER_ENTRY(kind, name, a, b, k, s, p, bias) {kind, name, a, b, k, s, p, bias},
static const plan_layer LAYERS[] = {FM_PLAN_LAYERS(FM_LAYER_ENTRY)};
typedef struct {
    const char *name;
    int32_t numel, nnz;
} plan_prunable;
#define FM_PRUNABLE_ENTRY(name, numel, nnz) {name, numel, nnz},
static const plan_prunable PRUNABLE[] = {FM_PLAN_PRUNABLE(FM_PRUNABLE_ENTRY)};

#define NLAYERS ((int)(sizeof LAYERS / sizeof LAYERS[0]))
#define NPRUNABLE ((int)(sizeof PRUNABLE / sizeof PRUNABLE[0]))

#ifndef FM_HP_LOCAL_EPOCHS
#error "the plan header lacks the training hyperparameters FM_HP_*: make it with `fedmef conformance export --c-header`"
#endif

/* ---- errors and recording -------------------------------------------------------------------- */
static int fail(fm_client *cl, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cl->error, sizeof cl->error, fmt, ap);
    va_end(ap);
    return -1;
}

static int arena_fail(fm_client *cl) { return fail(cl, "arena: %s", cl->ar.error); }

static void rec(fm_client *cl, const char *key, int dtype, int ndim, const int64_t *shape,
                int64_t start, int64_t count, const void *data) {
    if (cl->recording && cl->obs) cl->obs->slice(cl->obs->ctx, key, dtype, ndim, shape, start,
                                                 count, data);
}

static void rec_all(fm_client *cl, const char *key, int dtype, int ndim, const int64_t *shape,
                    const void *data) {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    rec(cl, key, dtype, ndim, shape, 0, n, data);
}

static void rec_scalar(fm_client *cl, const char *key, int dtype, const void *data) {
    rec(cl, key, dtype, 0, NULL, 0, 1, data);
}

/* a masked tensor: active values (index order) scattered to their positions, zeros elsewhere */
static void rec_scatter(fm_client *cl, const char *key, int ndim, const int64_t *shape,
                        const float *values, const uint8_t *mask, int64_t numel) {
    const float *v = values;
    for (int64_t i = 0; i < numel; ++i) {
        const float z = 0.0f;
        rec(cl, key, FM_F32, ndim, shape, i, 1, fm_bit(mask, i) ? v++ : &z);
    }
}

static int find(fm_client *cl, const char *fmt, ...) {
    char name[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    return fm_arena_find(&cl->ar, name);
}

#define GET(cl, id, bytes) fm_arena_get(&(cl)->ar, (id), (size_t)(bytes))

/* ---- set-up ---------------------------------------------------------------------------------- */
static void weight_shape(const fm_layer *l, int64_t *shape, int *ndim) {
    if (l->kind == FM_LAYER_CONV) {
        shape[0] = l->cout; shape[1] = l->cin; shape[2] = l->k; shape[3] = l->k;
        *ndim = 4;
    } else {
        shape[0] = l->b; shape[1] = l->a;
        *ndim = 2;
    }
}

static int resolve(fm_client *cl, fm_layer *l, const char *scope_of_pool) {
    const char *n = l->name;
    const char *op = l->kind == FM_LAYER_CONV ? "conv2d" : "linear";
    l->b_values = find(cl, "state/%s.weight:values", n);
    l->b_mask = find(cl, "state/%s.weight:mask", n);
    l->b_bias = find(cl, "state/%s.bias", n);
    l->b_gain = find(cl, "state/%s.gain", n);
    l->b_g_values = find(cl, "state/%s.weight:grad", n);
    l->b_g_bias = find(cl, "state/%s.bias:grad", n);
    l->b_g_gain = find(cl, "state/%s.gain:grad", n);
    l->b_m_values = find(cl, "state/%s.weight:momentum", n);
    l->b_m_bias = find(cl, "state/%s.bias:momentum", n);
    l->b_m_gain = find(cl, "state/%s.gain:momentum", n);
    l->b_what = find(cl, "%s/nsconv_standardize:out", n);
    l->b_r = find(cl, "%s/nsconv_standardize:r", n);
    l->b_unclamped = find(cl, "%s/nsconv_standardize:unclamped", n);
    l->b_what_grad = find(cl, "%s/nsconv_standardize:grad", n);
    l->b_out = find(cl, "%s/%s:out", n, op);
    l->b_out_grad = find(cl, "%s/%s:grad", n, op);
    l->b_cache_a = find(cl, "%s/%s:cache.bits", n, op);
    if (l->b_cache_a < 0) l->b_cache_a = find(cl, "%s/%s:cache.index", n, op);
    l->b_cache_b = find(cl, "%s/%s:cache.values", n, op);
    if (l->b_cache_b < 0) l->b_cache_b = find(cl, "%s/%s:cache.dense", n, op);
    l->b_relu_bits = find(cl, "%s/%s:relu_bits", n, op);
    l->b_widx = find(cl, "%s/%s:weight_index", n, op);
    l->b_hist = find(cl, "%s/%s:selection_histogram", n, op);
    l->b_widx_bwd = find(cl, "%s/%s.vjp:weight_index", n, op);
    l->b_decoded = find(cl, "%s/%s.vjp:decoded_input", n, op);
    l->b_pool_out = find(cl, "%s/max_pool2d:out", scope_of_pool);
    l->b_pool_arg = find(cl, "%s/max_pool2d:arg", scope_of_pool);
    l->b_pool_grad = find(cl, "%s/max_pool2d:grad", scope_of_pool);
    if (l->b_values < 0 || l->b_out < 0 || l->b_out_grad < 0 || l->b_cache_b < 0)
        return fail(cl, "the plan lacks the buffers of layer %s (its weights, output, output "
                        "cotangent or SAP cache): regenerate the header for this model", n);
    if (l->kind == FM_LAYER_CONV && (l->b_gain < 0 || l->b_what < 0 || l->b_r < 0))
        return fail(cl, "the plan has no NSConv buffers for %s: the port runs NSConv layers",
                    n);
    return 0;
}

int fm_client_init(fm_client *cl, unsigned char *arena, size_t arena_bytes,
                   const fm_observer *obs) {
    memset(cl, 0, sizeof *cl);
    cl->obs = obs;
    if (arena_bytes < FM_PLAN_ARENA_BYTES)
        return fail(cl, "arena of %lu bytes, the plan needs %lu", (unsigned long)arena_bytes,
                    (unsigned long)FM_PLAN_ARENA_BYTES);
    if (NLAYERS > FM_MAX_LAYERS || NPRUNABLE > FM_MAX_LAYERS)
        return fail(cl, "the plan has more than %d layers", FM_MAX_LAYERS);
    memcpy(cl->plan, BUFFERS, sizeof BUFFERS);
    cl->plan[FM_PLAN_BUFFER_COUNT].name = "growth/score_row";  /* sized below */
    cl->plan[FM_PLAN_BUFFER_COUNT + 1].name = "growth/pairs";
    fm_arena_init(&cl->ar, arena, FM_PLAN_ARENA_BYTES, cl->plan, FM_PLAN_BUFFER_COUNT + 2,
                  cl->live);
    cl->b_x = find(cl, "state/batch:x");
    cl->b_y = find(cl, "state/batch:y");
    int32_t c = FM_PLAN_IN_C, h = FM_PLAN_IN_H, w = FM_PLAN_IN_W;
    int last_conv = -1, np = 0;
    for (int i = 0; i < NLAYERS; ++i) {
        fm_layer *l = &cl->L[i];
        const plan_layer *p = &LAYERS[i];
        l->kind = p->kind; l->name = p->name; l->a = p->a; l->b = p->b; l->k = p->k;
        l->s = p->s; l->p = p->p; l->bias = p->bias; l->act = i; l->prunable = -1;
        if (l->kind == FM_LAYER_CONV || l->kind == FM_LAYER_LINEAR) {
            const int32_t in = l->kind == FM_LAYER_CONV ? c : c * h * w;
            if (l->a != in)
                return fail(cl, "layer %s expects %d input channels/features, the previous "
                                "layer gives %d", l->name, l->a, in);
            if (np >= NPRUNABLE || strcmp(PRUNABLE[np].name, l->name) != 0)
                return fail(cl, "prunable layer %d of the plan is not %s", np, l->name);
            l->prunable = np;
            cl->prunable_layer[np] = i;
            l->nnz = PRUNABLE[np].nnz;
            ++np;
        }
        if (l->kind == FM_LAYER_CONV) {
            l->cin = c; l->h = h; l->w = w; l->cout = l->b;
            l->oh = (h + 2 * l->p - l->k) / l->s + 1;
            l->ow = (w + 2 * l->p - l->k) / l->s + 1;
            l->fan_in = l->cin * l->k * l->k;
            l->numel_w = l->cout * l->fan_in;
            c = l->cout; h = l->oh; w = l->ow;
            l->relu = i + 1 < NLAYERS && LAYERS[i + 1].kind == FM_LAYER_RELU;
            last_conv = i;
        } else if (l->kind == FM_LAYER_LINEAR) {
            l->cin = l->a; l->cout = l->b; l->fan_in = l->a; l->numel_w = l->a * l->b;
            l->h = l->w = l->oh = l->ow = 1;
            c = l->b; h = w = 1;
        } else if (l->kind == FM_LAYER_RELU) {
            if (i == 0 || LAYERS[i - 1].kind != FM_LAYER_CONV)
                return fail(cl, "layer %d: a ReLU that does not follow a conv (the port fuses "
                                "every ReLU into its conv)", i);
        } else if (l->kind == FM_LAYER_MAXPOOL) {
            if (last_conv < 0) return fail(cl, "layer %d: a max-pool before any conv", i);
            l->cin = c; l->h = h; l->w = w; l->cout = c;
            l->oh = (h - l->k) / l->s + 1;
            l->ow = (w - l->k) / l->s + 1;
            h = l->oh; w = l->ow;
            l->name = cl->L[last_conv].name;
        } else if (l->kind == FM_LAYER_GAP) {
            l->cin = c; l->h = h; l->w = w; l->cout = c;
            h = w = 1;
        }
        if (l->prunable >= 0) {
            if (PRUNABLE[l->prunable].numel != l->numel_w)
                return fail(cl, "layer %s: %d weights in the plan, %d by its shape", l->name,
                            PRUNABLE[l->prunable].numel, l->numel_w);
            l->dense = l->nnz == l->numel_w;
            char pool[96];
            snprintf(pool, sizeof pool, "%s.maxpool", l->name);
            if (resolve(cl, l, pool) != 0) return -1;
        }
    }
    cl->nlayers = NLAYERS;
    cl->nprunable = np;
    cl->classes = c;
    if (np != NPRUNABLE) return fail(cl, "the plan lists %d prunable layers, the layers %d",
                                     NPRUNABLE, np);
    if (cl->b_x < 0 || cl->b_y < 0) return fail(cl, "the plan has no data batch buffers");
    /* the growth pass (PG-5) runs in the gradient region, which it does not otherwise use: a
     * score row (the longest fan_in) and the pairs; never opened by a training step's events */
    uint32_t row = 0;
    for (int s = 0; s < np; ++s) {
        const uint32_t b = 4u * (uint32_t)cl->L[cl->prunable_layer[s]].fan_in;
        if (b > row) row = b;
    }
    if (row > FM_PLAN_GRAD_REGION_BYTES) row = FM_PLAN_GRAD_REGION_BYTES;
    fm_plan_buffer *g = &cl->plan[FM_PLAN_BUFFER_COUNT];
    g[0].offset = FM_PLAN_GRAD_REGION_OFFSET; g[0].bytes = row;
    g[1].offset = FM_PLAN_GRAD_REGION_OFFSET + row;
    g[1].bytes = FM_PLAN_GRAD_REGION_BYTES - row;
    g[0].born = g[0].died = g[1].born = g[1].died = -2;
    cl->b_growth_row = FM_PLAN_BUFFER_COUNT;
    cl->b_growth_pairs = FM_PLAN_BUFFER_COUNT + 1;
    return 0;
}

int fm_client_params(const fm_client *cl, const char **names, int64_t *numels, int max) {
    static char store[FM_MAX_PARAMS][80];
    int n = 0;
    for (int i = 0; i < cl->nlayers && n + 3 <= max && n + 3 <= FM_MAX_PARAMS; ++i) {
        const fm_layer *l = &cl->L[i];
        if (l->prunable < 0) continue;
        snprintf(store[n], sizeof store[n], "%s.weight", l->name);
        numels[n] = l->numel_w;
        names[n] = store[n]; ++n;
        if (l->b_bias >= 0) {
            snprintf(store[n], sizeof store[n], "%s.bias", l->name);
            numels[n] = l->cout;
            names[n] = store[n]; ++n;
        }
        if (l->b_gain >= 0) {
            snprintf(store[n], sizeof store[n], "%s.gain", l->name);
            numels[n] = l->cout;
            names[n] = store[n]; ++n;
        }
    }
    return n;
}

/* ---- events ---------------------------------------------------------------------------------- */
static int begin(fm_client *cl, int ev, int bwd, const char *scope, const char *op) {
    if (ev >= FM_PLAN_EVENT_COUNT || EVENTS[ev].bwd != bwd || strcmp(EVENTS[ev].scope, scope)
        || strcmp(EVENTS[ev].op, op))
        return fail(cl, "event %d: the port runs %s %s/%s, the plan has %s", ev,
                    bwd ? "bwd" : "fwd", scope, op,
                    ev < FM_PLAN_EVENT_COUNT ? EVENTS[ev].op : "no such event");
    return fm_arena_begin_event(&cl->ar, ev) ? arena_fail(cl) : 0;
}

static int end(fm_client *cl, int ev) {
    return fm_arena_end_event(&cl->ar, ev) ? arena_fail(cl) : 0;
}

static fm_conv_dims conv_dims(const fm_layer *l, int32_t nb) {
    fm_conv_dims d;
    d.n = nb; d.c = l->cin; d.h = l->h; d.w = l->w;
    d.o = l->cout; d.k = l->k; d.s = l->s; d.p = l->p; d.oh = l->oh; d.ow = l->ow;
    return d;
}

static int32_t *weight_index(fm_client *cl, const fm_layer *l, int id, const uint8_t *mask) {
    int32_t *ptr = GET(cl, id, 4 * ((size_t)l->cout + 1 + (size_t)l->nnz));
    if (!ptr) {
        arena_fail(cl);
        return NULL;
    }
    if (fm_weight_index(mask, l->cout, l->fan_in, ptr, ptr + l->cout + 1) != l->nnz) {
        fail(cl, "layer %s: the mask has a different count than the plan's %d", l->name,
             l->nnz);
        return NULL;
    }
    return ptr;
}

/* ---- the SAP cache of a layer's input (SAP-1, SAP-2, CACHE-1, CACHE-2) ---------------------- */
static int sap_encode(fm_client *cl, fm_layer *l, const float *x, int64_t numel) {
    const int64_t keep = fm_sap_keep_count(numel, FM_PLAN_GAMMA_NUM, FM_PLAN_GAMMA_DEN);
    const int fmt = fm_sap_format(FM_PLAN_POLICY, numel, keep);
    int64_t a_bytes;
    const int64_t total = fm_sap_format_bytes(fmt, numel, keep, &a_bytes);
    if (keep == numel && fmt == FM_CACHE_DENSE)
        return fail(cl, "layer %s: SAP drops nothing here (gamma 0, dense cache): the cache is "
                        "the input itself, which this port does not plan", l->name);
    uint32_t *hist = keep < numel ? GET(cl, l->b_hist, 256 * 4) : NULL;
    uint8_t *a = a_bytes ? GET(cl, l->b_cache_a, a_bytes) : NULL;
    float *values = GET(cl, l->b_cache_b, total - a_bytes);
    if ((keep < numel && !hist) || (a_bytes && !a) || !values) return arena_fail(cl);
    uint32_t t = 0;
    int64_t ties = keep;
    if (keep < numel) {
        const int64_t r = fm_sap_select(x, numel, keep, hist, &t, &ties);
        if (r < 0)
            return fail(cl, "sap select: layer %s input holds a non-finite value at flat index "
                            "%ld; SAP cannot rank NaN or inf", l->name, (long)(-1 - r));
    }
    fm_sap_encode(x, numel, t, ties, fmt, a, values);
    l->cache_fmt = fmt;
    l->cache_numel = numel;
    l->cache_keep = keep;
    if (cl->recording) {
        char key[96];
        const uint8_t code = (uint8_t)fmt;
        const int64_t kshape[1] = {keep}, ashape[1] = {a_bytes}, vshape[1] = {keep};
        snprintf(key, sizeof key, "sap/%s/kept", l->name);
        int64_t j = 0, left = ties;
        for (int64_t i = 0; i < numel; ++i)
            if (keep == numel || fm_sap_kept(fm_abs_bits(x[i]), t, &left))
                rec(cl, key, FM_I64, 1, kshape, j++, 1, &i);
        snprintf(key, sizeof key, "sap/%s/format", l->name);
        rec_scalar(cl, key, FM_U8, &code);
        if (fmt == FM_CACHE_BITMAP) {
            snprintf(key, sizeof key, "sap/%s/bits", l->name);
            rec_all(cl, key, FM_U8, 1, ashape, a);
        } else if (fmt == FM_CACHE_INDEX) {
            const int width = fm_sap_index_width(numel);
            const int64_t ishape[1] = {keep};
            snprintf(key, sizeof key, "sap/%s/index", l->name);
            rec_all(cl, key, width == 1 ? FM_U8 : width == 2 ? FM_U16 : FM_U32, 1, ishape, a);
        }
        snprintf(key, sizeof key, "sap/%s/values", l->name);
        if (fmt == FM_CACHE_DENSE) {
            int64_t shape[4] = {0, l->cin, l->h, l->w};
            shape[0] = numel / ((int64_t)l->cin * l->h * l->w);
            rec_all(cl, key, FM_F32, l->kind == FM_LAYER_CONV ? 4 : 2, shape, values);
        } else {
            rec_all(cl, key, FM_F32, 1, vshape, values);
        }
        snprintf(key, sizeof key, "sap/%s/nbytes", l->name);
        rec_scalar(cl, key, FM_I64, &total);
    }
    return 0;
}

/* xhat of the layer's input for its weight gradient (SAP-3). */
static const float *sap_decode(fm_client *cl, fm_layer *l) {
    int64_t a_bytes;
    const int64_t total = fm_sap_format_bytes(l->cache_fmt, l->cache_numel, l->cache_keep,
                                              &a_bytes);
    const uint8_t *a = a_bytes ? GET(cl, l->b_cache_a, a_bytes) : NULL;
    const float *values = GET(cl, l->b_cache_b, total - a_bytes);
    if ((a_bytes && !a) || !values) return NULL;
    if (l->cache_fmt == FM_CACHE_DENSE) return values;
    float *xhat = GET(cl, l->b_decoded, 4 * l->cache_numel);
    if (!xhat) return NULL;
    fm_sap_decode(xhat, l->cache_numel, l->cache_fmt, a, values, l->cache_keep);
    return xhat;
}

/* ---- growth scores (PG-5): top k_l |score| among inactive positions ------------------------ */
typedef struct {
    int32_t index;
    float value;
} fm_pair;

typedef struct {
    fm_pair *pairs[FM_MAX_LAYERS];
    int64_t count[FM_MAX_LAYERS], k[FM_MAX_LAYERS];
    float *row;
} growth_state;

/* Offer one score at flat position i of layer slot s (ascending i): kept in (|score| desc,
 * index asc) order, so a later equal |score| never displaces an earlier one (CONV-4). */
static void offer(growth_state *gs, int s, int32_t i, float v) {
    fm_pair *p = gs->pairs[s];
    int64_t n = gs->count[s];
    const float a = fabsf(v);
    if (gs->k[s] == 0) return;
    if (n == gs->k[s]) {
        if (!(a > fabsf(p[n - 1].value))) return;
        --n;
    }
    int64_t j = n;
    while (j > 0 && a > fabsf(p[j - 1].value)) {
        p[j] = p[j - 1];
        --j;
    }
    p[j].index = i;
    p[j].value = v;
    gs->count[s] = n + 1;
}

/* the dense score of layer l, row by row, offered to the top-k and recorded */
static int score_rows(fm_client *cl, fm_layer *l, growth_state *gs, const float *g,
                      const float *xhat, int32_t nb) {
    char key[96];
    int64_t shape[4];
    int ndim;
    const uint8_t *mask = l->b_mask >= 0 ? GET(cl, l->b_mask, (l->numel_w + 7) / 8) : NULL;
    if (l->b_mask >= 0 && !mask) return arena_fail(cl);
    weight_shape(l, shape, &ndim);
    snprintf(key, sizeof key, "score/%s", l->name);
    const fm_conv_dims d = conv_dims(l, nb);
    for (int32_t o = 0; o < l->cout; ++o) {
        for (int32_t f = 0; f < l->fan_in; ++f)
            gs->row[f] = l->kind == FM_LAYER_CONV
                ? fm_conv2d_weight_grad_at(g, xhat, o, f, &d)
                : fm_linear_weight_grad_at(g, xhat, o, f, nb, l->cin, l->cout);
        rec(cl, key, FM_F32, ndim, shape, (int64_t)o * l->fan_in, l->fan_in, gs->row);
        for (int32_t f = 0; f < l->fan_in; ++f) {
            const int32_t i = o * l->fan_in + f;
            if (mask && !fm_bit(mask, i)) offer(gs, l->prunable, i, gs->row[f]);
        }
    }
    return 0;
}

/* ---- one forward and backward pass ----------------------------------------------------------- */
/* growth == NULL: a training step (gradients accumulated into the state's gradient buffers,
 * which the caller zeroed); else the growth pass: dense scores instead of parameter gradients. */
static int pass(fm_client *cl, int32_t nb, growth_state *gs) {
    int ev = 0;
    char key[96];
    const float *h = GET(cl, cl->b_x, 4 * (size_t)nb * FM_PLAN_IN_C * FM_PLAN_IN_H * FM_PLAN_IN_W);
    const int64_t *y = GET(cl, cl->b_y, 8 * (size_t)nb);
    if (!h || !y) return arena_fail(cl);
    int32_t c = FM_PLAN_IN_C, hh = FM_PLAN_IN_H, ww = FM_PLAN_IN_W;
    /* forward */
    for (int i = 0; i < cl->nlayers; ++i) {
        fm_layer *l = &cl->L[i];
        if (l->kind == FM_LAYER_CONV) {
            const uint8_t *mask = l->b_mask >= 0 ? GET(cl, l->b_mask, (l->numel_w + 7) / 8)
                                                 : NULL;
            const float *wv = GET(cl, l->b_values, 4 * (size_t)l->nnz);
            const float *gain = GET(cl, l->b_gain, 4 * (size_t)l->cout);
            const float *bias = l->b_bias >= 0 ? GET(cl, l->b_bias, 4 * (size_t)l->cout) : NULL;
            if (begin(cl, ev, 0, l->name, "nsconv_standardize")) return -1;
            const size_t what_n = l->dense ? (size_t)l->numel_w : (size_t)l->nnz;
            float *what = GET(cl, l->b_what, 4 * what_n);
            float *r = GET(cl, l->b_r, 4 * (size_t)l->cout);
            uint8_t *unc = GET(cl, l->b_unclamped, (size_t)l->cout);
            if (!wv || !gain || !what || !r || !unc || (l->b_mask >= 0 && !mask)) return arena_fail(cl);
            fm_nsconv_forward(what, !l->dense, r, unc, wv, mask, gain, l->cout, l->fan_in,
                              (float)FM_HP_NSCONV_EPS);
            if (!gs) {
                int64_t shape[4];
                int nd;
                weight_shape(l, shape, &nd);
                snprintf(key, sizeof key, "w_hat/%s", l->name);
                if (l->dense) rec_all(cl, key, FM_F32, nd, shape, what);
                else rec_scatter(cl, key, nd, shape, what, mask, l->numel_w);
            }
            if (end(cl, ev++)) return -1;
            if (begin(cl, ev, 0, l->name, "conv2d")) return -1;
            const fm_conv_dims d = conv_dims(l, nb);
            const int32_t *ptr = NULL;
            if (!l->dense && !(ptr = weight_index(cl, l, l->b_widx, mask))) return -1;
            const int64_t numel = (int64_t)nb * l->cout * l->oh * l->ow;
            float *out = GET(cl, l->b_out, 4 * numel);
            if (!out) return arena_fail(cl);
            fm_conv2d_forward(out, h, what, ptr, ptr ? ptr + l->cout + 1 : NULL, bias, &d);
            int64_t shape[4] = {nb, l->cout, l->oh, l->ow};
            snprintf(key, sizeof key, "act/%02d_conv", l->act);
            if (!gs) rec_all(cl, key, FM_F32, 4, shape, out);
            if (sap_encode(cl, l, h, (int64_t)nb * l->cin * l->h * l->w)) return -1;
            if (l->relu) {
                uint8_t *bits = GET(cl, l->b_relu_bits, (numel + 7) / 8);
                if (!bits) return arena_fail(cl);
                fm_relu_forward(out, bits, numel);
                snprintf(key, sizeof key, "act/%02d_relu", l->act + 1);
                if (!gs) rec_all(cl, key, FM_F32, 4, shape, out);
            }
            if (end(cl, ev++)) return -1;
            h = out;
            c = l->cout; hh = l->oh; ww = l->ow;
        } else if (l->kind == FM_LAYER_MAXPOOL) {
            const fm_layer *conv = &cl->L[i - (cl->L[i - 1].kind == FM_LAYER_RELU ? 2 : 1)];
            char scope[96];
            snprintf(scope, sizeof scope, "%s.maxpool", conv->name);
            if (begin(cl, ev, 0, scope, "max_pool2d")) return -1;
            const int64_t numel = (int64_t)nb * c * l->oh * l->ow;
            float *out = GET(cl, conv->b_pool_out, 4 * numel);
            uint8_t *arg = GET(cl, conv->b_pool_arg, numel);
            if (!out || !arg) return arena_fail(cl);
            fm_maxpool_forward(out, arg, h, nb, c, hh, ww, l->k, l->s, l->oh, l->ow);
            const int64_t shape[4] = {nb, c, l->oh, l->ow};
            snprintf(key, sizeof key, "act/%02d_maxpool", l->act);
            if (!gs) rec_all(cl, key, FM_F32, 4, shape, out);
            if (end(cl, ev++)) return -1;
            h = out; hh = l->oh; ww = l->ow;
        } else if (l->kind == FM_LAYER_GAP) {
            if (begin(cl, ev, 0, "avgpool", "global_avg_pool2d")) return -1;
            const int id = find(cl, "avgpool/global_avg_pool2d:out");
            float *out = GET(cl, id, 4 * (size_t)nb * c);
            if (!out) return arena_fail(cl);
            fm_gap_forward(out, h, nb, c, hh * ww);
            const int64_t shape[2] = {nb, c};
            snprintf(key, sizeof key, "act/%02d_gap", l->act);
            if (!gs) rec_all(cl, key, FM_F32, 2, shape, out);
            if (end(cl, ev++)) return -1;
            h = out; hh = ww = 1;
        } else if (l->kind == FM_LAYER_LINEAR) {
            if (begin(cl, ev, 0, l->name, "linear")) return -1;
            const uint8_t *mask = l->b_mask >= 0 ? GET(cl, l->b_mask, (l->numel_w + 7) / 8)
                                                 : NULL;
            const float *wv = GET(cl, l->b_values, 4 * (size_t)l->nnz);
            const float *bias = l->b_bias >= 0 ? GET(cl, l->b_bias, 4 * (size_t)l->cout) : NULL;
            float *out = GET(cl, l->b_out, 4 * (size_t)nb * l->cout);
            if (!wv || !out || (l->b_mask >= 0 && !mask)) return arena_fail(cl);
            fm_linear_forward(out, h, wv, mask, bias, nb, l->cin, l->cout);
            const int64_t shape[2] = {nb, l->cout};
            snprintf(key, sizeof key, "act/%02d_linear", l->act);
            if (!gs) rec_all(cl, key, FM_F32, 2, shape, out);
            if (sap_encode(cl, l, h, (int64_t)nb * l->cin)) return -1;
            if (end(cl, ev++)) return -1;
            h = out; c = l->cout;
        }
    }
    /* the loss */
    if (begin(cl, ev, 0, "loss", "cross_entropy")) return -1;
    const int id_loss = find(cl, "loss/cross_entropy:out");
    const int id_probs = find(cl, "loss/cross_entropy:probs");
    const int id_target = find(cl, "loss/cross_entropy:target");
    const int id_seed = find(cl, "loss/cross_entropy:grad");
    float *loss = GET(cl, id_loss, 4);
    float *probs = GET(cl, id_probs, 4 * (size_t)nb * c);
    int64_t *target = GET(cl, id_target, 8 * (size_t)nb);
    if (!loss || !probs || !target) return arena_fail(cl);
    memcpy(target, y, 8 * (size_t)nb);
    *loss = fm_cross_entropy_forward(probs, h, target, nb, c);
    if (!gs) rec_scalar(cl, "loss", FM_F32, loss);
    if (end(cl, ev++)) return -1;
    /* backward */
    if (begin(cl, ev, 1, "loss", "cross_entropy")) return -1;
    float *seed = GET(cl, id_seed, 4);
    fm_layer *top = &cl->L[cl->nlayers - 1];
    float *g = GET(cl, top->b_out_grad, 4 * (size_t)nb * c);
    if (!seed || !g) return arena_fail(cl);
    *seed = 1.0f;
    fm_cross_entropy_backward(g, probs, target, *seed, nb, c);
    if (end(cl, ev++)) return -1;
    for (int i = cl->nlayers - 1; i >= 0; --i) {
        fm_layer *l = &cl->L[i];
        /* the cotangent this layer writes: of its input's producer, or none for the data */
        int in_grad = -1;
        size_t in_numel = 0;
        for (int j = i - 1; j >= 0; --j) {
            const fm_layer *q = &cl->L[j];
            if (q->kind == FM_LAYER_RELU) continue;
            if (q->kind == FM_LAYER_MAXPOOL) {
                const fm_layer *conv = &cl->L[j - (cl->L[j - 1].kind == FM_LAYER_RELU ? 2 : 1)];
                in_grad = conv->b_pool_grad;
                in_numel = (size_t)nb * q->cout * q->oh * q->ow;
            } else if (q->kind == FM_LAYER_GAP) {
                in_grad = find(cl, "avgpool/global_avg_pool2d:grad");
                in_numel = (size_t)nb * q->cout;
            } else {
                in_grad = q->b_out_grad;
                in_numel = (size_t)nb * q->cout * q->oh * q->ow;
            }
            break;
        }
        if (l->kind == FM_LAYER_LINEAR) {
            if (begin(cl, ev, 1, l->name, "linear")) return -1;
            const uint8_t *mask = l->b_mask >= 0 ? GET(cl, l->b_mask, (l->numel_w + 7) / 8)
                                                 : NULL;
            const float *wv = GET(cl, l->b_values, 4 * (size_t)l->nnz);
            const float *gy = GET(cl, l->b_out_grad, 4 * (size_t)nb * l->cout);
            float *dx = GET(cl, in_grad, 4 * in_numel);
            const float *xhat = sap_decode(cl, l);
            if (!wv || !gy || !dx || !xhat || (l->b_mask >= 0 && !mask)) return arena_fail(cl);
            memset(dx, 0, 4 * in_numel);
            fm_linear_backward_input(dx, gy, wv, mask, nb, l->cin, l->cout);
            if (gs) {
                if (score_rows(cl, l, gs, gy, xhat, nb)) return -1;
            } else {
                float *gw = GET(cl, l->b_g_values, 4 * (size_t)l->nnz);
                if (!gw) return arena_fail(cl);
                int64_t shape[2] = {l->cout, l->cin};
                snprintf(key, sizeof key, "grad/%s.weight", l->name);
                for (int32_t o = 0, e = 0; o < l->cout; ++o)
                    for (int32_t q = 0; q < l->cin; ++q) {
                        const float v = fm_linear_weight_grad_at(gy, xhat, o, q, nb, l->cin,
                                                                 l->cout);
                        if (!mask || fm_bit(mask, (int64_t)o * l->cin + q)) gw[e++] += v;
                        rec(cl, key, FM_F32, 2, shape, (int64_t)o * l->cin + q, 1, &v);
                    }
                if (l->b_g_bias >= 0) {
                    float *gb = GET(cl, l->b_g_bias, 4 * (size_t)l->cout);
                    if (!gb) return arena_fail(cl);
                    fm_linear_backward_bias(gb, gy, nb, l->cout);
                }
            }
            if (end(cl, ev++)) return -1;
        } else if (l->kind == FM_LAYER_GAP) {
            if (begin(cl, ev, 1, "avgpool", "global_avg_pool2d")) return -1;
            const float *gy = GET(cl, find(cl, "avgpool/global_avg_pool2d:grad"),
                                  4 * (size_t)nb * l->cout);
            float *dx = GET(cl, in_grad, 4 * in_numel);
            if (!gy || !dx) return arena_fail(cl);
            fm_gap_backward(dx, gy, nb, l->cout, l->h * l->w);
            if (end(cl, ev++)) return -1;
        } else if (l->kind == FM_LAYER_MAXPOOL) {
            const fm_layer *conv = &cl->L[i - (cl->L[i - 1].kind == FM_LAYER_RELU ? 2 : 1)];
            char scope[96];
            snprintf(scope, sizeof scope, "%s.maxpool", conv->name);
            if (begin(cl, ev, 1, scope, "max_pool2d")) return -1;
            const int64_t numel = (int64_t)nb * l->cout * l->oh * l->ow;
            const float *gy = GET(cl, conv->b_pool_grad, 4 * numel);
            const uint8_t *arg = GET(cl, conv->b_pool_arg, numel);
            float *dx = GET(cl, in_grad, 4 * in_numel);
            if (!gy || !arg || !dx) return arena_fail(cl);
            fm_maxpool_backward(dx, gy, arg, nb, l->cin, l->h, l->w, l->k, l->s, l->oh, l->ow);
            if (end(cl, ev++)) return -1;
        } else if (l->kind == FM_LAYER_CONV) {
            if (begin(cl, ev, 1, l->name, "conv2d")) return -1;
            const fm_conv_dims d = conv_dims(l, nb);
            const int64_t numel = (int64_t)nb * l->cout * l->oh * l->ow;
            const uint8_t *mask = l->b_mask >= 0 ? GET(cl, l->b_mask, (l->numel_w + 7) / 8)
                                                 : NULL;
            float *gy = GET(cl, l->b_out_grad, 4 * numel);
            if (!gy || (l->b_mask >= 0 && !mask)) return arena_fail(cl);
            if (l->relu) {
                const uint8_t *bits = GET(cl, l->b_relu_bits, (numel + 7) / 8);
                if (!bits) return arena_fail(cl);
                fm_relu_backward(gy, bits, numel);
            }
            if (!gs && l->b_g_bias >= 0) {
                float *gb = GET(cl, l->b_g_bias, 4 * (size_t)l->cout);
                if (!gb) return arena_fail(cl);
                fm_conv2d_backward_bias(gb, gy, &d);
            }
            const int32_t *ptr = NULL;
            if (!l->dense && !(ptr = weight_index(cl, l, l->b_widx_bwd, mask))) return -1;
            const int32_t *off = ptr ? ptr + l->cout + 1 : NULL;
            const size_t what_n = l->dense ? (size_t)l->numel_w : (size_t)l->nnz;
            if (in_grad >= 0) {  /* the first conv reads the data: no input gradient (TAPE-4) */
                const float *what = GET(cl, l->b_what, 4 * what_n);
                float *dx = GET(cl, in_grad, 4 * in_numel);
                if (!what || !dx) return arena_fail(cl);
                memset(dx, 0, 4 * in_numel);
                fm_conv2d_backward_input(dx, gy, what, ptr, off, &d);
            }
            const float *xhat = sap_decode(cl, l);
            float *gwhat = GET(cl, l->b_what_grad, 4 * what_n);
            if (!xhat || !gwhat) return arena_fail(cl);
            if (gs) {
                if (score_rows(cl, l, gs, gy, xhat, nb)) return -1;
            } else {
                memset(gwhat, 0, 4 * what_n);
                fm_conv2d_backward_weight(gwhat, gy, xhat, ptr, off, &d);
            }
            if (end(cl, ev++)) return -1;
            if (begin(cl, ev, 1, l->name, "nsconv_standardize")) return -1;
            if (!gs) {
                const float *wv = GET(cl, l->b_values, 4 * (size_t)l->nnz);
                const float *gain = GET(cl, l->b_gain, 4 * (size_t)l->cout);
                const float *r = GET(cl, l->b_r, 4 * (size_t)l->cout);
                const uint8_t *unc = GET(cl, l->b_unclamped, (size_t)l->cout);
                float *gw = GET(cl, l->b_g_values, 4 * (size_t)l->nnz);
                float *gg = GET(cl, l->b_g_gain, 4 * (size_t)l->cout);
                if (!wv || !gain || !r || !unc || !gw || !gg) return arena_fail(cl);
                float inactive[FM_MAX_CHANNELS];
                if (l->cout > FM_MAX_CHANNELS) return fail(cl, "too many channels");
                fm_nsconv_backward(gw, gg, cl->recording ? inactive : NULL, gwhat, !l->dense,
                                   wv, mask, gain, r, unc, l->cout, l->fan_in);
                if (cl->recording) {
                    int64_t shape[4];
                    int nd;
                    weight_shape(l, shape, &nd);
                    snprintf(key, sizeof key, "grad/%s.weight", l->name);
                    const float *v = gw;
                    for (int64_t q = 0; q < l->numel_w; ++q)
                        rec(cl, key, FM_F32, nd, shape, q, 1,
                            !mask || fm_bit(mask, q) ? v++ : &inactive[q / l->fan_in]);
                }
            }
            if (end(cl, ev++)) return -1;
        }
    }
    if (ev != FM_PLAN_EVENT_COUNT)
        return fail(cl, "the port ran %d events, the plan has %d", ev, FM_PLAN_EVENT_COUNT);
    return 0;
}

/* ---- state: parameters, gradients, momentum -------------------------------------------------- */
typedef struct {
    const char *name;
    int values, grad, mom;
    int64_t n;
} state_param;

static int state_params(fm_client *cl, state_param *sp) {
    int n = 0;
    for (int i = 0; i < cl->nlayers; ++i) {
        const fm_layer *l = &cl->L[i];
        if (l->prunable < 0) continue;
        sp[n].values = l->b_values; sp[n].grad = l->b_g_values; sp[n].mom = l->b_m_values;
        sp[n].n = l->nnz; ++n;
        if (l->b_bias >= 0) {
            sp[n].values = l->b_bias; sp[n].grad = l->b_g_bias; sp[n].mom = l->b_m_bias;
            sp[n].n = l->cout; ++n;
        }
        if (l->b_gain >= 0) {
            sp[n].values = l->b_gain; sp[n].grad = l->b_g_gain; sp[n].mom = l->b_m_gain;
            sp[n].n = l->cout; ++n;
        }
    }
    return n;
}

static int open_state(fm_client *cl, int grads) {
    for (int i = 0; i < FM_PLAN_BUFFER_COUNT; ++i) {
        const char *name = cl->plan[i].name;
        const size_t len = strlen(name);
        const int is_grad = (len > 5 && strcmp(name + len - 5, ":grad") == 0)
                            || (len > 9 && strcmp(name + len - 9, ":momentum") == 0);
        if (strncmp(name, "state/", 6) == 0 && is_grad == grads && !cl->live[i])
            if (fm_arena_open(&cl->ar, i)) return arena_fail(cl);
    }
    return 0;
}

static int close_state(fm_client *cl, int grads_only) {
    for (int i = 0; i < FM_PLAN_BUFFER_COUNT; ++i) {
        const char *name = cl->plan[i].name;
        const size_t len = strlen(name);
        const int is_grad = (len > 5 && strcmp(name + len - 5, ":grad") == 0)
                            || (len > 9 && strcmp(name + len - 9, ":momentum") == 0);
        if (strncmp(name, "state/", 6) == 0 && (!grads_only || is_grad) && cl->live[i])
            if (fm_arena_close(&cl->ar, i)) return arena_fail(cl);
    }
    return 0;
}

/* the global model into the arena: a masked weight as its active values (index order) and its
 * mask bitmap; biases and gains as they are */
static int load_model(fm_client *cl, const float *const *global, const uint8_t *const *masks) {
    int p = 0;
    for (int i = 0; i < cl->nlayers; ++i) {
        const fm_layer *l = &cl->L[i];
        if (l->prunable < 0) continue;
        const uint8_t *m = masks[l->prunable];
        int32_t count = 0;
        for (int32_t q = 0; q < l->numel_w; ++q) count += m[q] != 0;
        if (count != l->nnz)
            return fail(cl, "layer %s: the mask has %d active entries, the plan %d (ERK-2; "
                            "prune-and-grow keeps the count, PG-7)", l->name, count, l->nnz);
        float *wv = GET(cl, l->b_values, 4 * (size_t)l->nnz);
        uint8_t *bits = l->b_mask >= 0 ? GET(cl, l->b_mask, (l->numel_w + 7) / 8) : NULL;
        if (!wv || (l->b_mask >= 0 && !bits)) return arena_fail(cl);
        if (!bits && count != l->numel_w)
            return fail(cl, "layer %s: a masked weight but the plan holds no mask bitmap",
                        l->name);
        if (bits) memset(bits, 0, (size_t)(l->numel_w + 7) / 8);
        for (int32_t q = 0, e = 0; q < l->numel_w; ++q) {
            if (!m[q]) continue;
            wv[e++] = global[p][q];
            if (bits) bits[q >> 3] |= (uint8_t)(1u << (q & 7));
        }
        ++p;
        if (l->b_bias >= 0) {
            float *b = GET(cl, l->b_bias, 4 * (size_t)l->cout);
            if (!b) return arena_fail(cl);
            memcpy(b, global[p++], 4 * (size_t)l->cout);
        }
        if (l->b_gain >= 0) {
            float *gn = GET(cl, l->b_gain, 4 * (size_t)l->cout);
            if (!gn) return arena_fail(cl);
            memcpy(gn, global[p++], 4 * (size_t)l->cout);
        }
    }
    return 0;
}

static int record_vector(fm_client *cl, const char *fmt, const char *layer, int id,
                         int32_t n) {
    char key[96];
    const int64_t shape[1] = {n};
    const float *v = GET(cl, id, 4 * (size_t)n);
    if (!v) return arena_fail(cl);
    snprintf(key, sizeof key, fmt, layer);
    rec_all(cl, key, FM_F32, 1, shape, v);
    return 0;
}

static int record_params(fm_client *cl) {
    char key[96];
    for (int i = 0; i < cl->nlayers; ++i) {
        const fm_layer *l = &cl->L[i];
        if (l->prunable < 0) continue;
        int64_t shape[4];
        int nd;
        weight_shape(l, shape, &nd);
        const float *wv = GET(cl, l->b_values, 4 * (size_t)l->nnz);
        const uint8_t *mask = l->b_mask >= 0 ? GET(cl, l->b_mask, (l->numel_w + 7) / 8) : NULL;
        if (!wv || (l->b_mask >= 0 && !mask)) return arena_fail(cl);
        snprintf(key, sizeof key, "param/%s.weight", l->name);
        if (mask) rec_scatter(cl, key, nd, shape, wv, mask, l->numel_w);
        else rec_all(cl, key, FM_F32, nd, shape, wv);
        if (l->b_bias >= 0 && record_vector(cl, "param/%s.bias", l->name, l->b_bias, l->cout))
            return -1;
        if (l->b_gain >= 0 && record_vector(cl, "param/%s.gain", l->name, l->b_gain, l->cout))
            return -1;
    }
    return 0;
}

static int record_grads(fm_client *cl) {  /* biases and gains; weights were recorded in pass */
    for (int i = 0; i < cl->nlayers; ++i) {
        const fm_layer *l = &cl->L[i];
        if (l->prunable < 0) continue;
        if (l->b_g_bias >= 0 && record_vector(cl, "grad/%s.bias", l->name, l->b_g_bias, l->cout))
            return -1;
        if (l->b_g_gain >= 0 && record_vector(cl, "grad/%s.gain", l->name, l->b_g_gain, l->cout))
            return -1;
    }
    return 0;
}

/* the batch (LT-2): x = (u8 / 255 - mean_c) / std_c in float32, labels int64 */
static int load_batch(fm_client *cl, const fm_client_data *data, const int64_t *pos,
                      int32_t nb, int record) {
    const int64_t per = (int64_t)FM_PLAN_IN_C * FM_PLAN_IN_H * FM_PLAN_IN_W;
    const int64_t plane = (int64_t)FM_PLAN_IN_H * FM_PLAN_IN_W;
    float *x = GET(cl, cl->b_x, 4 * (size_t)(nb * per));
    int64_t *y = GET(cl, cl->b_y, 8 * (size_t)nb);
    if (!x || !y) return arena_fail(cl);
    for (int32_t r = 0; r < nb; ++r) {
        if (pos[r] < 0 || pos[r] >= data->n)
            return fail(cl, "batch position %ld outside the client's %d examples",
                        (long)pos[r], data->n);
        for (int64_t q = 0; q < per; ++q) {
            const float v = (float)data->x_u8[pos[r] * per + q] / 255.0f;
            x[r * per + q] = (v - data->mean[q / plane]) / data->std[q / plane];
        }
        y[r] = data->y[pos[r]];
        if (y[r] < 0 || y[r] >= cl->classes)
            return fail(cl, "label %ld outside [0, %d)", (long)y[r], cl->classes);
    }
    const int64_t bshape[1] = {nb}, xshape[4] = {nb, FM_PLAN_IN_C, FM_PLAN_IN_H, FM_PLAN_IN_W};
    if (!record) return 0;
    rec_all(cl, "batch_index", FM_I64, 1, bshape, pos);
    rec_all(cl, "x", FM_F32, 4, xshape, x);
    rec_all(cl, "y", FM_I64, 1, bshape, y);
    return 0;
}

/* ---- BaE (BAE-2, BAE-4) ---------------------------------------------------------------------- */
/* position of flat index q among the active entries of a mask (-1 when inactive) */
static int64_t rank_of(const uint8_t *mask, int64_t q) {
    if (!fm_bit(mask, q)) return -1;
    int64_t r = 0;
    for (int64_t i = 0; i < q; ++i) r += fm_bit(mask, i);
    return r;
}

static int extrude(fm_client *cl, const fm_round_plan *plan, int tau, int iterations,
                   double *lr) {
    double total = 0.0, pen = 0.0, ss[FM_MAX_LAYERS];
    const double lam = FM_HP_BAE_LAMBDA;
    for (int s = 0; s < cl->nprunable; ++s) {
        const fm_layer *l = &cl->L[cl->prunable_layer[s]];
        const float *wv = GET(cl, l->b_values, 4 * (size_t)l->nnz);
        const uint8_t *mask = l->b_mask >= 0 ? GET(cl, l->b_mask, (l->numel_w + 7) / 8) : NULL;
        if (!wv || (plan->marked_count[s] && !mask)) return arena_fail(cl);
        ss[s] = 0.0;
        for (int64_t j = 0; j < plan->marked_count[s]; ++j) {
            const int64_t r = rank_of(mask, plan->marked[s][j]);
            if (r < 0) return fail(cl, "marked index %ld of %s is not active (BAE-1)",
                                   (long)plan->marked[s][j], l->name);
            ss[s] += (double)wv[r] * (double)wv[r];
        }
        total += ss[s];
        pen += FM_HP_BAE_VARIANT == 0 ? ss[s] : sqrt(ss[s]);
    }
    const double norm = sqrt(total);
    pen = lam * pen;
    *lr = plan->lr;
    if (FM_HP_BAE_BUDGET_LR) {
        const double p = (double)(2 * iterations - 2 * tau) / (double)(2 * iterations - tau);
        const double factor = 2.0 * (1.0 / (1.0 + exp(-norm))) - 1.0;
        const double beta = p * factor * FM_HP_LR0;
        *lr = plan->lr > beta ? plan->lr : beta;
    }
    rec_scalar(cl, "marked_norm", FM_F64, &norm);
    rec_scalar(cl, "lam", FM_F64, &lam);
    rec_scalar(cl, "penalty", FM_F64, &pen);
    for (int s = 0; s < cl->nprunable; ++s) {  /* the penalty gradient on the marked entries */
        const fm_layer *l = &cl->L[cl->prunable_layer[s]];
        const float *wv = GET(cl, l->b_values, 4 * (size_t)l->nnz);
        float *gw = GET(cl, l->b_g_values, 4 * (size_t)l->nnz);
        const uint8_t *mask = l->b_mask >= 0 ? GET(cl, l->b_mask, (l->numel_w + 7) / 8) : NULL;
        char key[96];
        const int64_t shape[1] = {plan->marked_count[s]};
        snprintf(key, sizeof key, "penalty_grad/%s", l->name);
        if (!gw || !wv) return arena_fail(cl);
        const float zero = 0.0f;
        if (plan->marked_count[s] == 0) rec(cl, key, FM_F32, 1, shape, 0, 0, &zero);
        const double layer_norm = sqrt(ss[s]);
        const float coef = FM_HP_BAE_VARIANT == 0 ? (float)(2.0 * lam)
                           : layer_norm == 0.0 ? 0.0f : (float)(lam / layer_norm);
        for (int64_t j = 0; j < plan->marked_count[s]; ++j) {
            const int64_t r = rank_of(mask, plan->marked[s][j]);
            const float step = coef * wv[r];
            if (FM_HP_BAE_VARIANT == 0 || layer_norm != 0.0) gw[r] += step;
            rec(cl, key, FM_F32, 1, shape, j, 1, &step);
        }
    }
    return 0;
}

/* ---- the round ------------------------------------------------------------------------------- */
static int growth(fm_client *cl, const fm_client_data *data, const fm_round_plan *plan) {
    growth_state gs;
    char name[64], key[96];
    memset(&gs, 0, sizeof gs);
    snprintf(name, sizeof name, "r%d_c%d_grow", plan->t, data->id);
    if (cl->obs && cl->recording) cl->obs->step(cl->obs->ctx, name);
    const int32_t nb = data->n < FM_PLAN_BATCH ? data->n : FM_PLAN_BATCH;
    const int64_t bshape[1] = {nb};
    rec_all(cl, "grow_index", FM_I64, 1, bshape, plan->grow_order);
    /* the gradient region is free in the growth pass: it holds the score row and the pairs */
    if (close_state(cl, 1)) return -1;
    int32_t row = 0;
    int64_t pairs = 0;
    for (int s = 0; s < cl->nprunable; ++s) {
        const fm_layer *l = &cl->L[cl->prunable_layer[s]];
        if (l->fan_in > row) row = l->fan_in;
        gs.k[s] = plan->grow_counts[s];
        if (gs.k[s] < 0 || gs.k[s] > l->numel_w - l->nnz)
            return fail(cl, "growth count %ld of %s outside [0, %d] (PG-3)", (long)gs.k[s],
                        l->name, l->numel_w - l->nnz);
        pairs += gs.k[s];
    }
    if (4 * (size_t)row + 8 * (size_t)pairs > FM_PLAN_GRAD_REGION_BYTES)
        return fail(cl, "the growth pass needs %lu bytes (a score row and %ld pairs), the "
                        "gradient region has %lu", (unsigned long)(4 * row + 8 * pairs),
                    (long)pairs, (unsigned long)FM_PLAN_GRAD_REGION_BYTES);
    if (fm_arena_open(&cl->ar, cl->b_growth_row) || fm_arena_open(&cl->ar, cl->b_growth_pairs))
        return arena_fail(cl);
    gs.row = GET(cl, cl->b_growth_row, 4 * (size_t)row);
    fm_pair *next = GET(cl, cl->b_growth_pairs, 8 * (size_t)pairs);
    if (!gs.row || (pairs && !next)) return arena_fail(cl);
    for (int s = 0; s < cl->nprunable; ++s) {
        gs.pairs[s] = next;
        next += gs.k[s];
    }
    if (load_batch(cl, data, plan->grow_order, nb, 0)) return -1;
    if (pass(cl, nb, &gs)) return -1;
    for (int s = 0; s < cl->nprunable; ++s) {  /* pairs by ascending index (PG-5) */
        const fm_layer *l = &cl->L[cl->prunable_layer[s]];
        fm_pair *p = gs.pairs[s];
        for (int64_t a = 1; a < gs.count[s]; ++a) {
            const fm_pair v = p[a];
            int64_t b = a;
            while (b > 0 && p[b - 1].index > v.index) { p[b] = p[b - 1]; --b; }
            p[b] = v;
        }
        const int64_t shape[1] = {gs.count[s]};
        const int64_t zero_i = 0;
        const float zero_f = 0.0f;
        char vkey[96];
        snprintf(key, sizeof key, "pair_index/%s", l->name);
        snprintf(vkey, sizeof vkey, "pair_value/%s", l->name);
        if (gs.count[s] == 0) {
            rec(cl, key, FM_I64, 1, shape, 0, 0, &zero_i);
            rec(cl, vkey, FM_F32, 1, shape, 0, 0, &zero_f);
        }
        for (int64_t j = 0; j < gs.count[s]; ++j) {
            const int64_t idx = p[j].index;
            rec(cl, key, FM_I64, 1, shape, j, 1, &idx);
            rec(cl, vkey, FM_F32, 1, shape, j, 1, &p[j].value);
        }
    }
    if (fm_arena_close(&cl->ar, cl->b_growth_row) || fm_arena_close(&cl->ar, cl->b_growth_pairs))
        return arena_fail(cl);
    return 0;
}

int fm_client_round(fm_client *cl, const fm_client_data *data, const fm_round_plan *plan,
                    const float *const *global, const uint8_t *const *masks) {
    state_param sp[FM_MAX_PARAMS];
    const int nparams = state_params(cl, sp);
    cl->recording = cl->obs != NULL;
    if (open_state(cl, 0) || open_state(cl, 1)) return -1;
    if (load_model(cl, global, masks)) return -1;
    const int32_t B = FM_PLAN_BATCH;
    const int per_epoch = (data->n + B - 1) / B;
    const int iterations = FM_HP_LOCAL_EPOCHS * per_epoch;  /* LT-3, BAE-3 */
    for (int tau = 0; tau < iterations; ++tau) {
        char name[64];
        const int e = tau / per_epoch, b = tau % per_epoch;
        const int32_t nb = (b + 1) * B <= data->n ? B : data->n - b * B;
        snprintf(name, sizeof name, "r%d_c%d_s%d", plan->t, data->id, tau);
        if (cl->obs) cl->obs->step(cl->obs->ctx, name);
        if (load_batch(cl, data, plan->shuffle[e] + (int64_t)b * B, nb, 1)) return -1;
        for (int q = 0; q < nparams; ++q) {
            float *g = GET(cl, sp[q].grad, 4 * (size_t)sp[q].n);
            if (!g) return arena_fail(cl);
            memset(g, 0, 4 * (size_t)sp[q].n);
        }
        if (pass(cl, nb, NULL)) return -1;
        if (record_grads(cl)) return -1;
        double lr = plan->lr;
        if (plan->extrude && extrude(cl, plan, tau, iterations, &lr)) return -1;
        rec_scalar(cl, "lr", FM_F64, &lr);
        for (int q = 0; q < nparams; ++q) {
            float *p = GET(cl, sp[q].values, 4 * (size_t)sp[q].n);
            const float *g = GET(cl, sp[q].grad, 4 * (size_t)sp[q].n);
            float *m = FM_HP_MOMENTUM != 0.0 ? GET(cl, sp[q].mom, 4 * (size_t)sp[q].n) : NULL;
            if (!p || !g || (FM_HP_MOMENTUM != 0.0 && !m)) return arena_fail(cl);
            fm_sgd(p, g, m, tau == 0, sp[q].n, lr, FM_HP_MOMENTUM, FM_HP_WEIGHT_DECAY);
        }
        if (record_params(cl)) return -1;
    }
    if (plan->grow_counts && growth(cl, data, plan)) return -1;
    return 0;
}

/* the parameters after the round, dense (zeros off the mask), for the driver */
int fm_client_read_param(fm_client *cl, int index, float *out);
int fm_client_read_param(fm_client *cl, int index, float *out) {
    int p = 0;
    for (int i = 0; i < cl->nlayers; ++i) {
        const fm_layer *l = &cl->L[i];
        if (l->prunable < 0) continue;
        if (p++ == index) {
            const float *wv = GET(cl, l->b_values, 4 * (size_t)l->nnz);
            const uint8_t *mask = l->b_mask >= 0 ? GET(cl, l->b_mask, (l->numel_w + 7) / 8)
                                                 : NULL;
            if (!wv) return arena_fail(cl);
            for (int64_t q = 0; q < l->numel_w; ++q)
                out[q] = !mask ? wv[q] : fm_bit(mask, q) ? *wv++ : 0.0f;
            return 0;
        }
        if (l->b_bias >= 0 && p++ == index) {
            memcpy(out, GET(cl, l->b_bias, 4 * (size_t)l->cout), 4 * (size_t)l->cout);
            return 0;
        }
        if (l->b_gain >= 0 && p++ == index) {
            memcpy(out, GET(cl, l->b_gain, 4 * (size_t)l->cout), 4 * (size_t)l->cout);
            return 0;
        }
    }
    return fail(cl, "no parameter %d", index);
}
