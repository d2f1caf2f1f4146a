/* A client's round (SPEC LT-1..3, BAE-2..4, PG-5): the global model into the arena, T local
 * SGD steps (BaE in an extrusion round), then the growth pass of an adjustment round. refimpl:
 * refimpl/fl/client.py local_train and growth_scores, refimpl/fl/bae.py, refimpl/core/optim.py.
 */
#include "client_internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

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
            if (fm_arena_open(&cl->ar, i)) return fm__arena_fail(cl);
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
            if (fm_arena_close(&cl->ar, i)) return fm__arena_fail(cl);
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
            return fm__fail(cl, "layer %s: the mask has %d active entries, the plan %d (ERK-2; "
                            "prune-and-grow keeps the count, PG-7)", l->name, count, l->nnz);
        float *wv = GET(cl, l->b_values, 4 * (size_t)l->nnz);
        uint8_t *bits = l->b_mask >= 0 ? GET(cl, l->b_mask, (l->numel_w + 7) / 8) : NULL;
        if (!wv || (l->b_mask >= 0 && !bits)) return fm__arena_fail(cl);
        if (!bits && count != l->numel_w)
            return fm__fail(cl, "layer %s: a masked weight but the plan holds no mask bitmap",
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
            if (!b) return fm__arena_fail(cl);
            memcpy(b, global[p++], 4 * (size_t)l->cout);
        }
        if (l->b_gain >= 0) {
            float *gn = GET(cl, l->b_gain, 4 * (size_t)l->cout);
            if (!gn) return fm__arena_fail(cl);
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
    if (!v) return fm__arena_fail(cl);
    snprintf(key, sizeof key, fmt, layer);
    fm__rec_all(cl, key, FM_F32, 1, shape, v);
    return 0;
}

