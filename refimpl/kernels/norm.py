"""Batch-norm kernels: the normalisation and its input gradient, each in one pass over memory
(the NumPy expressions of :mod:`refimpl.ops.norm` make four full-size passes each, with
temporaries). The per-channel sums stay NumPy's own (``np.mean``/``np.sum``, in ops/norm.py):
a compiled pairwise sum in NumPy's order was measured slower than NumPy's vectorised one here.

Every array is viewed as (N, C, L), L = H·W, C-contiguous. Formulas (float arithmetic of the
arrays' dtype, in exactly this order, the order of the NumPy expressions, so every twin gives
the same bits; where an operation meets two NaNs, which of them it returns may differ, as
NumPy's vector loops may swap a product's operands):

    forward     x̂ = (x − mean[c]) · invstd[c];  y = x̂ · w[c] + b[c]
                (with a fused ReLU: y = max(y, 0) as np.maximum, in the same pass)
    input grad  gx = g · w[c];  training: dx = ((gx − m_g[c]) − x̂ · m_gx[c]) · invstd[c]
                eval: dx = gx · invstd[c]

Without a weight the kernels multiply by 1 and without a bias add −0.0: both leave every value's
bits as they are (v + (−0.0) is v also for v = ±0.0), so one loop body serves every case.
Parallel over channels (each ``prange`` iteration writes its own channel of every sample).
"""

from __future__ import annotations

import numpy as np

from ..core._jit import njit, prange
from . import pick

__all__ = ["bn_forward", "bn_grad_input"]


def _forward_naive(x, mean, invstd, w, b, keep, relu, zero, xhat, y):
    """x̂ = (x − mean[c]) · invstd[c] (into xhat when ``keep``), y = x̂ · w[c] + b[c], with
    ``relu`` then max(y, 0) as np.maximum: y unless y <= 0 (one unordered comparison: NaN
    kept, ±0.0 -> +0.0; ``zero`` is 0 in y's dtype)."""
    n_batch, channels, length = x.shape
    for c in prange(channels):
        m = mean[c]
        s = invstd[c]
        wc = w[c]
        bc = b[c]
        for n in range(n_batch):
            xr = x[n, c]
            yr = y[n, c]
            if keep:
                hr = xhat[n, c]
                for i in range(length):
                    t = (xr[i] - m) * s
                    hr[i] = t
                    v = t * wc + bc
                    yr[i] = zero if (relu and v <= zero) else v
            elif relu:
                for i in range(length):
                    v = ((xr[i] - m) * s) * wc + bc
                    yr[i] = zero if v <= zero else v
            else:
                for i in range(length):
                    yr[i] = ((xr[i] - m) * s) * wc + bc
    return y


def _grad_input_naive(g, xhat, w, invstd, m_g, m_gx, training, dx):
    """dx = ((gx − m_g[c]) − x̂ · m_gx[c]) · invstd[c] (training) or gx · invstd[c] (eval),
    gx = g · w[c]."""
    n_batch, channels, length = g.shape
    for c in prange(channels):
        s = invstd[c]
        wc = w[c]
        for n in range(n_batch):
            gr = g[n, c]
            dr = dx[n, c]
            if training:
                mg = m_g[c]
                mgx = m_gx[c]
                hr = xhat[n, c]
                for i in range(length):
                    dr[i] = ((gr[i] * wc - mg) - hr[i] * mgx) * s
            else:
                for i in range(length):
                    dr[i] = (gr[i] * wc) * s
    return dx


_KERNELS = {
    "forward": {"naive": _forward_naive, "jit": njit(_forward_naive, parallel=True)},
    "grad_input": {"naive": _grad_input_naive, "jit": njit(_grad_input_naive, parallel=True)},
}


def _per_channel(v, c, dtype, fill):
    """v (C,) in ``dtype``, or C copies of ``fill`` (1: no weight, -0.0: no bias)."""
    return np.full(c, fill, dtype=dtype) if v is None else np.ascontiguousarray(v, dtype=dtype)


def bn_forward(x, mean, invstd, w, b, keep: bool, impl: str = "jit", relu: bool = False):
    """(x̂ or None, y) of the module docstring's forward (``relu``: y rectified), new arrays of
    x's shape."""
    c = x.shape[1]
    x3 = np.ascontiguousarray(x).reshape(x.shape[0], c, -1)
    y = np.empty(x.shape, dtype=x.dtype)
    xhat = np.empty(x.shape, dtype=x.dtype) if keep else None
    pick("batch_norm", _KERNELS, "forward", impl)(
        x3, mean, invstd, _per_channel(w, c, x.dtype, 1), _per_channel(b, c, x.dtype, -0.0),
        keep, relu, x.dtype.type(0),
        xhat.reshape(x3.shape) if keep else np.empty((0, 0, 0), dtype=x.dtype),
        y.reshape(x3.shape))
    return xhat, y


def bn_grad_input(g, xhat, w, invstd, m_g, m_gx, training: bool, impl: str = "jit"):
    """dx of the module docstring, a new array of g's shape."""
    c = g.shape[1]
    g3 = np.ascontiguousarray(g).reshape(g.shape[0], c, -1)
    dx = np.empty(g.shape, dtype=g.dtype)
    empty = np.zeros(0, dtype=g.dtype)
    pick("batch_norm", _KERNELS, "grad_input", impl)(
        g3, xhat.reshape(g3.shape) if training else np.empty((0, 0, 0), dtype=g.dtype),
        _per_channel(w, c, g.dtype, 1), invstd, empty if m_g is None else m_g,
        empty if m_gx is None else m_gx, training, dx.reshape(g3.shape))
    return dx
