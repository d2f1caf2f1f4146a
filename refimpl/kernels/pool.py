"""Max-pooling kernels (SPEC CONV-5, SAP-4): plain loop functions, C-shaped (explicit output
buffers, explicit bounds), compiled by :func:`refimpl.core._jit.njit` and parallel over the batch
(each ``prange`` iteration writes its own sample); the vectorised NumPy twins ``_np`` compute
the same function (the default without Numba) and are their oracle in the tests.

Forward: ``y[n, c, oh, ow]`` = max of ``x`` over the window, positions in the padding are -inf
(never selected); ``arg`` = the window position (row-major, ``i·kw + j``) of the FIRST maximum,
uint8. A NaN never compares greater, so it is never selected (as in the NumPy twin).
Backward: ``dx[n, c, ih, iw] += g[n, c, oh, ow]`` at each output's argmax position (overlapping
windows accumulate); an argmax in the padding (a window entirely of padding) is dropped.
"""

from __future__ import annotations

import numpy as np

from ..core._jit import njit, prange
from . import pick

__all__ = ["max_pool2d_forward", "max_pool2d_backward"]


def _forward_naive(x, kh, kw, sh, sw, ph, pw, dh, dw, y, arg):
    n_batch, channels, h, w = x.shape
    oh_size, ow_size = y.shape[2], y.shape[3]
    for n in prange(n_batch):
        for c in range(channels):
            for oh in range(oh_size):
                for ow in range(ow_size):
                    y[n, c, oh, ow] = -np.inf
                    best = y[n, c, oh, ow]
                    a = 0
                    for i in range(kh):
                        ih = oh * sh - ph + i * dh
                        if ih < 0 or ih >= h:
                            continue
                        for j in range(kw):
                            iw = ow * sw - pw + j * dw
                            if iw < 0 or iw >= w:
                                continue
                            v = x[n, c, ih, iw]
                            if v > best:  # strict: a later equal value never wins (CONV-5)
                                best = v
                                a = i * kw + j
                    y[n, c, oh, ow] = best
                    arg[n, c, oh, ow] = a
    return y, arg


def _backward_naive(g, arg, kh, kw, sh, sw, ph, pw, dh, dw, dx):
    n_batch, channels, h, w = dx.shape
    oh_size, ow_size = g.shape[2], g.shape[3]
    for n in prange(n_batch):
        for c in range(channels):
            for ih in range(h):
                for iw in range(w):
                    dx[n, c, ih, iw] = 0
            for oh in range(oh_size):
                for ow in range(ow_size):
                    a = int(arg[n, c, oh, ow])  # uint8 arithmetic would wrap
                    ih = oh * sh - ph + (a // kw) * dh
                    iw = ow * sw - pw + (a % kw) * dw
                    if ih >= 0 and ih < h and iw >= 0 and iw < w:
                        dx[n, c, ih, iw] += g[n, c, oh, ow]
    return dx


# ---- forward of the 2x2 window, stride 2, no padding (every max-pool of the model zoo) ---------
# The same function as the general loops, written out for this window: the four reads and the
# compare-and-selects are literal, so LLVM vectorises the loop over a row with no branch (the
# general loops branch on every comparison, which mispredicts on ReLU outputs full of ties:
# measured ~10x slower). ``ninf`` is -inf in x's dtype (a float64 -inf would make the running
# maximum float64).
def _forward_2x2_naive(x, ninf, y, arg):
    n_batch, channels = x.shape[0], x.shape[1]
    oh_size, ow_size = y.shape[2], y.shape[3]
    for n in prange(n_batch):
        for c in range(channels):
            for oh in range(oh_size):
                r0 = x[n, c, 2 * oh]
                r1 = x[n, c, 2 * oh + 1]
                yr = y[n, c, oh]
                ar = arg[n, c, oh]
                for ow in range(ow_size):
                    v = r0[2 * ow]  # the scan of the general loops, from -inf, strict >
                    gt = v > ninf
                    best = v if gt else ninf
                    v = r0[2 * ow + 1]
                    gt = v > best
                    best = v if gt else best
                    a = np.uint8(1) if gt else np.uint8(0)
                    v = r1[2 * ow]
                    gt = v > best
                    best = v if gt else best
                    a = np.uint8(2) if gt else a
                    v = r1[2 * ow + 1]
                    gt = v > best
                    best = v if gt else best
                    a = np.uint8(3) if gt else a
                    yr[ow] = best
                    ar[ow] = a
    return y, arg


def _backward_2x2_naive(g, arg, zero, dx):
    """The general backward for the 2x2 window, stride 2, no padding: the windows do not
    overlap, so each input position receives at most one cotangent and is written, not added
    to (the value 0 + g of the general loops' zero-filled sum: g, with −0.0 made +0.0); the
    window position a gives row 2·oh + a // 2 and column 2·ow + a % 2 as shifts. Positions no
    window covers (an odd last row or column) and those not selected are +0.0. Measured 2.6x
    faster than the general loops (their division by a runtime kernel width and their
    read-modify-write) on (32, 16, 28, 28)."""
    n_batch, channels = dx.shape[0], dx.shape[1]
    oh_size, ow_size = g.shape[2], g.shape[3]
    for n in prange(n_batch):
        for c in range(channels):
            d = dx[n, c]
            for ih in range(d.shape[0]):
                for iw in range(d.shape[1]):
                    d[ih, iw] = zero
            for oh in range(oh_size):
                gr = g[n, c, oh]
                ar = arg[n, c, oh]
                for ow in range(ow_size):
                    a = ar[ow]
                    d[2 * oh + (a >> 1), 2 * ow + (a & 1)] = zero + gr[ow]
    return dx


def _window(i, d, s, o):
    """Padded positions of window offset ``i`` for all ``o`` outputs."""
    return slice(i * d, i * d + s * (o - 1) + 1, s)


def _forward_np(x, kh, kw, sh, sw, ph, pw, dh, dw, y, arg):
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf) \
        if ph or pw else x
    oh, ow = y.shape[2], y.shape[3]
    y[...] = -np.inf
    arg[...] = 0
    for i in range(kh):
        for j in range(kw):
            v = xp[:, :, _window(i, dh, sh, oh), _window(j, dw, sw, ow)]
            better = v > y  # strict: a later equal value never replaces the first maximum
            np.copyto(y, v, where=better)
            np.copyto(arg, np.uint8(i * kw + j), where=better)
    return y, arg


