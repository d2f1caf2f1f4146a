/* The porter's layers of refimpl in C99 (docs/porting.md has the table of Python functions and
 * the C functions that port them). Each function computes the same float32 operations as the
 * reference, in the order its loop kernels use where they are loops (masked convolution,
 * pooling, SAP); reductions that refimpl hands to NumPy or BLAS (NSConv statistics, the dense
 * first convolution, linear, softmax sums) are summed here in ascending index order, which the
 * float32 tolerance of docs/porting.md covers. No function allocates; none keeps state.
 */
#include "fedmef.h"

#include <math.h>
#include <string.h>

int fm_bit(const uint8_t *bits, int64_t i) { return (bits[i >> 3] >> (i & 7)) & 1; }

/* entry i of a weight is active: its mask bit, or always for a dense model (mask NULL) */
static int active(const uint8_t *mask, int64_t i) { return mask ? fm_bit(mask, i) : 1; }

/* refimpl build_index: ptr[o]..ptr[o+1]-1 are the active entries of output channel o, off[e] the
 * entry's position inside the channel's fan_in. Writes 4*(out_ch + 1) + 4*nnz bytes (the
 * weight_index workspace). Returns nnz. */
int32_t fm_weight_index(const uint8_t *mask, int32_t out_ch, int32_t fan_in, int32_t *ptr,
                        int32_t *off) {
    int32_t e = 0;
    ptr[0] = 0;
    for (int32_t o = 0; o < out_ch; ++o) {
        for (int32_t f = 0; f < fan_in; ++f)
            if (fm_bit(mask, (int64_t)o * fan_in + f)) off[e++] = f;
        ptr[o + 1] = e;
    }
    return e;
}

/* ---- NSConv, stats dense (NSC-1, NSC-3): refimpl/ops/nsconv.py standardize_fwd/_vjp -------- */
/* Per output channel o over its fan_in positions (inactive ones hold 0):
 *   mu = sum(W)/F, c = W - mu, v = sum(c^2) * (F / max(F - 1, 1)), r = sqrt(max(v, eps)),
 *   What = gain * c / r on the active positions.
 * wv: active values in index order; what: packed (nnz, index order) or dense (out_ch * fan_in).
 * Residuals written: r (out_ch floats), unclamped = (v > eps) (out_ch bytes). No workspace. */
static float scale_factor(int32_t fan_in) {
    return (float)((double)fan_in / (double)(fan_in > 1 ? fan_in - 1 : 1));
}

static float channel_mean(const float *wv, const uint8_t *mask, int32_t o, int32_t fan_in) {
    float sum = 0.0f;
    const float *v = wv;
    for (int32_t f = 0; f < fan_in; ++f)
        if (active(mask, (int64_t)o * fan_in + f)) sum += *v++;
    return sum / (float)fan_in;
}

void fm_nsconv_forward(float *what, int packed, float *r, uint8_t *unclamped, const float *wv,
                       const uint8_t *mask, const float *gain, int32_t out_ch, int32_t fan_in,
                       float eps) {
    const float sf = scale_factor(fan_in);
    const float *w0 = wv;
    for (int32_t o = 0; o < out_ch; ++o) {
        const float mu = channel_mean(w0, mask, o, fan_in);
        float ss = 0.0f;
        const float *v = w0;
        for (int32_t f = 0; f < fan_in; ++f) {
            const float w = active(mask, (int64_t)o * fan_in + f) ? *v++ : 0.0f;
            const float c = w - mu;
            ss += c * c;
        }
        const float var = ss * sf;
        r[o] = sqrtf((var >= eps || var != var) ? var : eps);  /* NumPy maximum */
        unclamped[o] = var > eps;
        v = w0;
        for (int32_t f = 0; f < fan_in; ++f) {
            const int on = active(mask, (int64_t)o * fan_in + f);
            const float w = on ? *v++ : 0.0f;
            const float ws = (gain[o] * (w - mu)) / r[o];
            if (packed) {
                if (on) *what++ = ws;
            } else {
                what[(int64_t)o * fan_in + f] = ws * (float)on;
            }
        }
        w0 = v;
    }
}

