"""Dense conv2d kernels: forward, input gradient and weight gradient (SPEC CONV-1).

Three implementations of each, behind one dispatch (``impl``):

- ``naive``: plain Python loop functions, C-shaped (explicit ``out`` buffers, explicit bounds,
  no allocation inside): the oracle. Slow; for tests on tiny shapes.
- ``jit``: the *same* loop functions compiled by Numba (``refimpl.core._jit.njit``); parallel over
  the batch (forward, input gradient) or over output channels (weight gradient), so every
  ``prange`` iteration writes its own slice.
- ``np``: vectorised NumPy: im2col as one strided copy, a BLAS matmul, and col2im as
  ``kh·kw`` strided adds. The default (see ``DEFAULT_IMPL``): fastest here (benchmarks/conv.py).

Shapes: x (N, C, H, W), w (O, C/groups, KH, KW), g and y (N, O, OH, OW) with
OH = floor((H + 2·ph − dh·(KH − 1) − 1) / sh) + 1 (likewise OW). All kernels keep the input
dtype (float32 or float64, CONV-2).
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..core._jit import JIT_ENABLED, njit, prange
from . import pick

__all__ = ["IMPLS", "DEFAULT_IMPL", "conv2d_output_shape", "conv2d_forward", "conv2d_grad_input",
           "conv2d_grad_weight"]

IMPLS = ("naive", "np", "jit")
#: The default path. ``np`` (im2col + BLAS) is 2-5x faster than the direct Numba loops on the
#: reference layer (benchmarks/conv.py), and works without numba.
DEFAULT_IMPL = "np"


def conv2d_output_shape(x_shape, w_shape, stride, padding, dilation, groups):
    """(N, O, OH, OW) of conv2d; raises ValueError when the window does not fit."""
    n, c, h, w = x_shape
    o, _, kh, kw = w_shape
    out = []
    for size, k, s, p, d, axis in zip((h, w), (kh, kw), stride, padding, dilation,
                                      ("height", "width")):
        span = d * (k - 1) + 1
        if size + 2 * p < span:
            raise ValueError(
                f"conv2d: input {axis} {size} with padding {p} is smaller than the dilated kernel "
                f"span {span}; expected {axis} >= {span - 2 * p}"
            )
        out.append((size + 2 * p - span) // s + 1)
    return (n, o, out[0], out[1])


# ---- naive loops (the oracle); the jit versions are these functions compiled ------------------
def _forward_naive(x, w, stride, padding, dilation, groups, out):
    """out[n, o, oh, ow] = Σ_{c, i, j} w[o, c, i, j] · x[n, c0 + c, oh·sh − ph + i·dh, ...]."""
    n_batch, c_in, h, wd = x.shape
    c_out, cg, kh, kw = w.shape
    _, _, oh_size, ow_size = out.shape
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    og = c_out // groups
    for n in prange(n_batch):
        for o in range(c_out):
            c0 = (o // og) * cg
            for oh in range(oh_size):
                for ow in range(ow_size):
                    out[n, o, oh, ow] = 0
                    acc = out[n, o, oh, ow]  # a zero of the buffer's dtype
                    for c in range(cg):
                        for i in range(kh):
                            ih = oh * sh - ph + i * dh
                            if ih < 0 or ih >= h:
                                continue
                            for j in range(kw):
                                iw = ow * sw - pw + j * dw
                                if iw < 0 or iw >= wd:
                                    continue
                                acc += w[o, c, i, j] * x[n, c0 + c, ih, iw]
                    out[n, o, oh, ow] = acc
    return out


def _grad_input_naive(g, w, stride, padding, dilation, groups, dx):
    """dx[n, c0 + c, ih, iw] = Σ w[o, c, i, j] · g[n, o, oh, ow] over oh·sh − ph + i·dh = ih."""
    n_batch, c_in, h, wd = dx.shape
    c_out, cg, kh, kw = w.shape
    _, _, oh_size, ow_size = g.shape
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    og = c_out // groups
    for n in prange(n_batch):
        for c in range(c_in):
            for ih in range(h):
                for iw in range(wd):
                    dx[n, c, ih, iw] = 0
        for o in range(c_out):
            c0 = (o // og) * cg
            for c in range(cg):
                for i in range(kh):
                    for j in range(kw):
                        v = w[o, c, i, j]
                        for oh in range(oh_size):
                            ih = oh * sh - ph + i * dh
                            if ih < 0 or ih >= h:
                                continue
                            for ow in range(ow_size):
                                iw = ow * sw - pw + j * dw
                                if iw < 0 or iw >= wd:
                                    continue
                                dx[n, c0 + c, ih, iw] += v * g[n, o, oh, ow]
    return dx


def _grad_weight_naive(x, g, stride, padding, dilation, groups, dw_out):
    """dw[o, c, i, j] = Σ_{n, oh, ow} g[n, o, oh, ow] · x[n, c0 + c, oh·sh − ph + i·dh, ...]."""
    n_batch, c_in, h, wd = x.shape
    c_out, cg, kh, kw = dw_out.shape
    _, _, oh_size, ow_size = g.shape
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    og = c_out // groups
    for o in prange(c_out):
        c0 = (o // og) * cg
        for c in range(cg):
            for i in range(kh):
                for j in range(kw):
                    dw_out[o, c, i, j] = 0
                    acc = dw_out[o, c, i, j]
                    for n in range(n_batch):
                        for oh in range(oh_size):
                            ih = oh * sh - ph + i * dh
                            if ih < 0 or ih >= h:
                                continue
                            for ow in range(ow_size):
                                iw = ow * sw - pw + j * dw
                                if iw < 0 or iw >= wd:
                                    continue
                                acc += g[n, o, oh, ow] * x[n, c0 + c, ih, iw]
                    dw_out[o, c, i, j] = acc
    return dw_out


_forward_jit = njit(_forward_naive, parallel=True)
_grad_input_jit = njit(_grad_input_naive, parallel=True)
_grad_weight_jit = njit(_grad_weight_naive, parallel=True)


# ---- NumPy: im2col + BLAS ---------------------------------------------------------------------
# Columns are laid out channel-major, (C·KH·KW, N·OH·OW), so each op is ONE large GEMM per group
# (measured 1.5x faster here than one GEMM per sample with the (N, C·KH·KW, OH·OW) layout).
# Around the GEMM only data moves: im2col (with the padding written in place), col2im, and the
# two transposes between (N, O, OH, OW) and the channel-major (O, N·OH·OW). Each of those moves
# has a loop twin (``_naive``, compiled as ``_jit``), used when Numba compiles: the NumPy versions
# (strided views, np.pad, strided adds) cost as much as the GEMM itself here. Either way the GEMM
# sees the same operands, so the results are identical. The compiled moves run SERIAL (their
# ``prange`` is a plain range): between two BLAS calls a parallel Numba region makes Numba's
# OpenMP threads and OpenBLAS's threads spin against each other on 2 cores, and a conv step took
# 30 ms instead of 6 (measured: parallel moves 29.7 ms, serial 5.9 ms, NumPy moves 15.5 ms).

# -- the moves, loop twins (C-shaped; the jit versions are these compiled) --
# im2col and col2im work on the zero-padded input (N, C, Hp, Wp), so every row segment they move
# is a plain slice (unit step when the stride is 1, which LLVM turns into vector copies); taking
# two slices per output row measured 2x faster than NumPy's strided copy, clipping each segment
# to the unpadded input (strided slices, bounds per segment) 1.5x slower. With stride 1, no
# dilation and OW = W the shift moves below replace pad + im2col and col2im + unpad.
def _pad_naive(x, ph, pw, xp):
    """xp (N, C, H + 2ph, W + 2pw): x in the middle, zeros around it. Plane by plane through
    flat views of both (x and xp contiguous): the plane zeroed in one loop, then each image row
    copied as one slice. Measured on the reference layer: 38 µs, against 118 µs indexing the
    entries of the 4-d arrays (a short inner loop over a 4-d index costs more than its copy)."""
    n_batch, c_in, h, w = x.shape
    plane = xp.shape[2] * xp.shape[3]
    wp = xp.shape[3]
    src = x.reshape(-1)
    dst = xp.reshape(-1)
    for p in range(n_batch * c_in):
        d = dst[p * plane:(p + 1) * plane]
        for k in range(plane):
            d[k] = 0
        for ih in range(h):
            s0 = (p * h + ih) * w
            d0 = (ih + ph) * wp + pw
            row = d[d0:d0 + w]
            srow = src[s0:s0 + w]
            for iw in range(w):
                row[iw] = srow[iw]
    return xp


def _im2col_naive(xp, kh, kw, sh, sw, dh, dw, oh_size, ow_size, cols):
    """cols[(c, i, j), (n, oh, ow)] = xp[n, c, oh·sh + i·dh, ow·sw + j·dw]; xp the padded input,
    cols (C·KH·KW, N·OH·OW), overwritten. Sample by sample, channel by channel: the channel's
    padded plane stays in L1 while its KH·KW rows are written, and stride 1 without dilation
    has its own loops (no multiplies in the row index). Entries are indexed directly, no slice
    per image row (a slice costs more than a 7- or 14-wide row's copy). Measured on the
    reference layer: 0.27 ms, against 0.38 ms with two slices per image row, 0.77 ms row by row
    of cols and 0.19 ms for a plain copy of cols."""
    n_batch, c_in = xp.shape[0], xp.shape[1]
    length = oh_size * ow_size
    unit = sh == 1 and sw == 1 and dh == 1 and dw == 1
    for n in prange(n_batch):
        base = n * length
        for c in range(c_in):
            plane = xp[n, c]
            for i in range(kh):
                for j in range(kw):
                    r = (c * kh + i) * kw + j
                    if unit:
                        for oh in range(oh_size):
                            d0 = base + oh * ow_size
                            for q in range(ow_size):
                                cols[r, d0 + q] = plane[oh + i, j + q]
                    else:
                        for oh in range(oh_size):
                            d0 = base + oh * ow_size
                            ih = oh * sh + i * dh
                            for q in range(ow_size):
                                cols[r, d0 + q] = plane[ih, j * dw + q * sw]
    return cols


def _col2im_naive(dcols, kh, kw, sh, sw, dh, dw, oh_size, ow_size, dxp):
    """Adjoint of im2col into the padded layout: dxp[n, c, ih, iw] = Σ over (i, j), row-major,
    of the columns that read (ih, iw) (the NumPy twin's order of strided adds); dxp
    (N, C, Hp, Wp), overwritten. Plane by plane, entries indexed directly (as im2col); stride 1
    without dilation has its own loops (0.27 ms on the reference layer, against 0.39 ms with a
    slice per image row and 0.74 ms row by row of the columns)."""
    n_batch, c_in = dxp.shape[0], dxp.shape[1]
    length = oh_size * ow_size
    unit = sh == 1 and sw == 1 and dh == 1 and dw == 1
    for c in prange(c_in):
        for n in range(n_batch):
            base = n * length
            d = dxp[n, c]
            for ih in range(d.shape[0]):
                for iw in range(d.shape[1]):
                    d[ih, iw] = 0
            for i in range(kh):
                for j in range(kw):
                    r = (c * kh + i) * kw + j
                    if unit:
                        for oh in range(oh_size):
                            s0 = base + oh * ow_size
                            for q in range(ow_size):
                                d[oh + i, j + q] += dcols[r, s0 + q]
                    else:
                        for oh in range(oh_size):
                            s0 = base + oh * ow_size
                            ih = oh * sh + i * dh
                            for q in range(ow_size):
                                d[ih, j * dw + q * sw] += dcols[r, s0 + q]
    return dxp


def _unpad_naive(xp, ph, pw, x):
    """x (N, C, H, W) = the middle of xp (N, C, H + 2ph, W + 2pw); both contiguous, copied
    image row by image row as slices of flat views (as :func:`_pad_naive`: 31 µs on the
    reference layer, against 96 µs indexing entries)."""
    n_batch, c_in, h, w = x.shape
    plane = xp.shape[2] * xp.shape[3]
    wp = xp.shape[3]
    src = xp.reshape(-1)
    dst = x.reshape(-1)
    for p in range(n_batch * c_in):
        for ih in range(h):
            s0 = p * plane + (ih + ph) * wp + pw
            d0 = (p * h + ih) * w
            row = dst[d0:d0 + w]
            srow = src[s0:s0 + w]
            for iw in range(w):
                row[iw] = srow[iw]
    return x


def _from_channel_major_naive(y2, bias, has_bias, relu, zero, out):
    """out[n, o, k] = y2[o, n·L + k] (+ bias[o]), then with ``relu`` max(·, 0) as np.maximum;
    y2 (O, N·L), out (N, O, L); ``zero``: 0 in out's dtype. Without a bias the loop adds −0.0,
    which leaves every value's bits as they are. The ReLU keeps v unless v <= 0 (one unordered
    comparison: NaN is kept, −0.0 and +0.0 become +0.0, as np.maximum(v, 0))."""
    n_batch, c_out, length = out.shape
    for n in prange(n_batch):
        for o in range(c_out):
            src = y2[o, n * length:(n + 1) * length]
            dst = out[n, o]
            b = bias[o] if has_bias else -zero
            if relu:
                for k in range(length):
                    v = src[k] + b
                    dst[k] = zero if v <= zero else v
            else:
                for k in range(length):
                    dst[k] = src[k] + b
    return out


def _to_channel_major_naive(g, out):
    """out[o, n·L + k] = g[n, o, k]; g (N, O, L), out (O, N·L)."""
    n_batch, c_out, length = g.shape
    for o in prange(c_out):
        for n in range(n_batch):
            src = g[n, o]
            dst = out[o, n * length:(n + 1) * length]
            for k in range(length):
                dst[k] = src[k]
    return out


# -- the shift moves (loop twins): stride 1, no dilation, an output row as wide as an input row --
# Then OW = W (2·pw = KW − 1, "same" width), and the columns of kernel offset (i, j) for one
# sample and channel are that sample's input plane, flattened, read at ONE shift
# s = (i − ph)·W + (j − pw): output entry k = oh·W + q reads plane entry k + s. So im2col is one
# long copy per (sample, channel, offset) straight from the unpadded input (no padded copy, no
# short rows), and col2im one long add into the unpadded dx. The padding shows up twice: entries
# whose k + s falls outside the plane (rows above or below it) are not in the copy's range, and
# entries whose column q + j − pw falls outside [0, W) would wrap into the neighbouring row; those
# are picked out by ``valid[j, k]`` (uint8, 1 where the column is inside), a select in the loop.
# Indices in the long loops are unsigned (np.uint64): with a signed index Numba keeps a wraparound
# branch per entry and LLVM does not vectorise (measured 1.1 ms instead of 0.17 ms for the
# reference layer's columns). The select keeps every store unconditional: LLVM turns "store only
# where valid" into a masked store, slow on this CPU (col2im 0.63 ms against 0.17 ms).
# Measured on the reference layer (N=32, 16 ch, 16x16, 3x3, pad 1): im2col 0.17 ms against
# 0.31 ms for pad + im2col; col2im 0.17 ms against 0.30 ms for col2im + unpad. The bytes are the
# padded moves' (test_kernels: the shift moves against pad + im2col and col2im + unpad).
def _im2col_shift_naive(x, kh, kw, ph, pw, length, valid, zero, cols):
    """cols[(c, i, j), n·L + k] = x[n, c] (flattened) at k + s, s = (i − ph)·W + (j − pw), and
    ``zero`` where that entry lies in the padding (the shift comment above); x (N, C, H, W)
    contiguous, ``length`` L = OH·W, cols (C·KH·KW, N·L) overwritten; ``valid`` (KW, L)
    uint8."""
    n_batch, c_in, h, w = x.shape
    hw = h * w
    total = cols.shape[1]
    xf = x.reshape(-1)
    cf = cols.reshape(-1)
    for n in prange(n_batch):
        for c in range(c_in):
            src0 = (n * c_in + c) * hw
            for i in range(kh):
                for j in range(kw):
                    dst0 = ((c * kh + i) * kw + j) * total + n * length
                    s = (i - ph) * w + (j - pw)
                    lo = min(max(0, -s), length)  # first k inside the plane, ...
                    hi = max(min(length, hw - s), lo)  # ... and one past the last
                    d = np.uint64(dst0)
                    for k in range(np.uint64(lo)):
                        cf[d + k] = zero
                    if hi > lo:
                        d = np.uint64(dst0 + lo)
                        src = np.uint64(src0 + lo + s)
                        m = np.uint64(lo)
                        vj = valid[j]
                        for k in range(np.uint64(hi - lo)):
                            v = xf[src + k]
                            cf[d + k] = v if vj[m + k] else zero
                    d = np.uint64(dst0 + hi)
                    for k in range(np.uint64(length - hi)):
                        cf[d + k] = zero
    return cols


def _col2im_shift_naive(dcols, kh, kw, ph, pw, length, valid, zero, dx):
    """Adjoint of :func:`_im2col_shift_naive`: dx[n, c] (flattened) at k + s accumulates
    dcols[(c, i, j), n·L + k] for every offset (i, j), row-major, whose entry k is not padding;
    dx (N, C, H, W) contiguous, overwritten. The padded col2im's sums exactly: each entry of dx
    starts at +0 and takes its terms in the same order; where the padded version adds nothing
    this adds ``zero`` (+0), which leaves every sum as it is (a sum started at +0 is never −0
    when rounding to nearest, and a NaN plus 0 is that NaN; with the CPU's default floating
    point mode: flushing subnormals to zero could make a −0). ``length`` L = OH·W."""
    n_batch, c_in, h, w = dx.shape
    hw = h * w
    total = dcols.shape[1]
    dxf = dx.reshape(-1)
    dcf = dcols.reshape(-1)
    for c in prange(c_in):
        for n in range(n_batch):
            plane0 = (n * c_in + c) * hw
            t = np.uint64(plane0)
            for k in range(np.uint64(hw)):
                dxf[t + k] = zero
            for i in range(kh):
                for j in range(kw):
                    s = (i - ph) * w + (j - pw)
                    lo = min(max(0, -s), length)
                    hi = max(min(length, hw - s), lo)
                    if hi > lo:
                        src = np.uint64(((c * kh + i) * kw + j) * total + n * length + lo)
                        t = np.uint64(plane0 + lo + s)
                        m = np.uint64(lo)
                        vj = valid[j]
                        for k in range(np.uint64(hi - lo)):
                            v = dcf[src + k]
                            dxf[t + k] += v if vj[m + k] else zero
    return dx


# -- the moves, NumPy twins --
def _pad_np(x, ph, pw, xp):
    xp[...] = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    return xp


def _im2col_np(xp, kh, kw, sh, sw, dh, dw, oh, ow, cols):
    """One strided view of the padded input, one copy."""
    n, c = xp.shape[:2]
    s_n, s_c, s_h, s_w = xp.strides
    view = as_strided(xp, (c, kh, kw, n, oh, ow),
                      (s_c, s_h * dh, s_w * dw, s_n, s_h * sh, s_w * sw), writeable=False)
    cols[...] = view.reshape(c * kh * kw, n * oh * ow)
    return cols


def _col2im_np(dcols, kh, kw, sh, sw, dh, dw, oh, ow, dxp):
    """KH·KW strided adds."""
    n, c = dxp.shape[:2]
    dxp[...] = 0
    dxp_t = dxp.transpose(1, 0, 2, 3)  # a view in the columns' (c, n, h, w) order
    d6 = dcols.reshape(c, kh, kw, n, oh, ow)
    for i in range(kh):
        for j in range(kw):
            dxp_t[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                  j * dw:j * dw + sw * (ow - 1) + 1:sw] += d6[:, i, j]
    return dxp


def _unpad_np(xp, ph, pw, x):
    x[...] = xp[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]]
    return x


def _from_channel_major_np(y2, bias, has_bias, relu, zero, out):
    n, o, length = out.shape
    out[...] = y2.reshape(o, n, length).transpose(1, 0, 2)
    if has_bias:
        out += bias.reshape(1, -1, 1)
    if relu:
        np.maximum(out, zero, out=out)
    return out


def _to_channel_major_np(g, out):
    n, o, length = g.shape
    out.reshape(o, n, length)[...] = g.transpose(1, 0, 2)
    return out


def _im2col_shift_np(x, kh, kw, ph, pw, length, valid, zero, cols):
    """The padded moves: np.pad, then the strided copy."""
    w = x.shape[3]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    return _im2col_np(xp, kh, kw, 1, 1, 1, 1, length // w, w, cols)


def _col2im_shift_np(dcols, kh, kw, ph, pw, length, valid, zero, dx):
    """The padded moves: strided adds into a padded scratch, then its middle."""
    n, c, h, w = dx.shape
    dxp = np.empty((n, c, h + 2 * ph, w + 2 * pw), dtype=dx.dtype)
    _col2im_np(dcols, kh, kw, 1, 1, 1, 1, length // w, w, dxp)
    return _unpad_np(dxp, ph, pw, dx)


def _move(op):
    """A data move around the GEMM: its compiled loops when Numba compiles, else NumPy."""
    return _MOVES[op]["jit" if JIT_ENABLED else "np"]


def _padded(x, padding):
    """x zero-padded (N, C, H + 2ph, W + 2pw); x itself without padding."""
    (ph, pw), (n, c, h, w) = padding, x.shape
    if not (ph or pw):
        return x
    return _move("pad")(x, ph, pw, np.empty((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype))


def _shifts(x_shape, stride, dilation, ow):
    """True when the shift moves apply: stride 1, no dilation, OW = W (the shift comment)."""
    return tuple(stride) == (1, 1) and tuple(dilation) == (1, 1) and ow == x_shape[3]


@functools.lru_cache(maxsize=64)
def _shift_valid(kw, pw, w, length):
    """valid (KW, L) uint8 of the shift moves: valid[j, k] = 1 when 0 <= k mod W + j − pw < W.
    Read-only (cached per geometry)."""
    q = np.arange(length) % w
    valid = np.stack([(q + j - pw >= 0) & (q + j - pw < w) for j in range(kw)]).astype(np.uint8)
    valid.setflags(write=False)
    return valid


def _im2col(x, kh, kw, stride, padding, dilation, oh, ow):
    """cols (C·KH·KW, N·OH·OW) of x (module comment; the shift moves when they apply)."""
    n, c = x.shape[:2]
    cols = np.empty((c * kh * kw, n * oh * ow), dtype=x.dtype)
    if _shifts(x.shape, stride, dilation, ow):
        return _move("im2col_shift")(x, kh, kw, padding[0], padding[1], oh * ow,
                                     _shift_valid(kw, padding[1], ow, oh * ow), x.dtype.type(0),
                                     cols)
    return _move("im2col")(_padded(x, padding), kh, kw, stride[0], stride[1], dilation[0],
                           dilation[1], oh, ow, cols)


def _col2im(dcols, dx, kh, kw, stride, padding, dilation, oh, ow):
    """dx (N, C, H, W) = col2im of dcols: the shift moves when they apply, else through a
    padded scratch when there is padding."""
    (ph, pw), (n, c, h, w) = padding, dx.shape
    if _shifts(dx.shape, stride, dilation, ow):
        return _move("col2im_shift")(dcols, kh, kw, ph, pw, oh * ow,
                                     _shift_valid(kw, pw, ow, oh * ow), dx.dtype.type(0), dx)
    if not (ph or pw):
        return _move("col2im")(dcols, kh, kw, stride[0], stride[1], dilation[0], dilation[1], oh,
                               ow, dx)
    dxp = np.empty((n, c, h + 2 * ph, w + 2 * pw), dtype=dx.dtype)
    _move("col2im")(dcols, kh, kw, stride[0], stride[1], dilation[0], dilation[1], oh, ow, dxp)
    return _move("unpad")(dxp, ph, pw, dx)


def _group_view(a2, groups):
    """(G·R, L) -> (G, R, L) without copying."""
    return a2.reshape(groups, a2.shape[0] // groups, a2.shape[1])


def _g_channel_major(g, groups):
    """g (N, O, OH, OW) -> (G, O/G, N·OH·OW), one copy."""
    n, o, oh, ow = g.shape
    out = np.empty((o, n * oh * ow), dtype=g.dtype)
    return _group_view(_move("to_channel_major")(g.reshape(n, o, oh * ow), out), groups)


def _forward_np(x, w, stride, padding, dilation, groups, out, bias=None, relu=False):
    """``out``: the output buffer, or None to allocate it once the columns are freed (the
    forward then holds at most two of columns, y and out at a time: MEM-6). ``relu``: the
    output rectified as it moves out of the GEMM's layout (np.maximum's values)."""
    o, cg, kh, kw = w.shape
    n = x.shape[0]
    oh, ow = conv2d_output_shape(x.shape, w.shape, stride, padding, dilation, groups)[2:]
    cols = _im2col(x, kh, kw, stride, padding, dilation, oh, ow)
    # (G, O/G, Cg·KK) @ (G, Cg·KK, N·L) -> (G, O/G, N·L), i.e. (O, N, OH, OW)
    y = np.matmul(w.reshape(groups, o // groups, cg * kh * kw), _group_view(cols, groups))
    del cols
    if out is None:
        out = np.empty((n, o, oh, ow), dtype=y.dtype)
    has_bias = bias is not None
    _move("from_channel_major")(y.reshape(o, n * oh * ow), bias if has_bias else out[0, :, 0, 0],
                                has_bias, relu, out.dtype.type(0), out.reshape(n, o, oh * ow))
    return out


class ChannelMajor:
    """A cotangent g (N, O, OH, OW) moved once into the channel-major layout (O, N·OH·OW) that
    both GEMMs of the backward read (:func:`channel_major`), so a backward that needs both
    gradients makes one copy, and its caller can drop g's other forms first (MEM-6)."""

    __slots__ = ("cm", "shape")

    def __init__(self, cm: np.ndarray, shape: tuple[int, ...]):
        self.cm, self.shape = cm, tuple(shape)


