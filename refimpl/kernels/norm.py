"""Batch-norm kernels: the normalisation and its input gradient, each in one pass over memory
(the NumPy expressions of :mod:`refimpl.ops.norm` make four full-size passes each, with
temporaries), and the per-channel sums in NumPy's own order (:mod:`refimpl.kernels.sums`): the
batch mean and the mean of the squared deviations without the deviations' temporary, and the
gradient's four sums (Σgx, Σgx·x̂, Σg·x̂, Σg) in one pass instead of four passes and three
temporaries. The sums run where NumPy's reduction keeps its rows (:func:`sums_apply`); NumPy
sums elsewhere.

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
from .sums import STACK, interpreted, pairwise

__all__ = ["bn_forward", "bn_grad_input", "sums_apply", "channel_means", "grad_sums"]


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


def _channel_sums_naive(x, mean, squares, zero, out, rows, stk, vals):
    """out[c] = np.sum(x, axis=(0, 2))[c] of x (N, C, L) in NumPy's order (kernels/sums.py: each
    row x[n, c] summed pairwise, the rows added in order from 0), or with ``squares`` the same
    sum of (x − mean[c])², each square rounded first, as np.square(x − mean). rows (C, L), stk
    (C, STACK, 3) and vals (C, STACK) are workspace, one slice per channel."""
    n_batch, channels, length = x.shape
    for c in prange(channels):
        acc = zero
        row = rows[c]
        for n in range(n_batch):
            xr = x[n, c]
            if squares:
                m = mean[c]
                for i in range(length):
                    t = xr[i] - m
                    row[i] = t * t
                acc = acc + pairwise(row, length, zero, stk[c], vals[c])
            else:
                acc = acc + pairwise(xr, length, zero, stk[c], vals[c])
        out[c] = acc
    return out


def _grad_sums_naive(g, xhat, w, training, want_w, want_b, zero, s_g, s_gx, s_w, s_b, rows,
                     stk, vals):
    """The batch-norm gradient's per-channel sums in one pass over g (and x̂), each in NumPy's
    order of np.sum(·, axis=(0, 2)) (g, x̂: (N, C, L)): ``training``: s_g = Σ gx and s_gx =
    Σ gx·x̂ with gx = g·w[c]; ``want_w``: s_w = Σ g·x̂; ``want_b``: s_b = Σ g. Each product is
    rounded before it is summed, as the NumPy expressions' temporaries. rows (C, 3, L), stk,
    vals: workspace per channel (as :func:`_channel_sums_naive`)."""
    n_batch, channels, length = g.shape
    for c in prange(channels):
        wc = w[c]
        a_g = zero
        a_gx = zero
        a_w = zero
        a_b = zero
        r0 = rows[c, 0]
        r1 = rows[c, 1]
        r2 = rows[c, 2]
        for n in range(n_batch):
            gr = g[n, c]
            if training:
                hr = xhat[n, c]
                for i in range(length):
                    gx = gr[i] * wc
                    r0[i] = gx
                    r1[i] = gx * hr[i]
                a_g = a_g + pairwise(r0, length, zero, stk[c], vals[c])
                a_gx = a_gx + pairwise(r1, length, zero, stk[c], vals[c])
            if want_w:
                hr = xhat[n, c]
                for i in range(length):
                    r2[i] = gr[i] * hr[i]
                a_w = a_w + pairwise(r2, length, zero, stk[c], vals[c])
            if want_b:
                a_b = a_b + pairwise(gr, length, zero, stk[c], vals[c])
        if training:
            s_g[c] = a_g
            s_gx[c] = a_gx
        if want_w:
            s_w[c] = a_w
        if want_b:
            s_b[c] = a_b
    return s_g


_KERNELS = {
    "forward": {"naive": _forward_naive, "jit": njit(_forward_naive, parallel=True)},
    "grad_input": {"naive": _grad_input_naive, "jit": njit(_grad_input_naive, parallel=True)},
    "channel_sums": {"naive": interpreted(_channel_sums_naive),
                     "jit": njit(_channel_sums_naive, parallel=True)},
    "grad_sums": {"naive": interpreted(_grad_sums_naive),
                  "jit": njit(_grad_sums_naive, parallel=True)},
}

#: Rows of at most this many entries: beyond NumPy's iterator buffer its reduction may chunk a
#: row differently (kernels/sums.py); the callers use NumPy's sums there.
MAX_ROW = 8192


def sums_apply(a) -> bool:
    """Whether :func:`channel_sums` / :func:`grad_sums` give NumPy's bits for ``a`` (N, C, ...):
    C-contiguous float32/float64, at least 2 channels and 2 to MAX_ROW entries per row (else
    NumPy's iterator joins or splits the rows: kernels/sums.py)."""
    if a.ndim < 3 or not a.flags.c_contiguous or a.dtype not in (np.float32, np.float64):
        return False
    length = a.size // (a.shape[0] * a.shape[1]) if a.size else 0
    return a.shape[1] >= 2 and 2 <= length <= MAX_ROW


def _workspace(c, length, rows, dtype):
    return (np.empty((c, rows, length) if rows > 1 else (c, length), dtype=dtype),
            np.empty((c, STACK, 3), dtype=np.int64), np.empty((c, STACK), dtype=dtype))


def _mean_of(sums, count):
    """sums / count as np.mean divides (true_divide by an intp count, unsafe cast back)."""
    return np.true_divide(sums, np.intp(count), out=sums, casting="unsafe")


def channel_means(x, mean=None, impl: str = "jit"):
    """np.mean(x, axis=(0, 2, ...)) of x (N, C, ...), or with ``mean`` (C,) the mean of
    np.square(x − mean) over the same axes: the same bits (when :func:`sums_apply`)."""
    c = x.shape[1]
    x3 = x.reshape(x.shape[0], c, -1)
    rows, stk, vals = _workspace(c, x3.shape[2], 1, x.dtype)
    out = np.empty(c, dtype=x.dtype)
    pick("batch_norm", _KERNELS, "channel_sums", impl)(
        x3, mean if mean is not None else out, mean is not None, x.dtype.type(0), out, rows,
        stk, vals)
    return _mean_of(out, x3.shape[0] * x3.shape[2])


def grad_sums(g, xhat, w, training: bool, want_w: bool, want_b: bool, impl: str = "jit"):
    """(m_g, m_gx, dw, db) of the batch-norm gradient, each None when not asked for: m_g =
    np.mean(gx), m_gx = np.mean(gx · x̂) (training; gx = g · w, or g without a weight), dw =
    np.sum(g · x̂), db = np.sum(g), over every axis but 1, with NumPy's bits (when
    :func:`sums_apply` holds for g and x̂)."""
    c = g.shape[1]
    g3 = g.reshape(g.shape[0], c, -1)
    n, length = g3.shape[0], g3.shape[2]
    h3 = xhat.reshape(g3.shape) if xhat is not None else np.empty((0, 0, 0), dtype=g.dtype)
    rows, stk, vals = _workspace(c, length, 3, g.dtype)
    outs = [np.empty(c if want else 0, dtype=g.dtype)
            for want in (training, training, want_w, want_b)]
    pick("batch_norm", _KERNELS, "grad_sums", impl)(
        g3, h3, _per_channel(w, c, g.dtype, 1), training, want_w, want_b, g.dtype.type(0),
        *outs, rows, stk, vals)
    m_g, m_gx, dw, db = outs
    if training:
        m_g, m_gx = _mean_of(m_g, n * length), _mean_of(m_gx, n * length)
    return (m_g if training else None, m_gx if training else None, dw if want_w else None,
            db if want_b else None)


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
