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

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..core._jit import njit, prange
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
def _pad(x, padding):
    ph, pw = padding
    if ph or pw:
        return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    return x


def _im2col(x, kh, kw, stride, padding, dilation, oh, ow):
    """cols (C·KH·KW, N·OH·OW): cols[(c, i, j), (n, oh, ow)] = x_pad[n, c, oh·sh + i·dh, ...].
    One strided view, one copy."""
    xp = _pad(x, padding)
    n, c = xp.shape[:2]
    s_n, s_c, s_h, s_w = xp.strides
    view = as_strided(
        xp, (c, kh, kw, n, oh, ow),
        (s_c, s_h * dilation[0], s_w * dilation[1], s_n, s_h * stride[0], s_w * stride[1]),
        writeable=False,
    )
    return view.reshape(c * kh * kw, n * oh * ow)


def _col2im(dcols, dx, kh, kw, stride, padding, dilation, oh, ow):
    """Adjoint of :func:`_im2col`: scatter-add columns back into ``dx`` (N, C, H, W), as
    KH·KW strided adds (into a padded scratch when there is padding)."""
    n, c, h, w = dx.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    if ph or pw:
        dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=dcols.dtype)
    else:
        dxp = dx
        dxp[...] = 0
    dxp_t = dxp.transpose(1, 0, 2, 3)  # a view in the columns' (c, n, h, w) order
    d6 = dcols.reshape(c, kh, kw, n, oh, ow)
    for i in range(kh):
        for j in range(kw):
            dxp_t[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                  j * dw:j * dw + sw * (ow - 1) + 1:sw] += d6[:, i, j]
    if ph or pw:
        dx[...] = dxp[:, :, ph:ph + h, pw:pw + w]
    return dx


def _group_view(a2, groups):
    """(G·R, L) -> (G, R, L) without copying."""
    return a2.reshape(groups, a2.shape[0] // groups, a2.shape[1])


def _forward_np(x, w, stride, padding, dilation, groups, out):
    n, o, oh, ow = out.shape
    _, cg, kh, kw = w.shape
    cols = _im2col(x, kh, kw, stride, padding, dilation, oh, ow)
    # (G, O/G, Cg·KK) @ (G, Cg·KK, N·L) -> (G, O/G, N·L), i.e. (O, N, OH, OW)
    y = np.matmul(w.reshape(groups, o // groups, cg * kh * kw), _group_view(cols, groups))
    out[...] = y.reshape(o, n, oh, ow).transpose(1, 0, 2, 3)
    return out


def _g_channel_major(g, groups):
    """g (N, O, OH, OW) -> (G, O/G, N·OH·OW), one copy."""
    n, o, oh, ow = g.shape
    return _group_view(np.ascontiguousarray(g.transpose(1, 0, 2, 3)).reshape(o, -1), groups)


def _grad_input_np(g, w, stride, padding, dilation, groups, dx):
    n, o, oh, ow = g.shape
    _, cg, kh, kw = w.shape
    wt = w.reshape(groups, o // groups, cg * kh * kw).transpose(0, 2, 1)
    dcols = np.matmul(wt, _g_channel_major(g, groups))  # (G, Cg·KK, N·L)
    return _col2im(dcols.reshape(groups * cg * kh * kw, -1), dx, kh, kw, stride, padding,
                   dilation, oh, ow)


def _grad_weight_np(x, g, stride, padding, dilation, groups, dw):
    n, o, oh, ow = g.shape
    _, cg, kh, kw = dw.shape
    cols = _im2col(x, kh, kw, stride, padding, dilation, oh, ow)
    # (G, O/G, N·L) @ (G, N·L, Cg·KK): the transpose is a stride change BLAS takes for free
    dw[...] = np.matmul(_g_channel_major(g, groups),
                        _group_view(cols, groups).transpose(0, 2, 1)).reshape(dw.shape)
    return dw


# ---- dispatch (refimpl.kernels.pick) -----------------------------------------------------------
# Every twin takes (a, b, stride, padding, dilation, groups, out) and fills ``out``.
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


def conv2d_forward(x, w, stride, padding, dilation, groups, impl=None, bias=None):
    """y = conv2d(x, w) (+ bias (O,), inside the layer); returns a new (N, O, OH, OW) array."""
    out_shape = conv2d_output_shape(x.shape, w.shape, stride, padding, dilation, groups)
    y = _run("forward", impl, x, w, stride, padding, dilation, groups,
             np.empty(out_shape, dtype=x.dtype))
    if bias is not None:
        y += bias.reshape(1, -1, 1, 1)
    return y


def conv2d_grad_input(g, w, x_shape, stride, padding, dilation, groups, impl=None):
    """dx = ∂<g, conv2d(x, w)>/∂x; returns a new array of ``x_shape``."""
    return _run("grad_input", impl, g, w, stride, padding, dilation, groups,
                np.empty(x_shape, dtype=g.dtype))


def conv2d_grad_weight(x, g, w_shape, stride, padding, dilation, groups, impl=None):
    """dw = ∂<g, conv2d(x, w)>/∂w; returns a new array of ``w_shape``."""
    return _run("grad_weight", impl, x, g, stride, padding, dilation, groups,
                np.empty(w_shape, dtype=x.dtype))