static int record_params(fm_client *cl) {
    char key[96];
    for (int i = 0; i < cl->nlayers; ++i) {
        const fm_layer *l = &cl->L[i];
        if (l->prunable < 0) continue;
        int64_t shape[4];
        int nd;
        fm__weight_shape(l, shape, &nd);
        const float *wv = GET(cl, l->b_values, 4 * (size_t)l->nnz);
        const uint8_t *mask = l->b_mask >= 0 ? GET(cl, l->b_mask, (l->numel_w + 7) / 8) : NULL;
        if (!wv || (l->b_mask >= 0 && !mask)) return fm__arena_fail(cl);
        snprintf(key, sizeof key, "param/%s.weight", l->name);
        if (mask) fm__rec_scatter(cl, key, nd, shape, wv, mask, l->numel_w);
        else fm__rec_all(cl, key, FM_F32, nd, shape, wv);
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
    if (!x || !y) return fm__arena_fail(cl);
    for (int32_t r = 0; r < nb; ++r) {
        if (pos[r] < 0 || pos[r] >= data->n)
            return fm__fail(cl, "batch position %ld outside the client's %d examples",
                        (long)pos[r], data->n);
        for (int64_t q = 0; q < per; ++q) {
            const float v = (float)data->x_u8[pos[r] * per + q] / 255.0f;
            x[r * per + q] = (v - data->mean[q / plane]) / data->std[q / plane];
        }
        y[r] = data->y[pos[r]];
        if (y[r] < 0 || y[r] >= cl->classes)
            return fm__fail(cl, "label %ld outside [0, %d)", (long)y[r], cl->classes);
    }
    const int64_t bshape[1] = {nb}, xshape[4] = {nb, FM_PLAN_IN_C, FM_PLAN_IN_H, FM_PLAN_IN_W};
    if (!record) return 0;
    fm__rec_all(cl, "batch_index", FM_I64, 1, bshape, pos);
    fm__rec_all(cl, "x", FM_F32, 4, xshape, x);
    fm__rec_all(cl, "y", FM_I64, 1, bshape, y);
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
        if (!wv || (plan->marked_count[s] && !mask)) return fm__arena_fail(cl);
        ss[s] = 0.0;
        for (int64_t j = 0; j < plan->marked_count[s]; ++j) {
            const int64_t r = rank_of(mask, plan->marked[s][j]);
            if (r < 0) return fm__fail(cl, "marked index %ld of %s is not active (BAE-1)",
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
    fm__rec_scalar(cl, "marked_norm", FM_F64, &norm);
    fm__rec_scalar(cl, "lam", FM_F64, &lam);
    fm__rec_scalar(cl, "penalty", FM_F64, &pen);
    for (int s = 0; s < cl->nprunable; ++s) {  /* the penalty gradient on the marked entries */
        const fm_layer *l = &cl->L[cl->prunable_layer[s]];
        const float *wv = GET(cl, l->b_values, 4 * (size_t)l->nnz);
        float *gw = GET(cl, l->b_g_values, 4 * (size_t)l->nnz);
        const uint8_t *mask = l->b_mask >= 0 ? GET(cl, l->b_mask, (l->numel_w + 7) / 8) : NULL;
        char key[96];
        const int64_t shape[1] = {plan->marked_count[s]};
        snprintf(key, sizeof key, "penalty_grad/%s", l->name);
        if (!gw || !wv) return fm__arena_fail(cl);
        const float zero = 0.0f;
        if (plan->marked_count[s] == 0) fm__rec(cl, key, FM_F32, 1, shape, 0, 0, &zero);
        const double layer_norm = sqrt(ss[s]);
        const float coef = FM_HP_BAE_VARIANT == 0 ? (float)(2.0 * lam)
                           : layer_norm == 0.0 ? 0.0f : (float)(lam / layer_norm);
        for (int64_t j = 0; j < plan->marked_count[s]; ++j) {
            const int64_t r = rank_of(mask, plan->marked[s][j]);
            const float step = coef * wv[r];
            if (FM_HP_BAE_VARIANT == 0 || layer_norm != 0.0) gw[r] += step;
            fm__rec(cl, key, FM_F32, 1, shape, j, 1, &step);
        }
    }
    return 0;
}

/* ---- the round ------------------------------------------------------------------------------- */
static int growth(fm_client *cl, const fm_client_data *data, const fm_round_plan *plan) {
    fm_growth gs;
    char name[64], key[96];
    memset(&gs, 0, sizeof gs);
    snprintf(name, sizeof name, "r%d_c%d_grow", plan->t, data->id);
    if (cl->obs && cl->recording) cl->obs->step(cl->obs->ctx, name);
    const int32_t nb = data->n < FM_PLAN_BATCH ? data->n : FM_PLAN_BATCH;
    const int64_t bshape[1] = {nb};
    fm__rec_all(cl, "grow_index", FM_I64, 1, bshape, plan->grow_order);
    /* the gradient region is free in the growth pass: it holds the score row and the pairs */
    if (close_state(cl, 1)) return -1;
    int32_t row = 0;
    int64_t pairs = 0;
    for (int s = 0; s < cl->nprunable; ++s) {
        const fm_layer *l = &cl->L[cl->prunable_layer[s]];
        if (l->fan_in > row) row = l->fan_in;
        gs.k[s] = plan->grow_counts[s];
        if (gs.k[s] < 0 || gs.k[s] > l->numel_w - l->nnz)
            return fm__fail(cl, "growth count %ld of %s outside [0, %d] (PG-3)", (long)gs.k[s],
                        l->name, l->numel_w - l->nnz);
        pairs += gs.k[s];
    }
    if (4 * (size_t)row + 8 * (size_t)pairs > FM_PLAN_GRAD_REGION_BYTES)
        return fm__fail(cl, "the growth pass needs %lu bytes (a score row and %ld pairs), the "
                        "gradient region has %lu", (unsigned long)(4 * row + 8 * pairs),
                    (long)pairs, (unsigned long)FM_PLAN_GRAD_REGION_BYTES);
    if (fm_arena_open(&cl->ar, cl->b_growth_row) || fm_arena_open(&cl->ar, cl->b_growth_pairs))
        return fm__arena_fail(cl);
    gs.row = GET(cl, cl->b_growth_row, 4 * (size_t)row);
    fm_pair *next = GET(cl, cl->b_growth_pairs, 8 * (size_t)pairs);
    if (!gs.row || (pairs && !next)) return fm__arena_fail(cl);
    for (int s = 0; s < cl->nprunable; ++s) {
        gs.pairs[s] = next;
        next += gs.k[s];
    }
    if (load_batch(cl, data, plan->grow_order, nb, 0)) return -1;
    if (fm__pass(cl, nb, &gs)) return -1;
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
            fm__rec(cl, key, FM_I64, 1, shape, 0, 0, &zero_i);
            fm__rec(cl, vkey, FM_F32, 1, shape, 0, 0, &zero_f);
        }
        for (int64_t j = 0; j < gs.count[s]; ++j) {
            const int64_t idx = p[j].index;
            fm__rec(cl, key, FM_I64, 1, shape, j, 1, &idx);
            fm__rec(cl, vkey, FM_F32, 1, shape, j, 1, &p[j].value);
        }
    }
    if (fm_arena_close(&cl->ar, cl->b_growth_row) || fm_arena_close(&cl->ar, cl->b_growth_pairs))
        return fm__arena_fail(cl);
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
            if (!g) return fm__arena_fail(cl);
            memset(g, 0, 4 * (size_t)sp[q].n);
        }
        if (fm__pass(cl, nb, NULL)) return -1;
        if (record_grads(cl)) return -1;
        double lr = plan->lr;
        if (plan->extrude && extrude(cl, plan, tau, iterations, &lr)) return -1;
        fm__rec_scalar(cl, "lr", FM_F64, &lr);
        for (int q = 0; q < nparams; ++q) {
            float *p = GET(cl, sp[q].values, 4 * (size_t)sp[q].n);
            const float *g = GET(cl, sp[q].grad, 4 * (size_t)sp[q].n);
            float *m = FM_HP_MOMENTUM != 0.0 ? GET(cl, sp[q].mom, 4 * (size_t)sp[q].n) : NULL;
            if (!p || !g || (FM_HP_MOMENTUM != 0.0 && !m)) return fm__arena_fail(cl);
            fm_sgd(p, g, m, tau == 0, sp[q].n, lr, FM_HP_MOMENTUM, FM_HP_WEIGHT_DECAY);
        }
        if (record_params(cl)) return -1;
    }
    if (plan->grow_counts && growth(cl, data, plan)) return -1;
    return 0;
}