/* Gradients through the standardisation (NSC-3), with G = dL/dWhat (packed or dense):
 *   gc = sum(G c), dgain += gc / r, coef = [v > eps] gain (F/(F-1)) gc / r^3,
 *   dc = gain G / r - coef c, dW = dc - mean(dc)  (every position: the mean reaches all W).
 * dwv += dW on the active positions (index order). dw_inactive (out_ch, or NULL): dW at the
 * inactive positions of each channel (one value per channel), which a lean step never applies
 * (MASK-3); written only for recording. Reads W, gain, r, unclamped; no workspace. */
void fm_nsconv_backward(float *dwv, float *dgain, float *dw_inactive, const float *gwhat,
                        int packed, const float *wv, const uint8_t *mask, const float *gain,
                        const float *r, const uint8_t *unclamped, int32_t out_ch,
                        int32_t fan_in) {
    const float sf = scale_factor(fan_in);
    const float *w0 = wv, *g0 = gwhat;
    for (int32_t o = 0; o < out_ch; ++o) {
        const float mu = channel_mean(w0, mask, o, fan_in);
        const float *v, *gp;
        float gc = 0.0f;
        v = w0;
        gp = g0;
        for (int32_t f = 0; f < fan_in; ++f) {
            const int on = active(mask, (int64_t)o * fan_in + f);
            const float w = on ? *v++ : 0.0f;
            const float gm = packed ? (on ? *gp++ : 0.0f)
                                    : gwhat[(int64_t)o * fan_in + f] * (float)on;
            gc += gm * (w - mu);
        }
        if (dgain) dgain[o] += gc / r[o];
        const float coef = unclamped[o] ? ((gain[o] * sf) * gc) / powf(r[o], 3.0f) : 0.0f;
        float dsum = 0.0f;
        for (int pass = 0; pass < 2; ++pass) {
            const float mean = dsum / (float)fan_in;
            float *dw = dwv;
            v = w0;
            gp = g0;
            for (int32_t f = 0; f < fan_in; ++f) {
                const int on = active(mask, (int64_t)o * fan_in + f);
                const float w = on ? *v++ : 0.0f;
                const float gm = packed ? (on ? *gp++ : 0.0f)
                                        : gwhat[(int64_t)o * fan_in + f] * (float)on;
                const float dc = (gain[o] * gm) / r[o] - coef * (w - mu);
                if (pass == 0) {
                    dsum += dc;
                } else if (on) {
                    *dw++ += dc - mean;
                } else if (dw_inactive) {
                    dw_inactive[o] = dc - mean;
                }
            }
            if (pass == 1) dwv = dw;
        }
        w0 = v;
        g0 = gp;
    }
}

/* ---- convolution over the weight index ------------------------------------------------------ */
/* The entry e of channel o sits at input channel f / (K*K), kernel row (f % (K*K)) / K, column
 * f % K, f = off[e] (or, without an index, every f of the dense channel). */
#define ENTRY_LOOP(d, o, ptr, off, BODY)                                                      \
    do {                                                                                      \
        const int32_t kk_ = (d)->k * (d)->k, fan_ = (d)->c * kk_;                             \
        const int32_t e0_ = (ptr) ? (ptr)[o] : (o) * fan_;                                    \
        const int32_t e1_ = (ptr) ? (ptr)[(o) + 1] : ((o) + 1) * fan_;                        \
        for (int32_t e = e0_; e < e1_; ++e) {                                                 \
            const int32_t f = (off) ? (off)[e] : e - (o) * fan_;                              \
            const int32_t ci = f / kk_, ki = (f % kk_) / (d)->k, kj = f % (d)->k;             \
            BODY                                                                              \
        }                                                                                     \
    } while (0)

/* refimpl masked_conv2d_forward (MASK-1, CONV-1): y = conv2d(x, W (.) M) + b, visiting only the
 * active weights wv (index order); ptr/off NULL: a dense layer, wv = the dense weight. Each
 * output sums its entries in index order from 0, then adds the bias (the reference's order).
 * Reads x (N,C,H,W), writes y (N,O,OH,OW). No workspace beyond the weight index. */
