/* One client's round of FedMef (SPEC LT-1..3, BAE-2..4, PG-5) over the arena of the plan header
 * (docs/porting.md). Compiled against a plan header (FEDMEF_PLAN, made by
 * `fedmef conformance export --c-header` or `fedmef memory --emit-c-header` plus the training
 * hyperparameters FM_HP_*).
 */
#ifndef FEDMEF_CLIENT_H
#define FEDMEF_CLIENT_H

#include "fedmef.h"
#include "fedmef_plan.h"

#define FM_MAX_LAYERS 16
#define FM_MAX_PARAMS 48
#define FM_MAX_EPOCHS 64
#define FM_MAX_CHANNELS 4096

/* What a step computed, handed to an observer (the driver's dump writer). Recording never
 * changes the computation; the observer keeps its own copies outside the arena. */
typedef struct {
    void *ctx;
    /* a new step of the dump begins (e.g. "r1_c0_s0") */
    void (*step)(void *ctx, const char *name);
    /* `count` elements at flat position `start` of tensor `key` (dtype code, shape); the tensor
     * is created, zero-filled, on its first slice */
    void (*slice)(void *ctx, const char *key, int dtype, int ndim, const int64_t *shape,
                  int64_t start, int64_t count, const void *data);
} fm_observer;

/* A client's examples, in the client's order (the dump's data/c{k}/...). */
typedef struct {
    int32_t id, n;
    const uint8_t *x_u8;       /* (n, C, H, W) */
    const int64_t *y;          /* (n,) */
    const float *mean, *std;   /* (C,) */
} fm_client_data;

/* The server's plan of round t (the dump's r{t}_start and inputs). */
typedef struct {
    int32_t t;
    double lr;                              /* eta_t (LT-1) */
    const int64_t *shuffle[FM_MAX_EPOCHS];  /* per local epoch, a permutation of 0..n-1 */
    const int64_t *marked[FM_MAX_LAYERS];   /* BAE-1 per prunable layer, or all NULL */
    int64_t marked_count[FM_MAX_LAYERS];
    int extrude;                            /* marked set given (BAE-5) */
    const int64_t *grow_counts;             /* k_l per prunable layer (PG-3), or NULL */
    const int64_t *grow_order;              /* GROW permutation (PG-5), or NULL */
} fm_round_plan;

typedef struct {
    int kind;
    const char *name;
    int32_t a, b, k, s, p, bias;
    /* derived */
    int relu, act, prunable;     /* fused ReLU; index of its act/ key; prunable slot or -1 */
    int32_t cin, h, w, cout, oh, ow, fan_in, numel_w, nnz, dense;
    /* cache of the input (per step) */
    int cache_fmt;
    int64_t cache_numel, cache_keep;
    /* buffer ids (-1 when the plan has none) */
    int b_values, b_mask, b_bias, b_gain, b_g_values, b_g_bias, b_g_gain;
    int b_m_values, b_m_bias, b_m_gain;
    int b_what, b_r, b_unclamped, b_what_grad;
    int b_out, b_out_grad, b_cache_a, b_cache_b, b_relu_bits, b_widx, b_hist, b_widx_bwd,
        b_decoded;
    int b_pool_out, b_pool_arg, b_pool_grad;
    int b_probs, b_target, b_seed;
} fm_layer;

typedef struct {
    fm_arena ar;
    unsigned char live[FM_PLAN_BUFFER_COUNT + 2];
    fm_plan_buffer plan[FM_PLAN_BUFFER_COUNT + 2];  /* the plan's, then the growth buffers */
    fm_layer L[FM_MAX_LAYERS];
    int nlayers, nprunable, classes;
    int prunable_layer[FM_MAX_LAYERS];
    int b_x, b_y, b_growth_row, b_growth_pairs;
    const fm_observer *obs;
    int recording;
    char prefix[64];
    char error[256];
} fm_client;

int fm_client_init(fm_client *cl, unsigned char *arena, size_t arena_bytes,
                   const fm_observer *obs);
int fm_client_round(fm_client *cl, const fm_client_data *data, const fm_round_plan *plan,
                    const float *const *global, const uint8_t *const *masks);
/* The parameter names the client holds, in the dump's order (conv: weight, bias, gain; linear:
 * weight, bias); returns their count. */
int fm_client_params(const fm_client *cl, const char **names, int64_t *numels, int max);

#endif
