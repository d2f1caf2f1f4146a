/* FedMef C99 port: one client's local training of the cnn model, float32 (docs/porting.md).
 *
 * Layer functions (layers.c) are the porter's layers of refimpl, one per primitive, in the style
 * of llm.c: explicit output buffers and dimensions, gradients accumulated (+=) into the caller's
 * buffers, no allocation. Each comment names the refimpl function it ports, the bytes it reads
 * and writes, and the workspace it needs (docs/memory.md, MEM-5).
 *
 * Layouts (SPEC CONV-1, CONV-3): activations NCHW, float32, C order. A masked weight is held as
 * its active values in C order of (O, C, KH, KW) ("index order") plus a mask bitmap over the
 * dense positions (bit i % 8 of byte i / 8, little bit order). The weight index built from the
 * bitmap is int32: ptr (O + 1) and off (nnz), off = c*KH*KW + i*KW + j inside the channel.
 */
#ifndef FEDMEF_H
#define FEDMEF_H

#include <stddef.h>
#include <stdint.h>

/* dtype codes of the tensor file (docs/conformance.md) */
enum { FM_F32 = 1, FM_F64 = 2, FM_U8 = 4, FM_U16 = 6, FM_I32 = 7, FM_U32 = 8, FM_I64 = 9,
       FM_BOOL = 11 };

/* SAP cache formats (CACHE-1) and policies (CACHE-2), as refimpl.sap */
enum { FM_CACHE_DENSE = 0, FM_CACHE_BITMAP = 1, FM_CACHE_INDEX = 2 };
enum { FM_POLICY_DENSE = 0, FM_POLICY_BITMAP = 1, FM_POLICY_INDEX = 2, FM_POLICY_AUTO = 3 };

/* ---- weight index (refimpl/kernels/masked_conv.py: build_index) ---------------------------- */
int32_t fm_weight_index(const uint8_t *mask, int32_t out_ch, int32_t fan_in, int32_t *ptr,
                        int32_t *off);
int fm_bit(const uint8_t *bits, int64_t i);

/* ---- NSConv standardisation, stats "dense" (refimpl/ops/nsconv.py) ------------------------- */
void fm_nsconv_forward(float *what, int packed, float *r, uint8_t *unclamped, const float *wv,
                       const uint8_t *mask, const float *gain, int32_t out_ch, int32_t fan_in,
                       float eps);
void fm_nsconv_backward(float *dwv, float *dgain, float *dw_inactive, const float *gwhat,
                        int packed, const float *wv, const uint8_t *mask, const float *gain,
                        const float *r, const uint8_t *unclamped, int32_t out_ch,
                        int32_t fan_in);

/* ---- convolution over a weight index (refimpl/kernels/masked_conv.py) ----------------------- */
typedef struct {
    int32_t n, c, h, w;     /* input */
    int32_t o, k, s, p;     /* output channels, kernel, stride, padding */
    int32_t oh, ow;         /* output size */
} fm_conv_dims;

void fm_conv2d_forward(float *y, const float *x, const float *wv, const int32_t *ptr,
                       const int32_t *off, const float *bias, const fm_conv_dims *d);
void fm_conv2d_backward_input(float *dx, const float *g, const float *wv, const int32_t *ptr,
                              const int32_t *off, const fm_conv_dims *d);
void fm_conv2d_backward_weight(float *dwv, const float *g, const float *xhat,
                               const int32_t *ptr, const int32_t *off, const fm_conv_dims *d);
float fm_conv2d_weight_grad_at(const float *g, const float *xhat, int32_t o, int32_t f,
                               const fm_conv_dims *d);
void fm_conv2d_backward_bias(float *db, const float *g, const fm_conv_dims *d);
void fm_relu_forward(float *y, uint8_t *bits, int64_t numel);
void fm_relu_backward(float *g, const uint8_t *bits, int64_t numel);