void fm_conv2d_forward(float *y, const float *x, const float *wv, const int32_t *ptr,
                       const int32_t *off, const float *bias, const fm_conv_dims *d) {
    const int64_t plane = (int64_t)d->oh * d->ow;
    for (int32_t n = 0; n < d->n; ++n)
        for (int32_t o = 0; o < d->o; ++o) {
            float *yo = y + ((int64_t)n * d->o + o) * plane;
            for (int64_t q = 0; q < plane; ++q) yo[q] = 0.0f;
            ENTRY_LOOP(d, o, ptr, off, {
                const float v = wv[e];
                const float *xc = x + ((int64_t)n * d->c + ci) * d->h * d->w;
                for (int32_t oh = 0; oh < d->oh; ++oh) {
                    const int32_t ih = oh * d->s - d->p + ki;
                    if (ih < 0 || ih >= d->h) continue;
                    for (int32_t ow = 0; ow < d->ow; ++ow) {
                        const int32_t iw = ow * d->s - d->p + kj;
                        if (iw >= 0 && iw < d->w) yo[oh * d->ow + ow] += v * xc[ih * d->w + iw];
                    }
                }
            });
            if (bias)
                for (int64_t q = 0; q < plane; ++q) yo[q] += bias[o];
        }
}

/* refimpl masked_conv2d_backward, dx part (SAP-3: exact, needs only W and g):
 * dx[n, c, ih, iw] += w[e] g[n, o, oh, ow], over (o, e) in index order. dx: the caller's
 * buffer (zeroed by the caller before the first contribution). */
void fm_conv2d_backward_input(float *dx, const float *g, const float *wv, const int32_t *ptr,
                              const int32_t *off, const fm_conv_dims *d) {
    const int64_t plane = (int64_t)d->oh * d->ow;
    for (int32_t n = 0; n < d->n; ++n)
        for (int32_t o = 0; o < d->o; ++o) {
            const float *go = g + ((int64_t)n * d->o + o) * plane;
            ENTRY_LOOP(d, o, ptr, off, {
                const float v = wv[e];
                float *dc = dx + ((int64_t)n * d->c + ci) * d->h * d->w;
                for (int32_t oh = 0; oh < d->oh; ++oh) {
                    const int32_t ih = oh * d->s - d->p + ki;
                    if (ih < 0 || ih >= d->h) continue;
                    for (int32_t ow = 0; ow < d->ow; ++ow) {
                        const int32_t iw = ow * d->s - d->p + kj;
                        if (iw >= 0 && iw < d->w) dc[ih * d->w + iw] += v * go[oh * d->ow + ow];
                    }
                }
            });
        }
}

/* One weight gradient entry: sum over output positions (row-major) of sum_n g * xhat, the order
 * of refimpl's stride-1 kernel (an inner sum over the batch per position, then the positions).
 * xhat: the cached input decoded (SAP-3). */
float fm_conv2d_weight_grad_at(const float *g, const float *xhat, int32_t o, int32_t f,
                               const fm_conv_dims *d) {
    const int32_t kk = d->k * d->k, ci = f / kk, ki = (f % kk) / d->k, kj = f % d->k;
    const int64_t plane = (int64_t)d->oh * d->ow, in_plane = (int64_t)d->h * d->w;
    float total = 0.0f;
    for (int32_t oh = 0; oh < d->oh; ++oh) {
        const int32_t ih = oh * d->s - d->p + ki;
        if (ih < 0 || ih >= d->h) continue;
        for (int32_t ow = 0; ow < d->ow; ++ow) {
            const int32_t iw = ow * d->s - d->p + kj;
            if (iw < 0 || iw >= d->w) continue;
            float a = 0.0f;
            for (int32_t n = 0; n < d->n; ++n)
                a += g[((int64_t)n * d->o + o) * plane + oh * d->ow + ow]
                     * xhat[((int64_t)n * d->c + ci) * in_plane + ih * d->w + iw];
            total += a;
        }
    }
    return total;
}

