"""Masked convolution kernels: forward, input gradient and weight gradient that visit only the
active weights of a mask (SPEC §2 MASK-1, MASK-3; issue "sparse training core").

Each kernel is one plain Python loop function (C-shaped: explicit buffers, explicit bounds), run
through :func:`refimpl.core._jit.njit`; the undecorated function is its interpreted twin
(``_naive``), and the dense kernels of :mod:`refimpl.kernels.conv` applied to ``W ⊙ M`` are
the oracle.

Compressed weight layout (built by :func:`compress`), a CSR over output channels:
    ptr  int64 (O + 1,)   active entries of output channel o are ptr[o] .. ptr[o + 1] - 1
    cin  int64 (nnz,)     input channel within the group
    ki   int64 (nnz,)     kernel row
    kj   int64 (nnz,)     kernel column
    val  (nnz,)           the weight values, input dtype
Entries are in C order of (o, c, i, j), so results are deterministic.

Parallelism (STYLE 4): forward and input gradient split the batch (each n writes out[n] / dx[n]);
the weight gradient splits output channels (each o writes its own entries).
"""

from __future__ import annotations

import numpy as np

from ..core._jit import njit, prange


def compress(w: np.ndarray, mask: np.ndarray):
    """CSR of the active weights of ``w`` (O, C/g, KH, KW) under ``mask``."""
    o = w.shape[0]
    m = np.asarray(mask, dtype=bool)
    oo, cc, ii, jj = np.nonzero(m)
    ptr = np.zeros(o + 1, dtype=np.int64)
    np.cumsum(np.bincount(oo, minlength=o), out=ptr[1:])
    return (ptr, cc.astype(np.int64), ii.astype(np.int64), jj.astype(np.int64),
            np.ascontiguousarray(w[m]))