/* ---- pooling (refimpl/kernels/pool.py, refimpl/ops/pool.py) --------------------------------- */
void fm_maxpool_forward(float *y, uint8_t *arg, const float *x, int32_t n, int32_t c, int32_t h,
                        int32_t w, int32_t k, int32_t s, int32_t oh, int32_t ow);
void fm_maxpool_backward(float *dx, const float *g, const uint8_t *arg, int32_t n, int32_t c,
                         int32_t h, int32_t w, int32_t k, int32_t s, int32_t oh, int32_t ow);
void fm_gap_forward(float *y, const float *x, int32_t n, int32_t c, int32_t hw);
void fm_gap_backward(float *dx, const float *g, int32_t n, int32_t c, int32_t hw);

/* ---- linear (refimpl/ops/conv.py: linear_fwd, linear_vjp) ----------------------------------- */
void fm_linear_forward(float *y, const float *x, const float *wv, const uint8_t *mask,
                       const float *b, int32_t n, int32_t in, int32_t out);
void fm_linear_backward_input(float *dx, const float *g, const float *wv, const uint8_t *mask,
                              int32_t n, int32_t in, int32_t out);
float fm_linear_weight_grad_at(const float *g, const float *xhat, int32_t o, int32_t i,
                               int32_t n, int32_t in, int32_t out);
void fm_linear_backward_bias(float *db, const float *g, int32_t n, int32_t out);

/* ---- softmax cross-entropy (refimpl/ops/loss.py) -------------------------------------------- */
float fm_cross_entropy_forward(float *probs, const float *logits, const int64_t *target,
                               int32_t n, int32_t classes);
void fm_cross_entropy_backward(float *dlogits, const float *probs, const int64_t *target,
                               float seed, int32_t n, int32_t classes);

/* ---- SAP selection and the compressed cache (refimpl/sap.py, refimpl/kernels/cache.py) ----- */
int64_t fm_sap_keep_count(int64_t numel, int64_t gamma_num, int64_t gamma_den);
int fm_sap_index_width(int64_t numel);
int fm_sap_format(int policy, int64_t numel, int64_t keep);
int64_t fm_sap_format_bytes(int fmt, int64_t numel, int64_t keep, int64_t *a_bytes);
int64_t fm_sap_select(const float *x, int64_t numel, int64_t keep, uint32_t *hist,
                      uint32_t *threshold, int64_t *ties);
int fm_sap_kept(uint32_t pattern, uint32_t threshold, int64_t *ties);
uint32_t fm_abs_bits(float v);
void fm_sap_encode(const float *x, int64_t numel, uint32_t threshold, int64_t ties, int fmt,
                   uint8_t *a, float *values);
void fm_sap_decode(float *xhat, int64_t numel, int fmt, const uint8_t *a, const float *values,
                   int64_t keep);

/* ---- SGD with momentum and weight decay (refimpl/core/optim.py) ---------------------------- */
void fm_sgd(float *p, const float *g, float *mom, int first, int64_t n, double lr,
            double momentum, double weight_decay);

/* ---- the arena: buffers at planned offsets, opened and closed at planned events ------------ */
typedef struct {
    const char *name;
    uint32_t offset, bytes;
    int born, died;       /* events, inclusive; state buffers: 0 .. last */
} fm_plan_buffer;

typedef struct {
    unsigned char *base;
    size_t size;
    const fm_plan_buffer *buf;
    int nbuf;
    unsigned char *live;  /* one flag per buffer (caller's array of nbuf bytes) */
    int event;            /* current event, -1 between steps */
    size_t live_bytes, peak_live, high_water;
    char error[160];
} fm_arena;

void fm_arena_init(fm_arena *a, unsigned char *base, size_t size, const fm_plan_buffer *buf,
                   int nbuf, unsigned char *live);
int fm_arena_find(const fm_arena *a, const char *name);
int fm_arena_open(fm_arena *a, int id);
int fm_arena_close(fm_arena *a, int id);
void *fm_arena_get(fm_arena *a, int id, size_t need);
int fm_arena_begin_event(fm_arena *a, int event);
int fm_arena_end_event(fm_arena *a, int event);

#endif