/* refimpl masked_conv2d_backward, weight part: dwv[e] += dL/dw at every active entry (MASK-3:
 * inactive weights get no gradient), from the decoded cache xhat. */
void fm_conv2d_backward_weight(float *dwv, const float *g, const float *xhat,
                               const int32_t *ptr, const int32_t *off, const fm_conv_dims *d) {
    for (int32_t o = 0; o < d->o; ++o)
        ENTRY_LOOP(d, o, ptr, off, {
            (void)ci; (void)ki; (void)kj;
            dwv[e] += fm_conv2d_weight_grad_at(g, xhat, o, f, d);
        });
}

/* db[o] += sum over (n, oh, ow) of g (exact under SAP, SAP-3). */
void fm_conv2d_backward_bias(float *db, const float *g, const fm_conv_dims *d) {
    const int64_t plane = (int64_t)d->oh * d->ow;
    for (int32_t o = 0; o < d->o; ++o) {
        float s = 0.0f;
        for (int32_t n = 0; n < d->n; ++n)
            for (int64_t q = 0; q < plane; ++q) s += g[((int64_t)n * d->o + o) * plane + q];
        db[o] += s;
    }
}

/* The fused ReLU (refimpl conv2d_fwd with relu=True, CONV-5): y = max(y, 0) in place, as NumPy's
 * maximum (a NaN stays, -0.0 becomes +0.0), and the residual bitmap of (y > 0), ceil(numel/8)
 * bytes. */
void fm_relu_forward(float *y, uint8_t *bits, int64_t numel) {
    memset(bits, 0, (size_t)((numel + 7) / 8));
    for (int64_t i = 0; i < numel; ++i) {
        const float v = y[i];
        y[i] = (v > 0.0f || v != v) ? v : 0.0f; /* NumPy maximum: NaN kept, -0.0 -> +0.0 */
        if (y[i] > 0.0f) bits[i >> 3] |= (uint8_t)(1u << (i & 7));
    }
}

/* g *= (y > 0), in place in the cotangent (ReLU'(0) = 0, CONV-5). */
void fm_relu_backward(float *g, const uint8_t *bits, int64_t numel) {
    for (int64_t i = 0; i < numel; ++i) g[i] = g[i] * (float)fm_bit(bits, i);
}

/* ---- pooling --------------------------------------------------------------------------------- */
/* refimpl max_pool2d (no padding): y = max over each window, arg = the window position
 * (row-major) of the FIRST maximum (CONV-5), one uint8 per output (SAP-4). */
void fm_maxpool_forward(float *y, uint8_t *arg, const float *x, int32_t n, int32_t c, int32_t h,
                        int32_t w, int32_t k, int32_t s, int32_t oh, int32_t ow) {
    for (int64_t nc = 0; nc < (int64_t)n * c; ++nc) {
        const float *xp = x + nc * h * w;
        for (int32_t i = 0; i < oh; ++i)
            for (int32_t j = 0; j < ow; ++j) {
                float best = -INFINITY;
                int a = 0;
                for (int32_t di = 0; di < k; ++di)
                    for (int32_t dj = 0; dj < k; ++dj) {
                        const float v = xp[(i * s + di) * w + j * s + dj];
                        if (v > best) { best = v; a = di * k + dj; }
                    }
                y[(nc * oh + i) * ow + j] = best;
                arg[(nc * oh + i) * ow + j] = (uint8_t)a;
            }
    }
}

/* dx (overwritten) = g routed to each window's argmax; overlapping windows add. */
void fm_maxpool_backward(float *dx, const float *g, const uint8_t *arg, int32_t n, int32_t c,
                         int32_t h, int32_t w, int32_t k, int32_t s, int32_t oh, int32_t ow) {
    for (int64_t q = 0; q < (int64_t)n * c * h * w; ++q) dx[q] = 0.0f;
    for (int64_t nc = 0; nc < (int64_t)n * c; ++nc)
        for (int32_t i = 0; i < oh; ++i)
            for (int32_t j = 0; j < ow; ++j) {
                const int64_t q = (nc * oh + i) * ow + j;
                const int a = arg[q];
                dx[nc * h * w + (i * s + a / k) * w + j * s + a % k] += g[q];
            }
}