def channel_major(g: np.ndarray) -> ChannelMajor:
    """g (N, O, OH, OW) as a :class:`ChannelMajor` (one copy), for the ``np`` kernels."""
    n, o, oh, ow = g.shape
    out = np.empty((o, n * oh * ow), dtype=g.dtype)
    _move("to_channel_major")(np.ascontiguousarray(g).reshape(n, o, oh * ow), out)
    return ChannelMajor(out, g.shape)


def _g_cm(g, groups):
    """(G, O/G, N·L) of g, an array (one copy) or a ChannelMajor (no copy); and g's shape."""
    if isinstance(g, ChannelMajor):
        return _group_view(g.cm, groups), g.shape
    return _g_channel_major(g, groups), g.shape


def _grad_input_np(g, w, stride, padding, dilation, groups, dx):
    gcm, (n, o, oh, ow) = _g_cm(g, groups)
    _, cg, kh, kw = w.shape
    wt = w.reshape(groups, o // groups, cg * kh * kw).transpose(0, 2, 1)
    dcols = np.matmul(wt, gcm)  # (G, Cg·KK, N·L)
    del gcm
    return _col2im(dcols.reshape(groups * cg * kh * kw, -1), dx, kh, kw, stride, padding, dilation,
                   oh, ow)


def _grad_weight_np(x, g, stride, padding, dilation, groups, dw):
    n, o, oh, ow = g.shape
    _, cg, kh, kw = dw.shape
    cols = _im2col(x, kh, kw, stride, padding, dilation, oh, ow)
    # (G, O/G, N·L) @ (G, N·L, Cg·KK): the transpose is a stride change BLAS takes for free
    dw[...] = np.matmul(_g_cm(g, groups)[0],
                        _group_view(cols, groups).transpose(0, 2, 1)).reshape(dw.shape)
    return dw


# ---- dispatch (refimpl.kernels.pick) -----------------------------------------------------------
# Every twin takes (a, b, stride, padding, dilation, groups, out) and fills ``out``.
_MOVES = {
    "pad": {"naive": _pad_naive, "np": _pad_np, "jit": njit(_pad_naive)},
    "unpad": {"naive": _unpad_naive, "np": _unpad_np, "jit": njit(_unpad_naive)},
    "im2col": {"naive": _im2col_naive, "np": _im2col_np,
               "jit": njit(_im2col_naive)},
    "col2im": {"naive": _col2im_naive, "np": _col2im_np,
               "jit": njit(_col2im_naive)},
    "im2col_shift": {"naive": _im2col_shift_naive, "np": _im2col_shift_np,
                     "jit": njit(_im2col_shift_naive)},
    "col2im_shift": {"naive": _col2im_shift_naive, "np": _col2im_shift_np,
                     "jit": njit(_col2im_shift_naive)},
    "from_channel_major": {"naive": _from_channel_major_naive, "np": _from_channel_major_np,
                           "jit": njit(_from_channel_major_naive)},
    "to_channel_major": {"naive": _to_channel_major_naive, "np": _to_channel_major_np,
                         "jit": njit(_to_channel_major_naive)},
}

_KERNELS = {
    "forward": {"naive": _forward_naive, "np": _forward_np, "jit": _forward_jit},
    "grad_input": {"naive": _grad_input_naive, "np": _grad_input_np, "jit": _grad_input_jit},
    "grad_weight": {"naive": _grad_weight_naive, "np": _grad_weight_np,
                    "jit": _grad_weight_jit},
}


def _run(op, impl, a, b, stride, padding, dilation, groups, out):
    f = pick("conv2d", _KERNELS, op, DEFAULT_IMPL if impl is None else impl)
    return f(np.ascontiguousarray(a), np.ascontiguousarray(b), tuple(stride), tuple(padding),
             tuple(dilation), int(groups), out)


def conv2d_forward(x, w, stride, padding, dilation, groups, impl=None, bias=None, relu=False):
    """y = conv2d(x, w) (+ bias (O,), inside the layer), with ``relu`` max(y, 0) as np.maximum;
    returns a new (N, O, OH, OW) array."""
    if (DEFAULT_IMPL if impl is None else impl) == "np":  # bias and ReLU as y moves out
        return _forward_np(np.ascontiguousarray(x), np.ascontiguousarray(w), tuple(stride),
                           tuple(padding), tuple(dilation), int(groups), None, bias, relu)
    out_shape = conv2d_output_shape(x.shape, w.shape, stride, padding, dilation, groups)
    out = np.empty(out_shape, dtype=x.dtype)
    y = _run("forward", impl, x, w, stride, padding, dilation, groups, out)
    if bias is not None:
        y += bias.reshape(1, -1, 1, 1)
    if relu:
        np.maximum(y, y.dtype.type(0), out=y)
    return y


def _cm_ok(g, impl):
    """True when g is a ChannelMajor (then the ``np`` kernels run; other twins take arrays)."""
    if not isinstance(g, ChannelMajor):
        return False
    if (DEFAULT_IMPL if impl is None else impl) != "np":
        raise ValueError(f"conv2d: a channel-major cotangent needs impl 'np', received {impl!r}")
    return True


def conv2d_grad_input(g, w, x_shape, stride, padding, dilation, groups, impl=None):
    """dx = ∂<g, conv2d(x, w)>/∂x; returns a new array of ``x_shape``. ``g``: an array
    (N, O, OH, OW) or its :class:`ChannelMajor` (``np`` kernels)."""
    if _cm_ok(g, impl):
        return _grad_input_np(g, np.ascontiguousarray(w), tuple(stride), tuple(padding),
                              tuple(dilation), int(groups), np.empty(x_shape, dtype=g.cm.dtype))
    return _run("grad_input", impl, g, w, stride, padding, dilation, groups,
                np.empty(x_shape, dtype=g.dtype))


def conv2d_grad_weight(x, g, w_shape, stride, padding, dilation, groups, impl=None):
    """dw = ∂<g, conv2d(x, w)>/∂w; returns a new array of ``w_shape``. ``g``: an array
    (N, O, OH, OW) or its :class:`ChannelMajor` (``np`` kernels)."""
    if _cm_ok(g, impl):
        return _grad_weight_np(np.ascontiguousarray(x), g, tuple(stride), tuple(padding),
                               tuple(dilation), int(groups), np.empty(w_shape, dtype=x.dtype))
    return _run("grad_weight", impl, x, g, stride, padding, dilation, groups,
                np.empty(w_shape, dtype=x.dtype))
