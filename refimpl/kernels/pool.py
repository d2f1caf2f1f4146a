"""Max-pooling kernels (SPEC CONV-5, SAP-4): plain loop functions, C-shaped (explicit output
buffers, explicit bounds), compiled by :func:`refimpl.core._jit.njit` and parallel over the batch
(each ``prange`` iteration writes its own sample). The vectorised NumPy code in
:mod:`refimpl.ops.pool` computes the same function and is their oracle in the tests.

Forward: ``y[n, c, oh, ow]`` = max of ``x`` over the window, positions in the padding are -inf
(never selected); ``arg`` = the window position (row-major, ``i·kw + j``) of the FIRST maximum,
uint8. A NaN never compares greater, so it is never selected (as in the NumPy twin).
Backward: ``dx[n, c, ih, iw] += g[n, c, oh, ow]`` at each output's argmax position (overlapping
windows accumulate); an argmax in the padding (a window entirely of padding) is dropped.
"""

from __future__ import annotations

import numpy as np

from ..core._jit import njit, prange

__all__ = ["max_pool2d_forward", "max_pool2d_backward"]


def _forward_loops(x, kh, kw, sh, sw, ph, pw, dh, dw, y, arg):
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


def _backward_loops(g, arg, kw, sh, sw, ph, pw, dh, dw, dx):
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


_forward_jit = njit(_forward_loops, parallel=True)
_backward_jit = njit(_backward_loops, parallel=True)


def max_pool2d_forward(x, kernel, stride, padding, dilation, oh, ow, impl="jit"):
    """(y, arg) of max pooling; ``impl="naive"`` runs the same loops interpreted."""
    n, c = x.shape[:2]
    y = np.empty((n, c, oh, ow), dtype=x.dtype)
    arg = np.empty((n, c, oh, ow), dtype=np.uint8)
    f = _forward_jit if impl == "jit" else _forward_loops
    return f(np.ascontiguousarray(x), kernel[0], kernel[1], stride[0], stride[1], padding[0],
             padding[1], dilation[0], dilation[1], y, arg)


def max_pool2d_backward(g, arg, in_shape, kernel, stride, padding, dilation, impl="jit"):
    """dx of max pooling from the kept argmax positions; a new array of ``in_shape``."""
    dx = np.empty(in_shape, dtype=g.dtype)
    f = _backward_jit if impl == "jit" else _backward_loops
    return f(np.ascontiguousarray(g), arg, kernel[1], stride[0], stride[1], padding[0],
             padding[1], dilation[0], dilation[1], dx)