/* refimpl global_avg_pool2d: y[n, c] = sum(x[n, c]) / (H*W). Keeps nothing. */
void fm_gap_forward(float *y, const float *x, int32_t n, int32_t c, int32_t hw) {
    for (int64_t nc = 0; nc < (int64_t)n * c; ++nc) {
        float s = 0.0f;
        for (int32_t q = 0; q < hw; ++q) s += x[nc * hw + q];
        y[nc] = s / (float)hw;
    }
}

void fm_gap_backward(float *dx, const float *g, int32_t n, int32_t c, int32_t hw) {
    for (int64_t nc = 0; nc < (int64_t)n * c; ++nc) {
        const float v = g[nc] / (float)hw;
        for (int32_t q = 0; q < hw; ++q) dx[nc * hw + q] = v;
    }
}

/* ---- linear ---------------------------------------------------------------------------------- */
/* refimpl linear_fwd: y = x W^T + b over the active weights (mask bitmap over (out, in); wv the
 * active values in C order). Sums in ascending input order, then adds the bias. */
void fm_linear_forward(float *y, const float *x, const float *wv, const uint8_t *mask,
                       const float *b, int32_t n, int32_t in, int32_t out) {
    for (int32_t r = 0; r < n; ++r) {
        const float *v = wv;
        for (int32_t o = 0; o < out; ++o) {
            float s = 0.0f;
            for (int32_t i = 0; i < in; ++i)
                if (active(mask, (int64_t)o * in + i)) s += x[(int64_t)r * in + i] * *v++;
            y[(int64_t)r * out + o] = b ? s + b[o] : s;
        }
    }
}

/* dx[n, i] += sum over o (ascending) of g[n, o] W[o, i] (exact under SAP, SAP-3). */
void fm_linear_backward_input(float *dx, const float *g, const float *wv, const uint8_t *mask,
                              int32_t n, int32_t in, int32_t out) {
    for (int32_t r = 0; r < n; ++r) {
        const float *v = wv;
        for (int32_t o = 0; o < out; ++o)
            for (int32_t i = 0; i < in; ++i)
                if (active(mask, (int64_t)o * in + i))
                    dx[(int64_t)r * in + i] += g[(int64_t)r * out + o] * *v++;
    }
}

/* dL/dW[o, i] = sum_n g[n, o] xhat[n, i] (SAP-3: from the decoded cache). */
float fm_linear_weight_grad_at(const float *g, const float *xhat, int32_t o, int32_t i,
                               int32_t n, int32_t in, int32_t out) {
    float s = 0.0f;
    for (int32_t r = 0; r < n; ++r) s += g[(int64_t)r * out + o] * xhat[(int64_t)r * in + i];
    return s;
}

void fm_linear_backward_bias(float *db, const float *g, int32_t n, int32_t out) {
    for (int32_t o = 0; o < out; ++o) {
        float s = 0.0f;
        for (int32_t r = 0; r < n; ++r) s += g[(int64_t)r * out + o];
        db[o] += s;
    }
}

/* ---- cross-entropy (LT-2) -------------------------------------------------------------------- */
/* refimpl cross_entropy_fwd: per row z = x - max(x), loss = log(sum(exp(z))) - z[t]; returns the
 * mean over the batch; writes the softmax probabilities (the residual, SAP-4). */
float fm_cross_entropy_forward(float *probs, const float *logits, const int64_t *target,
                               int32_t n, int32_t classes) {
    float total = 0.0f;
    for (int32_t r = 0; r < n; ++r) {
        const float *x = logits + (int64_t)r * classes;
        float *p = probs + (int64_t)r * classes;
        float m = x[0];
        for (int32_t j = 1; j < classes; ++j)
            if (x[j] > m || x[j] != x[j]) m = x[j];
        float s = 0.0f;
        for (int32_t j = 0; j < classes; ++j) {
            p[j] = expf(x[j] - m);
            s += p[j];
        }
        total += logf(s) - (x[target[r]] - m);
        for (int32_t j = 0; j < classes; ++j) p[j] = p[j] / s;
    }
    return total / (float)n;
}

