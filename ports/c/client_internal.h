/* Internals shared by client.c (set-up, recording), pass.c (one forward and backward pass over
 * the plan's events) and round.c (a client's round). Not part of the port's interface. */
#ifndef FEDMEF_CLIENT_INTERNAL_H
#define FEDMEF_CLIENT_INTERNAL_H

#include "client.h"

enum { FM_LAYER_CONV = 1, FM_LAYER_RELU, FM_LAYER_MAXPOOL, FM_LAYER_GAP, FM_LAYER_LINEAR };

/* the growth pass (PG-5): the running top-k pairs per prunable layer and the score row, both
 * in the gradient region of the arena */
typedef struct {
    int32_t index;
    float value;
} fm_pair;

typedef struct {
    fm_pair *pairs[FM_MAX_LAYERS];
    int64_t count[FM_MAX_LAYERS], k[FM_MAX_LAYERS];
    float *row;
} fm_growth;

#define GET(cl, id, bytes) fm_arena_get(&(cl)->ar, (id), (size_t)(bytes))

int fm__fail(fm_client *cl, const char *fmt, ...);
int fm__arena_fail(fm_client *cl);
int fm__find(fm_client *cl, const char *fmt, ...);
void fm__rec(fm_client *cl, const char *key, int dtype, int ndim, const int64_t *shape,
             int64_t start, int64_t count, const void *data);
void fm__rec_all(fm_client *cl, const char *key, int dtype, int ndim, const int64_t *shape,
                 const void *data);
void fm__rec_scalar(fm_client *cl, const char *key, int dtype, const void *data);
void fm__rec_scatter(fm_client *cl, const char *key, int ndim, const int64_t *shape,
                     const float *values, const uint8_t *mask, int64_t numel);
void fm__weight_shape(const fm_layer *l, int64_t *shape, int *ndim);
/* growth NULL: a training step, gradients accumulated into the state's gradient buffers; else
 * the growth pass (dense scores, the top-k pairs) */
int fm__pass(fm_client *cl, int32_t nb, fm_growth *growth);

#endif
