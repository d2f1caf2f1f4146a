/* The client's set-up from the plan header: the layer list with its geometry, and every
 * buffer the layers use, found by the ledger's name (refimpl/memory_arena.py); the recording
 * helpers that hand values to the observer (docs/porting.md). pass.c runs one forward and
 * backward pass event by event, round.c a client's round.
 */
#include "client_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

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
/* the training hyperparameters come with a scenario: `fedmef conformance export --c-header` */
#error "the plan header lacks the training hyperparameters FM_HP_* (see client.c)"
#endif

/* ---- errors and recording -------------------------------------------------------------------- */
int fm__fail(fm_client *cl, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cl->error, sizeof cl->error, fmt, ap);
    va_end(ap);
    return -1;
}

int fm__arena_fail(fm_client *cl) { return fm__fail(cl, "arena: %s", cl->ar.error); }

void fm__rec(fm_client *cl, const char *key, int dtype, int ndim, const int64_t *shape,
                int64_t start, int64_t count, const void *data) {
    if (cl->recording && cl->obs) cl->obs->slice(cl->obs->ctx, key, dtype, ndim, shape, start,
                                                 count, data);
}

void fm__rec_all(fm_client *cl, const char *key, int dtype, int ndim, const int64_t *shape,
                    const void *data) {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    fm__rec(cl, key, dtype, ndim, shape, 0, n, data);
}

void fm__rec_scalar(fm_client *cl, const char *key, int dtype, const void *data) {
    fm__rec(cl, key, dtype, 0, NULL, 0, 1, data);
}

/* a masked tensor: active values (index order) scattered to their positions, zeros elsewhere */
void fm__rec_scatter(fm_client *cl, const char *key, int ndim, const int64_t *shape,
                        const float *values, const uint8_t *mask, int64_t numel) {
    const float *v = values;
    for (int64_t i = 0; i < numel; ++i) {
        const float z = 0.0f;
        fm__rec(cl, key, FM_F32, ndim, shape, i, 1, fm_bit(mask, i) ? v++ : &z);
    }
}

int fm__find(fm_client *cl, const char *fmt, ...) {
    char name[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    return fm_arena_find(&cl->ar, name);
}

/* ---- set-up ---------------------------------------------------------------------------------- */
void fm__weight_shape(const fm_layer *l, int64_t *shape, int *ndim) {
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
    l->b_values = fm__find(cl, "state/%s.weight:values", n);
    l->b_mask = fm__find(cl, "state/%s.weight:mask", n);
    l->b_bias = fm__find(cl, "state/%s.bias", n);
    l->b_gain = fm__find(cl, "state/%s.gain", n);
    l->b_g_values = fm__find(cl, "state/%s.weight:grad", n);
    l->b_g_bias = fm__find(cl, "state/%s.bias:grad", n);
    l->b_g_gain = fm__find(cl, "state/%s.gain:grad", n);
    l->b_m_values = fm__find(cl, "state/%s.weight:momentum", n);
    l->b_m_bias = fm__find(cl, "state/%s.bias:momentum", n);
    l->b_m_gain = fm__find(cl, "state/%s.gain:momentum", n);
    l->b_what = fm__find(cl, "%s/nsconv_standardize:out", n);
    l->b_r = fm__find(cl, "%s/nsconv_standardize:r", n);
    l->b_unclamped = fm__find(cl, "%s/nsconv_standardize:unclamped", n);
    l->b_what_grad = fm__find(cl, "%s/nsconv_standardize:grad", n);
    l->b_out = fm__find(cl, "%s/%s:out", n, op);
    l->b_out_grad = fm__find(cl, "%s/%s:grad", n, op);
    l->b_cache_a = fm__find(cl, "%s/%s:cache.bits", n, op);
    if (l->b_cache_a < 0) l->b_cache_a = fm__find(cl, "%s/%s:cache.index", n, op);
    l->b_cache_b = fm__find(cl, "%s/%s:cache.values", n, op);
    if (l->b_cache_b < 0) l->b_cache_b = fm__find(cl, "%s/%s:cache.dense", n, op);
    l->b_relu_bits = fm__find(cl, "%s/%s:relu_bits", n, op);
    l->b_widx = fm__find(cl, "%s/%s:weight_index", n, op);
    l->b_hist = fm__find(cl, "%s/%s:selection_histogram", n, op);
    l->b_widx_bwd = fm__find(cl, "%s/%s.vjp:weight_index", n, op);
    l->b_decoded = fm__find(cl, "%s/%s.vjp:decoded_input", n, op);
    l->b_pool_out = fm__find(cl, "%s/max_pool2d:out", scope_of_pool);
    l->b_pool_arg = fm__find(cl, "%s/max_pool2d:arg", scope_of_pool);
    l->b_pool_grad = fm__find(cl, "%s/max_pool2d:grad", scope_of_pool);
    if (l->b_values < 0 || l->b_out < 0 || l->b_out_grad < 0 || l->b_cache_b < 0)
        return fm__fail(cl, "the plan lacks the buffers of layer %s (its weights, output, output "
                        "cotangent or SAP cache): regenerate the header for this model", n);
    if (l->kind == FM_LAYER_CONV && (l->b_gain < 0 || l->b_what < 0 || l->b_r < 0))
        return fm__fail(cl, "the plan has no NSConv buffers for %s: the port runs NSConv layers",
                    n);
    return 0;
}

int fm_client_init(fm_client *cl, unsigned char *arena, size_t arena_bytes,
                   const fm_observer *obs) {
    memset(cl, 0, sizeof *cl);
    cl->obs = obs;
    if (arena_bytes < FM_PLAN_ARENA_BYTES)
        return fm__fail(cl, "arena of %lu bytes, the plan needs %lu", (unsigned long)arena_bytes,
                    (unsigned long)FM_PLAN_ARENA_BYTES);
    if (NLAYERS > FM_MAX_LAYERS || NPRUNABLE > FM_MAX_LAYERS)
        return fm__fail(cl, "the plan has more than %d layers", FM_MAX_LAYERS);
    memcpy(cl->plan, BUFFERS, sizeof BUFFERS);
    cl->plan[FM_PLAN_BUFFER_COUNT].name = "growth/score_row";  /* sized below */
    cl->plan[FM_PLAN_BUFFER_COUNT + 1].name = "growth/pairs";
    fm_arena_init(&cl->ar, arena, FM_PLAN_ARENA_BYTES, cl->plan, FM_PLAN_BUFFER_COUNT + 2,
                  cl->live);
    cl->b_x = fm__find(cl, "state/batch:x");
    cl->b_y = fm__find(cl, "state/batch:y");
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
                return fm__fail(cl, "layer %s expects %d input channels/features, the previous "
                                "layer gives %d", l->name, l->a, in);
            if (np >= NPRUNABLE || strcmp(PRUNABLE[np].name, l->name) != 0)
                return fm__fail(cl, "prunable layer %d of the plan is not %s", np, l->name);
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
                return fm__fail(cl, "layer %d: a ReLU that does not follow a conv (the port fuses "
                                "every ReLU into its conv)", i);
        } else if (l->kind == FM_LAYER_MAXPOOL) {
            if (last_conv < 0) return fm__fail(cl, "layer %d: a max-pool before any conv", i);
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
                return fm__fail(cl, "layer %s: %d weights in the plan, %d by its shape", l->name,
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
    if (np != NPRUNABLE) return fm__fail(cl, "the plan lists %d prunable layers, the layers %d",
                                     NPRUNABLE, np);
    if (cl->b_x < 0 || cl->b_y < 0) return fm__fail(cl, "the plan has no data batch buffers");
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