/* refimpl cross_entropy_vjp: dlogits = (probs - onehot(t)) * (seed / N). */
void fm_cross_entropy_backward(float *dlogits, const float *probs, const int64_t *target,
                               float seed, int32_t n, int32_t classes) {
    const float scale = seed / (float)n;
    for (int32_t r = 0; r < n; ++r)
        for (int32_t j = 0; j < classes; ++j) {
            float d = probs[(int64_t)r * classes + j];
            if (j == target[r]) d -= 1.0f;
            dlogits[(int64_t)r * classes + j] = d * scale;
        }
}

/* ---- SAP (SAP-2, CONV-4, CONV-6, CACHE-1..3) ------------------------------------------------- */
/* n_keep = numel - floor(gamma * numel), gamma = num/den exactly (CONV-6). */
int64_t fm_sap_keep_count(int64_t numel, int64_t gamma_num, int64_t gamma_den) {
    return numel - (gamma_num * numel) / gamma_den;
}

/* bytes of a flat index: the narrowest of uint8/16/32 holding numel - 1 (CACHE-1). */
int fm_sap_index_width(int64_t numel) {
    return numel - 1 <= 0xFF ? 1 : numel - 1 <= 0xFFFF ? 2 : 4;
}

/* Bytes of a cache (CACHE-4); *a_bytes: its first buffer (bits or index; 0 for dense). */
int64_t fm_sap_format_bytes(int fmt, int64_t numel, int64_t keep, int64_t *a_bytes) {
    int64_t a = 0, values = keep * 4;
    if (fmt == FM_CACHE_DENSE) values = numel * 4;
    if (fmt == FM_CACHE_BITMAP) a = (numel + 7) / 8;
    if (fmt == FM_CACHE_INDEX) a = keep * fm_sap_index_width(numel);
    if (a_bytes) *a_bytes = a;
    return a + values;
}

/* CACHE-2: the policy's format; auto = the smallest, ties dense > bitmap > index. */
int fm_sap_format(int policy, int64_t numel, int64_t keep) {
    if (policy != FM_POLICY_AUTO) return policy;
    int best = FM_CACHE_DENSE;
    int64_t best_bytes = fm_sap_format_bytes(FM_CACHE_DENSE, numel, keep, NULL);
    for (int fmt = FM_CACHE_BITMAP; fmt <= FM_CACHE_INDEX; ++fmt) {
        const int64_t b = fm_sap_format_bytes(fmt, numel, keep, NULL);
        if (b < best_bytes) { best = fmt; best_bytes = b; }
    }
    return best;
}

/* The IEEE-754 bits of |v|: for finite floats they order like |v|; NaN and inf are >= the bits
 * of inf. */
uint32_t fm_abs_bits(float v) {
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return u & 0x7FFFFFFFu;
}

/* The selection of refimpl.sap.select (SAP-2, CONV-4) as a radix select with 8-bit digits: one
 * pass per digit (4 for float32) histograms, into hist (256 uint32 = 1 KiB, the
 * selection_histogram workspace), the digit of the entries that share the digits found so far,
 * and picks the bin holding the keep-th largest. No candidate list. Results: *threshold = the
 * bits of the keep-th largest |x|, *ties = how many entries equal to it are kept (the first ones
 * by ascending index). Returns 0, or -1 - i when entry i is NaN or inf (it has no rank). */
int64_t fm_sap_select(const float *x, int64_t numel, int64_t keep, uint32_t *hist,
                      uint32_t *threshold, int64_t *ties) {
    uint32_t prefix = 0, known = 0;
    int64_t need = keep;
    for (int shift = 24; shift >= 0; shift -= 8) {
        memset(hist, 0, 256 * sizeof *hist);
        for (int64_t i = 0; i < numel; ++i) {
            const uint32_t a = fm_abs_bits(x[i]);
            if (shift == 24 && a >= 0x7F800000u) return -1 - i;
            if ((a & known) == prefix) hist[(a >> shift) & 0xFFu] += 1u;
        }
        uint32_t d = 255;
        while (d > 0 && (int64_t)hist[d] < need) need -= hist[d--];
        prefix |= d << shift;
        known |= 0xFFu << shift;
    }
    *threshold = prefix;
    *ties = need;
    return 0;
}

