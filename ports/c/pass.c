/* One forward and backward pass of a training step (or of the growth pass, PG-5), run event by
 * event as the plan header lists them (MEM-5): each event opens the buffers the plan makes born
 * there and closes those that die, and reaches only open ones (arena.c). The layers are
 * layers.c; this file wires them to the plan's buffers and records what they compute.
 * refimpl: refimpl/models/graph.py forward, the tape's backward, refimpl/fl/client.py.
 */
#include "client_internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    int index, bwd;
    const char *scope, *op;
} plan_event;

#define FM_EVENT_ENTRY(i, phase, scope, op) {i, phase, scope, op},
static const plan_event EVENTS[] = {FM_PLAN_EVENTS(FM_EVENT_ENTRY)};

/* ---- events ---------------------------------------------------------------------------------- */
static int begin(fm_client *cl, int ev, int bwd, const char *scope, const char *op) {
    if (ev >= FM_PLAN_EVENT_COUNT || EVENTS[ev].bwd != bwd || strcmp(EVENTS[ev].scope, scope)
        || strcmp(EVENTS[ev].op, op))
        return fm__fail(cl, "event %d: the port runs %s %s/%s, the plan has %s", ev,
                    bwd ? "bwd" : "fwd", scope, op,
                    ev < FM_PLAN_EVENT_COUNT ? EVENTS[ev].op : "no such event");
    return fm_arena_begin_event(&cl->ar, ev) ? fm__arena_fail(cl) : 0;
}