def _backward_np(g, arg, kh, kw, sh, sw, ph, pw, dh, dw, dx):
    n, c, h, w = dx.shape
    oh, ow = g.shape[2:]
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=g.dtype)
    zero = g.dtype.type(0)
    for i in range(kh):
        for j in range(kw):
            # Overlapping windows (stride < kernel) add into the same input position.
            dxp[:, :, _window(i, dh, sh, oh), _window(j, dw, sw, ow)] += np.where(
                arg == i * kw + j, g, zero)
    dx[...] = dxp[:, :, ph:ph + h, pw:pw + w]
    return dx


_KERNELS = {
    "forward": {"naive": _forward_naive, "np": _forward_np,
                "jit": njit(_forward_naive, parallel=True)},
    "backward": {"naive": _backward_naive, "np": _backward_np,
                 "jit": njit(_backward_naive, parallel=True)},
    "forward_2x2": {"naive": _forward_2x2_naive, "jit": njit(_forward_2x2_naive, parallel=True)},
    "backward_2x2": {"naive": _backward_2x2_naive,
                     "jit": njit(_backward_2x2_naive, parallel=True)},
}
IMPLS = ("naive", "np", "jit")


def _is_2x2(kernel, stride, padding, dilation, impl) -> bool:
    """The compiled kernels take the 2x2/2 loops for that window (the interpreted ``naive``
    twin stays the general loops: the oracle)."""
    return (impl == "jit" and tuple(kernel) == (2, 2) and tuple(stride) == (2, 2)
            and tuple(padding) == (0, 0) and tuple(dilation) == (1, 1))


def max_pool2d_forward(x, kernel, stride, padding, dilation, oh, ow, impl="jit"):
    """(y, arg) of max pooling; ``impl="naive"`` runs the same loops interpreted."""
    f = pick("max_pool2d", _KERNELS, "forward", impl)
    n, c = x.shape[:2]
    x = np.ascontiguousarray(x)
    y = np.empty((n, c, oh, ow), dtype=x.dtype)
    arg = np.empty((n, c, oh, ow), dtype=np.uint8)
    if _is_2x2(kernel, stride, padding, dilation, impl):
        return _KERNELS["forward_2x2"][impl](x, x.dtype.type(-np.inf), y, arg)
    return f(x, kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1], dilation[0],
             dilation[1], y, arg)


def max_pool2d_backward(g, arg, in_shape, kernel, stride, padding, dilation, impl="jit"):
    """dx of max pooling from the kept argmax positions; a new array of ``in_shape``."""
    f = pick("max_pool2d", _KERNELS, "backward", impl)
    g = np.ascontiguousarray(g)
    dx = np.empty(in_shape, dtype=g.dtype)
    if _is_2x2(kernel, stride, padding, dilation, impl):
        return _KERNELS["backward_2x2"][impl](g, np.ascontiguousarray(arg), g.dtype.type(0), dx)
    return f(g, arg, kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1],
             dilation[0], dilation[1], dx)