def _range(k, d, pad, s, size, out_size):
    """Outputs whose input coordinate o*s - pad + k*d lies inside [0, size)."""
    t = pad - k * d
    lo = -((-t) // s)  # ceil(t / s)
    hi = (size - 1 + t) // s + 1
    if lo < 0:
        lo = 0
    if hi > out_size:
        hi = out_size
    return lo, hi


def _forward_loops(x, ptr, cin, ki, kj, val, stride, padding, dilation, groups, out):
    n_batch, c_in, h, w = x.shape
    _, c_out, oh_size, ow_size = out.shape
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    og = c_out // groups
    cg = c_in // groups
    for n in prange(n_batch):
        for o in range(c_out):
            c0 = (o // og) * cg
            for oh in range(oh_size):
                for ow in range(ow_size):
                    out[n, o, oh, ow] = 0
            for e in range(ptr[o], ptr[o + 1]):
                c = c0 + cin[e]
                v = val[e]
                oh_lo, oh_hi = _range_jit(ki[e], dh, ph, sh, h, oh_size)
                ow_lo, ow_hi = _range_jit(kj[e], dw, pw, sw, w, ow_size)
                for oh in range(oh_lo, oh_hi):
                    ih = oh * sh - ph + ki[e] * dh
                    for ow in range(ow_lo, ow_hi):
                        out[n, o, oh, ow] += v * x[n, c, ih, ow * sw - pw + kj[e] * dw]
    return out


def _grad_input_loops(g, ptr, cin, ki, kj, val, stride, padding, dilation, groups, dx):
    n_batch, c_in, h, w = dx.shape
    _, c_out, oh_size, ow_size = g.shape
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    og = c_out // groups
    cg = c_in // groups
    for n in prange(n_batch):
        for c in range(c_in):
            for ih in range(h):
                for iw in range(w):
                    dx[n, c, ih, iw] = 0
        for o in range(c_out):
            c0 = (o // og) * cg
            for e in range(ptr[o], ptr[o + 1]):
                c = c0 + cin[e]
                v = val[e]
                oh_lo, oh_hi = _range_jit(ki[e], dh, ph, sh, h, oh_size)
                ow_lo, ow_hi = _range_jit(kj[e], dw, pw, sw, w, ow_size)
                for oh in range(oh_lo, oh_hi):
                    ih = oh * sh - ph + ki[e] * dh
                    for ow in range(ow_lo, ow_hi):
                        dx[n, c, ih, ow * sw - pw + kj[e] * dw] += v * g[n, o, oh, ow]
    return dx


def _grad_weight_loops(x, g, ptr, cin, ki, kj, stride, padding, dilation, groups, dval):
    n_batch, c_in, h, w = x.shape
    _, c_out, oh_size, ow_size = g.shape
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    og = c_out // groups
    cg = c_in // groups
    for o in prange(c_out):
        c0 = (o // og) * cg
        for e in range(ptr[o], ptr[o + 1]):
            c = c0 + cin[e]
            oh_lo, oh_hi = _range_jit(ki[e], dh, ph, sh, h, oh_size)
            ow_lo, ow_hi = _range_jit(kj[e], dw, pw, sw, w, ow_size)
            dval[e] = 0
            acc = dval[e]  # a zero of the buffer's dtype: accumulate like the dense kernels
            for n in range(n_batch):
                for oh in range(oh_lo, oh_hi):
                    ih = oh * sh - ph + ki[e] * dh
                    for ow in range(ow_lo, ow_hi):
                        acc += g[n, o, oh, ow] * x[n, c, ih, ow * sw - pw + kj[e] * dw]
            dval[e] = acc
    return dval



# ---- stride-1 fast path: "wide rows" -----------------------------------------------------------
# With stride 1, output (oh, ow) reads padded input (oh + i*d, ow + j*d). Give the output rows the
# padded input's width Wp (the extra Wp - OW columns are scratch): then flat output position k
# reads flat padded-input position k + (i*d*Wp + j*d), so each active weight is one contiguous
# loop over L = (OH - 1)*Wp + OW positions that LLVM vectorises. Reductions (the weight gradient)
# accumulate elementwise into a wide buffer and sum it once at the end, so no float reduction has
# to be reordered (no fastmath). Inner loops index a slice taken first (``xs[k]``), never
# ``row[k + off]``: with a possibly negative index Numba keeps a wraparound branch that stops
# LLVM from vectorising (measured 5x slower).

def _wide_loops_forward(xp, ptr, cin, ki, kj, val, dh, dw, wp, groups, length, out):
    n_batch = xp.shape[0]
    c_in = xp.shape[1]
    c_out = out.shape[1]
    og = c_out // groups
    cg = c_in // groups
    for n in prange(n_batch):
        for o in range(c_out):
            orow = out[n, o]
            for k in range(orow.shape[0]):
                orow[k] = 0
            c0 = (o // og) * cg
            for e in range(ptr[o], ptr[o + 1]):
                off = ki[e] * dh * wp + kj[e] * dw
                xs = xp[n, c0 + cin[e], off:off + length]
                v = val[e]
                for k in range(length):
                    orow[k] += v * xs[k]
    return out


def _wide_loops_grad_input(gw, ptr, cin, ki, kj, val, dh, dw, wp, groups, length, dxp):
    """gw (N, O, OH*Wp) wide cotangent with zero scratch columns; dxp (N, C, Hp*Wp) padded
    input gradient, overwritten."""
    n_batch = gw.shape[0]
    c_out = gw.shape[1]
    c_in = dxp.shape[1]
    og = c_out // groups
    cg = c_in // groups
    for n in prange(n_batch):
        for c in range(c_in):
            drow = dxp[n, c]
            for k in range(drow.shape[0]):
                drow[k] = 0
        for o in range(c_out):
            grow = gw[n, o]
            c0 = (o // og) * cg
            for e in range(ptr[o], ptr[o + 1]):
                off = ki[e] * dh * wp + kj[e] * dw
                ds = dxp[n, c0 + cin[e], off:off + length]
                v = val[e]
                for k in range(length):
                    ds[k] += v * grow[k]
    return dxp


def _wide_loops_grad_weight(xp, gw, ptr, cin, ki, kj, dh, dw, wp, groups, length, acc, dval):
    """dval[e] = Σ_n Σ_k gw[n, o, k] xp[n, c, k + off]; acc (O, length) is scratch: one wide
    accumulator row per output channel, so the parallel loop over o writes disjoint memory."""
    n_batch = xp.shape[0]
    c_in = xp.shape[1]
    c_out = gw.shape[1]
    og = c_out // groups
    cg = c_in // groups
    for o in prange(c_out):
        a = acc[o]
        c0 = (o // og) * cg
        for e in range(ptr[o], ptr[o + 1]):
            off = ki[e] * dh * wp + kj[e] * dw
            c = c0 + cin[e]
            for k in range(length):
                a[k] = 0
            for n in range(n_batch):
                grow = gw[n, o]
                xs = xp[n, c, off:off + length]
                for k in range(length):
                    a[k] += grow[k] * xs[k]
            dval[e] = 0
            total = dval[e]
            for k in range(length):
                total += a[k]
            dval[e] = total
    return dval


_range_jit = njit(_range)
_forward_jit = njit(_forward_loops, parallel=True)
_grad_input_jit = njit(_grad_input_loops, parallel=True)
_grad_weight_jit = njit(_grad_weight_loops, parallel=True)
_wide_forward_jit = njit(_wide_loops_forward, parallel=True)
_wide_grad_input_jit = njit(_wide_loops_grad_input, parallel=True)
_wide_grad_weight_jit = njit(_wide_loops_grad_weight, parallel=True)

IMPLS = ("naive", "jit")


def _check_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"masked conv2d: unknown impl {impl!r}; valid: {', '.join(IMPLS)}")


def _geometry(x_shape, padding, out_shape):
    n, c, h, w = x_shape
    ph, pw = padding
    hp, wp = h + 2 * ph, w + 2 * pw
    oh, ow = out_shape[2], out_shape[3]
    return hp, wp, oh, ow, (oh - 1) * wp + ow


def _pad_flat(x, padding):
    ph, pw = padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else np.ascontiguousarray(x)
    return xp.reshape(x.shape[0], x.shape[1], -1)


def _wide(stride, impl) -> bool:
    return impl == "jit" and tuple(stride) == (1, 1)


def masked_conv2d_forward(x, w, mask, stride, padding, dilation, groups, out_shape, impl="jit"):
    """y = conv2d(x, w ⊙ mask) visiting only active weights. Returns a new (N, O, OH, OW)."""
    _check_impl(impl)
    ptr, cin, ki, kj, val = compress(w, mask)
    if _wide(stride, impl):
        hp, wp, oh, ow, length = _geometry(x.shape, padding, out_shape)
        outw = np.empty((x.shape[0], out_shape[1], oh * wp), dtype=x.dtype)
        _wide_forward_jit(_pad_flat(x, padding), ptr, cin, ki, kj, val, dilation[0],
                          dilation[1], wp, int(groups), length, outw)
        return np.ascontiguousarray(outw.reshape(x.shape[0], out_shape[1], oh, wp)[..., :ow])
    out = np.empty(out_shape, dtype=x.dtype)
    f = _forward_jit if impl == "jit" else _forward_loops
    return f(np.ascontiguousarray(x), ptr, cin, ki, kj, val, tuple(stride), tuple(padding),
             tuple(dilation), int(groups), out)


def masked_conv2d_grad_input(g, w, mask, x_shape, stride, padding, dilation, groups,
                             impl="jit"):
    """dx of y = conv2d(x, w ⊙ mask), visiting only active weights. Returns a new (N, C, H, W)."""
    _check_impl(impl)
    ptr, cin, ki, kj, val = compress(w, mask)
    if _wide(stride, impl):
        n, c, h, wd = x_shape
        hp, wp, oh, ow, length = _geometry(x_shape, padding, g.shape)
        gw = np.zeros((n, g.shape[1], oh, wp), dtype=g.dtype)
        gw[..., :ow] = g
        dxp = np.empty((n, c, hp * wp), dtype=g.dtype)
        _wide_grad_input_jit(gw.reshape(n, g.shape[1], -1), ptr, cin, ki, kj, val, dilation[0],
                             dilation[1], wp, int(groups), length, dxp)
        ph, pw = padding
        return np.ascontiguousarray(dxp.reshape(n, c, hp, wp)[:, :, ph:ph + h, pw:pw + wd])
    dx = np.empty(x_shape, dtype=g.dtype)
    f = _grad_input_jit if impl == "jit" else _grad_input_loops
    return f(np.ascontiguousarray(g), ptr, cin, ki, kj, val, tuple(stride), tuple(padding),
             tuple(dilation), int(groups), dx)


def masked_conv2d_grad_weight(x, g, mask, stride, padding, dilation, groups, impl="jit"):
    """dw of y = conv2d(x, w ⊙ mask) at the active positions; exactly 0 elsewhere (MASK-3)."""
    _check_impl(impl)
    m = np.asarray(mask, dtype=bool)
    ptr, cin, ki, kj, _ = compress(np.zeros(m.shape, dtype=x.dtype), m)
    dval = np.empty(cin.shape[0], dtype=x.dtype)
    if _wide(stride, impl):
        n = x.shape[0]
        hp, wp, oh, ow, length = _geometry(x.shape, padding, g.shape)
        gw = np.zeros((n, g.shape[1], oh, wp), dtype=g.dtype)
        gw[..., :ow] = g
        acc = np.empty((g.shape[1], length), dtype=x.dtype)
        _wide_grad_weight_jit(_pad_flat(x, padding), gw.reshape(n, g.shape[1], -1), ptr, cin,
                              ki, kj, dilation[0], dilation[1], wp, int(groups), length, acc,
                              dval)
    else:
        f = _grad_weight_jit if impl == "jit" else _grad_weight_loops
        f(np.ascontiguousarray(x), np.ascontiguousarray(g), ptr, cin, ki, kj, tuple(stride),
          tuple(padding), tuple(dilation), int(groups), dval)
    dw = np.zeros(m.shape, dtype=x.dtype)
    dw[m] = dval
    return dw