static int end(fm_client *cl, int ev) {
    return fm_arena_end_event(&cl->ar, ev) ? fm__arena_fail(cl) : 0;
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
        fm__arena_fail(cl);
        return NULL;
    }
    if (fm_weight_index(mask, l->cout, l->fan_in, ptr, ptr + l->cout + 1) != l->nnz) {
        fm__fail(cl, "layer %s: the mask has a different count than the plan's %d", l->name,
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
        return fm__fail(cl, "layer %s: SAP drops nothing here (gamma 0, dense cache): the cache is "
                        "the input itself, which this port does not plan", l->name);
    uint32_t *hist = keep < numel ? GET(cl, l->b_hist, 256 * 4) : NULL;
    uint8_t *a = a_bytes ? GET(cl, l->b_cache_a, a_bytes) : NULL;
    float *values = GET(cl, l->b_cache_b, total - a_bytes);
    if ((keep < numel && !hist) || (a_bytes && !a) || !values) return fm__arena_fail(cl);
    uint32_t t = 0;
    int64_t ties = keep;
    if (keep < numel) {
        const int64_t r = fm_sap_select(x, numel, keep, hist, &t, &ties);
        if (r < 0)
            return fm__fail(cl, "sap select: layer %s input holds a non-finite value at flat index "
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
                fm__rec(cl, key, FM_I64, 1, kshape, j++, 1, &i);
        snprintf(key, sizeof key, "sap/%s/format", l->name);
        fm__rec_scalar(cl, key, FM_U8, &code);
        if (fmt == FM_CACHE_BITMAP) {
            snprintf(key, sizeof key, "sap/%s/bits", l->name);
            fm__rec_all(cl, key, FM_U8, 1, ashape, a);
        } else if (fmt == FM_CACHE_INDEX) {
            const int width = fm_sap_index_width(numel);
            const int64_t ishape[1] = {keep};
            snprintf(key, sizeof key, "sap/%s/index", l->name);
            fm__rec_all(cl, key, width == 1 ? FM_U8 : width == 2 ? FM_U16 : FM_U32, 1, ishape, a);
        }
        snprintf(key, sizeof key, "sap/%s/values", l->name);
        if (fmt == FM_CACHE_DENSE) {
            int64_t shape[4] = {0, l->cin, l->h, l->w};
            shape[0] = numel / ((int64_t)l->cin * l->h * l->w);
            fm__rec_all(cl, key, FM_F32, l->kind == FM_LAYER_CONV ? 4 : 2, shape, values);
        } else {
            fm__rec_all(cl, key, FM_F32, 1, vshape, values);
        }
        snprintf(key, sizeof key, "sap/%s/nbytes", l->name);
        fm__rec_scalar(cl, key, FM_I64, &total);
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

/* Offer one score at flat position i of layer slot s (ascending i): kept in (|score| desc,
 * index asc) order, so a later equal |score| never displaces an earlier one (CONV-4). */
static void offer(fm_growth *gs, int s, int32_t i, float v) {
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
static int score_rows(fm_client *cl, fm_layer *l, fm_growth *gs, const float *g,
                      const float *xhat, int32_t nb) {
    char key[96];
    int64_t shape[4];
    int ndim;
    const uint8_t *mask = l->b_mask >= 0 ? GET(cl, l->b_mask, (l->numel_w + 7) / 8) : NULL;
    if (l->b_mask >= 0 && !mask) return fm__arena_fail(cl);
    fm__weight_shape(l, shape, &ndim);
    snprintf(key, sizeof key, "score/%s", l->name);
    const fm_conv_dims d = conv_dims(l, nb);
    for (int32_t o = 0; o < l->cout; ++o) {
        for (int32_t f = 0; f < l->fan_in; ++f)
            gs->row[f] = l->kind == FM_LAYER_CONV
                ? fm_conv2d_weight_grad_at(g, xhat, o, f, &d)
                : fm_linear_weight_grad_at(g, xhat, o, f, nb, l->cin, l->cout);
        fm__rec(cl, key, FM_F32, ndim, shape, (int64_t)o * l->fan_in, l->fan_in, gs->row);
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
int fm__pass(fm_client *cl, int32_t nb, fm_growth *gs) {
    int ev = 0;
    char key[96];
    const float *h = GET(cl, cl->b_x, 4 * (size_t)nb * FM_PLAN_IN_C * FM_PLAN_IN_H * FM_PLAN_IN_W);
    const int64_t *y = GET(cl, cl->b_y, 8 * (size_t)nb);
    if (!h || !y) return fm__arena_fail(cl);
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
            if (!wv || !gain || !what || !r || !unc || (l->b_mask >= 0 && !mask))
                return fm__arena_fail(cl);
            fm_nsconv_forward(what, !l->dense, r, unc, wv, mask, gain, l->cout, l->fan_in,
                              (float)FM_HP_NSCONV_EPS);
            if (!gs) {
                int64_t shape[4];
                int nd;
                fm__weight_shape(l, shape, &nd);
                snprintf(key, sizeof key, "w_hat/%s", l->name);
                if (l->dense) fm__rec_all(cl, key, FM_F32, nd, shape, what);
                else fm__rec_scatter(cl, key, nd, shape, what, mask, l->numel_w);
            }
            if (end(cl, ev++)) return -1;
            if (begin(cl, ev, 0, l->name, "conv2d")) return -1;
            const fm_conv_dims d = conv_dims(l, nb);
            const int32_t *ptr = NULL;
            if (!l->dense && !(ptr = weight_index(cl, l, l->b_widx, mask))) return -1;
            const int64_t numel = (int64_t)nb * l->cout * l->oh * l->ow;
            float *out = GET(cl, l->b_out, 4 * numel);
            if (!out) return fm__arena_fail(cl);
            fm_conv2d_forward(out, h, what, ptr, ptr ? ptr + l->cout + 1 : NULL, bias, &d);
            int64_t shape[4] = {nb, l->cout, l->oh, l->ow};
            snprintf(key, sizeof key, "act/%02d_conv", l->act);
            if (!gs) fm__rec_all(cl, key, FM_F32, 4, shape, out);
            if (sap_encode(cl, l, h, (int64_t)nb * l->cin * l->h * l->w)) return -1;
            if (l->relu) {
                uint8_t *bits = GET(cl, l->b_relu_bits, (numel + 7) / 8);
                if (!bits) return fm__arena_fail(cl);
                fm_relu_forward(out, bits, numel);
                snprintf(key, sizeof key, "act/%02d_relu", l->act + 1);
                if (!gs) fm__rec_all(cl, key, FM_F32, 4, shape, out);
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
            if (!out || !arg) return fm__arena_fail(cl);
            fm_maxpool_forward(out, arg, h, nb, c, hh, ww, l->k, l->s, l->oh, l->ow);
            const int64_t shape[4] = {nb, c, l->oh, l->ow};
            snprintf(key, sizeof key, "act/%02d_maxpool", l->act);
            if (!gs) fm__rec_all(cl, key, FM_F32, 4, shape, out);
            if (end(cl, ev++)) return -1;
            h = out; hh = l->oh; ww = l->ow;
        } else if (l->kind == FM_LAYER_GAP) {
            if (begin(cl, ev, 0, "avgpool", "global_avg_pool2d")) return -1;
            const int id = fm__find(cl, "avgpool/global_avg_pool2d:out");
            float *out = GET(cl, id, 4 * (size_t)nb * c);
            if (!out) return fm__arena_fail(cl);
            fm_gap_forward(out, h, nb, c, hh * ww);
            const int64_t shape[2] = {nb, c};
            snprintf(key, sizeof key, "act/%02d_gap", l->act);
            if (!gs) fm__rec_all(cl, key, FM_F32, 2, shape, out);
            if (end(cl, ev++)) return -1;
            h = out; hh = ww = 1;
        } else if (l->kind == FM_LAYER_LINEAR) {
            if (begin(cl, ev, 0, l->name, "linear")) return -1;
            const uint8_t *mask = l->b_mask >= 0 ? GET(cl, l->b_mask, (l->numel_w + 7) / 8)
                                                 : NULL;
            const float *wv = GET(cl, l->b_values, 4 * (size_t)l->nnz);
            const float *bias = l->b_bias >= 0 ? GET(cl, l->b_bias, 4 * (size_t)l->cout) : NULL;
            float *out = GET(cl, l->b_out, 4 * (size_t)nb * l->cout);
            if (!wv || !out || (l->b_mask >= 0 && !mask)) return fm__arena_fail(cl);
            fm_linear_forward(out, h, wv, mask, bias, nb, l->cin, l->cout);
            const int64_t shape[2] = {nb, l->cout};
            snprintf(key, sizeof key, "act/%02d_linear", l->act);
            if (!gs) fm__rec_all(cl, key, FM_F32, 2, shape, out);
            if (sap_encode(cl, l, h, (int64_t)nb * l->cin)) return -1;
            if (end(cl, ev++)) return -1;
            h = out; c = l->cout;
        }
    }
    /* the loss */
    if (begin(cl, ev, 0, "loss", "cross_entropy")) return -1;
    const int id_loss = fm__find(cl, "loss/cross_entropy:out");
    const int id_probs = fm__find(cl, "loss/cross_entropy:probs");
    const int id_target = fm__find(cl, "loss/cross_entropy:target");
    const int id_seed = fm__find(cl, "loss/cross_entropy:grad");
    float *loss = GET(cl, id_loss, 4);
    float *probs = GET(cl, id_probs, 4 * (size_t)nb * c);
    int64_t *target = GET(cl, id_target, 8 * (size_t)nb);
    if (!loss || !probs || !target) return fm__arena_fail(cl);
    memcpy(target, y, 8 * (size_t)nb);
    *loss = fm_cross_entropy_forward(probs, h, target, nb, c);
    if (!gs) fm__rec_scalar(cl, "loss", FM_F32, loss);
    if (end(cl, ev++)) return -1;
    /* backward */
    if (begin(cl, ev, 1, "loss", "cross_entropy")) return -1;
    float *seed = GET(cl, id_seed, 4);
    fm_layer *top = &cl->L[cl->nlayers - 1];
    float *g = GET(cl, top->b_out_grad, 4 * (size_t)nb * c);
    if (!seed || !g) return fm__arena_fail(cl);
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
                in_grad = fm__find(cl, "avgpool/global_avg_pool2d:grad");
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
            if (!wv || !gy || !dx || !xhat || (l->b_mask >= 0 && !mask)) return fm__arena_fail(cl);
            memset(dx, 0, 4 * in_numel);
            fm_linear_backward_input(dx, gy, wv, mask, nb, l->cin, l->cout);
            if (gs) {
                if (score_rows(cl, l, gs, gy, xhat, nb)) return -1;
            } else {
                float *gw = GET(cl, l->b_g_values, 4 * (size_t)l->nnz);
                if (!gw) return fm__arena_fail(cl);
                int64_t shape[2] = {l->cout, l->cin};
                snprintf(key, sizeof key, "grad/%s.weight", l->name);
                for (int32_t o = 0, e = 0; o < l->cout; ++o)
                    for (int32_t q = 0; q < l->cin; ++q) {
                        const float v = fm_linear_weight_grad_at(gy, xhat, o, q, nb, l->cin,
                                                                 l->cout);
                        if (!mask || fm_bit(mask, (int64_t)o * l->cin + q)) gw[e++] += v;
                        fm__rec(cl, key, FM_F32, 2, shape, (int64_t)o * l->cin + q, 1, &v);
                    }
                if (l->b_g_bias >= 0) {
                    float *gb = GET(cl, l->b_g_bias, 4 * (size_t)l->cout);
                    if (!gb) return fm__arena_fail(cl);
                    fm_linear_backward_bias(gb, gy, nb, l->cout);
                }
            }
            if (end(cl, ev++)) return -1;
        } else if (l->kind == FM_LAYER_GAP) {
            if (begin(cl, ev, 1, "avgpool", "global_avg_pool2d")) return -1;
            const float *gy = GET(cl, fm__find(cl, "avgpool/global_avg_pool2d:grad"),
                                  4 * (size_t)nb * l->cout);
            float *dx = GET(cl, in_grad, 4 * in_numel);
            if (!gy || !dx) return fm__arena_fail(cl);
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
            if (!gy || !arg || !dx) return fm__arena_fail(cl);
            fm_maxpool_backward(dx, gy, arg, nb, l->cin, l->h, l->w, l->k, l->s, l->oh, l->ow);
            if (end(cl, ev++)) return -1;
        } else if (l->kind == FM_LAYER_CONV) {
            if (begin(cl, ev, 1, l->name, "conv2d")) return -1;
            const fm_conv_dims d = conv_dims(l, nb);
            const int64_t numel = (int64_t)nb * l->cout * l->oh * l->ow;
            const uint8_t *mask = l->b_mask >= 0 ? GET(cl, l->b_mask, (l->numel_w + 7) / 8)
                                                 : NULL;
            float *gy = GET(cl, l->b_out_grad, 4 * numel);
            if (!gy || (l->b_mask >= 0 && !mask)) return fm__arena_fail(cl);
            if (l->relu) {
                const uint8_t *bits = GET(cl, l->b_relu_bits, (numel + 7) / 8);
                if (!bits) return fm__arena_fail(cl);
                fm_relu_backward(gy, bits, numel);
            }
            if (!gs && l->b_g_bias >= 0) {
                float *gb = GET(cl, l->b_g_bias, 4 * (size_t)l->cout);
                if (!gb) return fm__arena_fail(cl);
                fm_conv2d_backward_bias(gb, gy, &d);
            }
            const int32_t *ptr = NULL;
            if (!l->dense && !(ptr = weight_index(cl, l, l->b_widx_bwd, mask))) return -1;
            const int32_t *off = ptr ? ptr + l->cout + 1 : NULL;
            const size_t what_n = l->dense ? (size_t)l->numel_w : (size_t)l->nnz;
            if (in_grad >= 0) {  /* the first conv reads the data: no input gradient (TAPE-4) */
                const float *what = GET(cl, l->b_what, 4 * what_n);
                float *dx = GET(cl, in_grad, 4 * in_numel);
                if (!what || !dx) return fm__arena_fail(cl);
                memset(dx, 0, 4 * in_numel);
                fm_conv2d_backward_input(dx, gy, what, ptr, off, &d);
            }
            const float *xhat = sap_decode(cl, l);
            float *gwhat = GET(cl, l->b_what_grad, 4 * what_n);
            if (!xhat || !gwhat) return fm__arena_fail(cl);
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
                if (!wv || !gain || !r || !unc || !gw || !gg) return fm__arena_fail(cl);
                float inactive[FM_MAX_CHANNELS];
                if (l->cout > FM_MAX_CHANNELS) return fm__fail(cl, "too many channels");
                fm_nsconv_backward(gw, gg, cl->recording ? inactive : NULL, gwhat, !l->dense,
                                   wv, mask, gain, r, unc, l->cout, l->fan_in);
                if (cl->recording) {
                    int64_t shape[4];
                    int nd;
                    fm__weight_shape(l, shape, &nd);
                    snprintf(key, sizeof key, "grad/%s.weight", l->name);
                    const float *v = gw;
                    for (int64_t q = 0; q < l->numel_w; ++q)
                        fm__rec(cl, key, FM_F32, nd, shape, q, 1,
                            !mask || fm_bit(mask, q) ? v++ : &inactive[q / l->fan_in]);
                }
            }
            if (end(cl, ev++)) return -1;
        }
    }
    if (ev != FM_PLAN_EVENT_COUNT)
        return fm__fail(cl, "the port ran %d events, the plan has %d", ev, FM_PLAN_EVENT_COUNT);
    return 0;
}