/* Whether an entry of |x| bits `pattern` is kept, scanning in ascending index order. */
int fm_sap_kept(uint32_t pattern, uint32_t threshold, int64_t *ties) {
    if (pattern > threshold) return 1;
    if (pattern == threshold && *ties > 0) { --*ties; return 1; }
    return 0;
}

/* Encode x in format fmt (CACHE-1) in one pass: bitmap -> a = ceil(numel/8) bytes of keep bits
 * (little bit order) and values = the kept entries in ascending order; index -> a = the kept
 * positions (uint8/16/32) and values; dense -> values = xhat (numel, +0.0 where dropped). Values
 * are copied bit for bit (CACHE-3). */
void fm_sap_encode(const float *x, int64_t numel, uint32_t threshold, int64_t ties, int fmt,
                   uint8_t *a, float *values) {
    const int width = fm_sap_index_width(numel);
    int64_t k = 0;
    if (fmt == FM_CACHE_BITMAP) memset(a, 0, (size_t)((numel + 7) / 8));
    for (int64_t i = 0; i < numel; ++i) {
        const int kept = fm_sap_kept(fm_abs_bits(x[i]), threshold, &ties);
        if (fmt == FM_CACHE_DENSE) {
            values[i] = kept ? x[i] : 0.0f;
            continue;
        }
        if (!kept) continue;
        if (fmt == FM_CACHE_BITMAP) {
            a[i >> 3] |= (uint8_t)(1u << (i & 7));
        } else if (width == 1) {
            a[k] = (uint8_t)i;
        } else if (width == 2) {
            const uint16_t v = (uint16_t)i;
            memcpy(a + 2 * k, &v, 2);
        } else {
            const uint32_t v = (uint32_t)i;
            memcpy(a + 4 * k, &v, 4);
        }
        values[k++] = x[i];
    }
}

/* xhat (numel) from a cache (CACHE-3): kept values at their positions, +0.0 elsewhere. A dense
 * cache is its own xhat (the caller reads it in place). */
void fm_sap_decode(float *xhat, int64_t numel, int fmt, const uint8_t *a, const float *values,
                   int64_t keep) {
    const int width = fm_sap_index_width(numel);
    int64_t k = 0;
    if (fmt == FM_CACHE_BITMAP) {
        for (int64_t i = 0; i < numel; ++i) xhat[i] = fm_bit(a, i) ? values[k++] : 0.0f;
        return;
    }
    for (int64_t i = 0; i < numel; ++i) xhat[i] = 0.0f;
    for (k = 0; k < keep; ++k) {
        uint32_t i = a[k];
        if (width == 2) {
            uint16_t v;
            memcpy(&v, a + 2 * k, 2);
            i = v;
        } else if (width == 4) {
            memcpy(&i, a + 4 * k, 4);
        }
        xhat[i] = values[k];
    }
}

/* ---- SGD (LT-1, MASK-3) ---------------------------------------------------------------------- */
/* refimpl SGD.step on the stored (active) entries: d = g + wd p; with momentum buf = d on the
 * first step, else buf = momentum buf + d, d = buf; p = p - lr d. lr, momentum and wd are
 * rounded to float32 first, as the reference does. */
void fm_sgd(float *p, const float *g, float *mom, int first, int64_t n, double lr,
            double momentum, double weight_decay) {
    const float lr32 = (float)lr, m32 = (float)momentum, wd32 = (float)weight_decay;
    for (int64_t i = 0; i < n; ++i) {
        float d = weight_decay != 0.0 ? g[i] + wd32 * p[i] : g[i];
        if (momentum != 0.0) {
            mom[i] = first ? d : mom[i] * m32 + d;
            d = mom[i];
        }
        p[i] = p[i] - lr32 * d;
    }
}
