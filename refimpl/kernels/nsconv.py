"""NSConv's weight standardisation and its gradient, one output channel at a time (SPEC NSC-1,
NSC-2, NSC-3; the formulas and their table of counts are in :mod:`refimpl.ops.nsconv`).

The NumPy expressions of ops/nsconv.py make some twenty full passes over the (C_out, fan_in)
weight, each a separate call with its temporaries; on the small kernels of a CNN their call costs
dominate (0.1-0.25 ms per call on the demo's layers). These kernels make the same float
operations in the same order, channel by channel, so every twin gives the same bits:

    forward   μ = Σ(W·a) / safe;  c = (W − μ)·a;  v = Σ(c·c) · sf;  r = sqrt(max(v, ε))
              Ŵ = ((g·c) / r) · m   (+0.0 in a channel with no active entry)
    gradient  G' = G · m;  gc = Σ(G'·c);  ∂g = gc / r (0 with no active entry)
              coef = ((g·sf)·gc) / r³ where v > ε, else 0
              dc = ((g·G') / r − coef·c) · a;  ∂W = (dc − Σdc / safe) · a   (0 with none active)

with a, m the averaging set and the mask as 0/1 in the weights' dtype (a = 1 in stats mode
``dense``), and the per-channel safe count, scale factor sf and r³ computed by ops/nsconv.py in
NumPy (one formula, one place). Every Σ is NumPy's own summation order for a row,
:func:`_row_sum_naive`: 0 plus its pairwise sum (:mod:`refimpl.kernels.sums`), so the sums are
bit-identical to ``np.sum(..., axis=1)``. The packed layout (``Ŵ`` as its active values in
index order, and ``G`` likewise) is read and written in the same pass (C order of (o, c, i, j):
the weight index's order).

Twins: the NumPy expressions of ops/nsconv.py (the oracle, and the path for the compat modes);
``naive`` (these loops, interpreted) and ``jit`` (compiled). Sequential: a layer's weights are
small (at most a few hundred thousand entries) and every channel holds three sums.
"""

from __future__ import annotations

import numpy as np

from ..core._jit import njit
from . import pick, rebind
from .sums import STACK, interpreted, pairwise

__all__ = ["IMPLS", "row_sum", "standardize", "standardize_grad"]

IMPLS = ("naive", "jit")


def _row_sum_naive(a, n, zero, stk, vals):
    """0 + NumPy's pairwise sum of a[0:n]: ``np.sum`` of a row (:mod:`refimpl.kernels.sums`)."""
    return zero + pairwise(a, n, zero, stk, vals)


def _centre_naive(w, mask, o, every, safe, zero, one, crow, scratch, stk, vals):
    """Channel o's centred weights c = (W − μ)·a into crow (μ = Σ(W·a) / safe, a = 1 on the
    averaging set: every entry, or the mask's); returns the set's size."""
    fan = w.shape[1]
    count = 0
    for k in range(fan):
        a = one if (mask[o, k] | every) else zero
        scratch[k] = w[o, k] * a
        count += a == one
    mu = _row_sum(scratch, fan, zero, stk, vals) / safe
    for k in range(fan):
        crow[k] = (w[o, k] - mu) * (one if (mask[o, k] | every) else zero)
    return count


def _standardize_naive(w, mask, over_active, gain, safe, sf, eps, zero, one, packed, what,
                       r, unclamped, crow, scratch, stk, vals):
    """Ŵ of the module docstring. w (O, F); mask (O, F) bool; ``over_active``: the averaging set
    is the mask (stats ``masked``), else every entry; safe, sf (O,) per channel; ``what``: (O, F),
    or (1, nnz) the active values in index order when ``packed``; r (O,) and unclamped (O,) bool
    are written; crow, scratch (F,) workspace. Returns how many active entries it met (the
    packed length when they agree)."""
    c_out, fan = w.shape
    every = not over_active
    p = 0
    for o in range(c_out):
        count = _centre(w, mask, o, every, safe[o], zero, one, crow, scratch, stk, vals)
        for k in range(fan):
            scratch[k] = crow[k] * crow[k]
        v = _row_sum(scratch, fan, zero, stk, vals) * sf[o]
        ro = np.sqrt(v if (v >= eps or v != v) else eps)  # np.maximum(v, ε): NaN stays NaN
        r[o] = ro
        unclamped[o] = v > eps
        g = gain[o]
        row = scratch if packed else what[o]
        if count > 0:  # tested once, not per entry: then the loop vectorises (74 -> 37 µs)
            for k in range(fan):
                row[k] = ((g * crow[k]) / ro) * (one if mask[o, k] else zero)
        else:
            for k in range(fan):
                row[k] = zero
        if packed:
            for k in range(fan):
                if mask[o, k]:
                    if p < what.shape[1]:
                        what[0, p] = row[k]
                    p += 1
    return p


def _standardize_grad_naive(w, mask, over_active, gain, safe, sf, r, r3, unclamped, gw, zero,
                            one, packed, dw, dgain, crow, grow, scratch, stk, vals):
    """∂W (O, F) and ∂g (O,) of the module docstring from G = ``gw``: (O, F), or (1, nnz) the
    active values in index order when ``packed``; r3 = r³ (NumPy's power, per channel); crow,
    grow, scratch (F,) workspace. Returns how many active entries it met."""
    c_out, fan = w.shape
    every = not over_active
    p = 0
    for o in range(c_out):
        count = _centre(w, mask, o, every, safe[o], zero, one, crow, scratch, stk, vals)
        if packed:  # G scattered: +0.0 off the mask
            for k in range(fan):
                gv = zero
                if mask[o, k]:
                    if p < gw.shape[1]:
                        gv = gw[0, p]
                    p += 1
                grow[k] = gv
        else:
            for k in range(fan):
                grow[k] = gw[o, k]
        for k in range(fan):  # G' = G·m, then G'·c (loops without a branch vectorise)
            gm = grow[k] * (one if mask[o, k] else zero)
            grow[k] = gm
            scratch[k] = gm * crow[k]
        gc = _row_sum(scratch, fan, zero, stk, vals)
        ro = r[o]
        g = gain[o]
        dgain[o] = gc / ro if count > 0 else zero
        coef = ((g * sf[o]) * gc) / r3[o] if unclamped[o] else zero
        for k in range(fan):
            a = one if (mask[o, k] | every) else zero
            grow[k] = ((g * grow[k]) / ro - coef * crow[k]) * a  # dc
        mean = _row_sum(grow, fan, zero, stk, vals) / safe[o]
        if count > 0:  # tested once, not per entry (as in the forward)
            for k in range(fan):
                dw[o, k] = (grow[k] - mean) * (one if (mask[o, k] | every) else zero)
        else:
            for k in range(fan):
                dw[o, k] = zero
    return p


_row_sum = njit(_row_sum_naive)  # what the compiled kernels call
_centre = njit(_centre_naive)


def _interpreted(f):
    """``f`` calling the interpreted helpers (the naive twin calls no compiled code)."""
    row_sum = interpreted(_row_sum_naive)
    centre = rebind(interpreted(_centre_naive), _row_sum=row_sum)
    return rebind(interpreted(f), _row_sum=row_sum, _centre=centre)


_KERNELS = {
    "row_sum": {"naive": interpreted(_row_sum_naive), "jit": _row_sum},
    "standardize": {"naive": _interpreted(_standardize_naive), "jit": njit(_standardize_naive)},
    "standardize_grad": {"naive": _interpreted(_standardize_grad_naive),
                         "jit": njit(_standardize_grad_naive)},
}


def _workspace(fan: int, dtype, rows: int):
    return ([np.empty(fan, dtype=dtype) for _ in range(rows)],
            np.empty((STACK, 3), dtype=np.int64), np.empty(STACK, dtype=dtype))


def _check(name: str, got: int, nnz: int) -> None:
    if got != nnz:
        raise ValueError(f"nsconv {name}: the mask has {got} active entries, the packed values "
                         f"{nnz}; pass the values of this mask's weight index")


def row_sum(a: np.ndarray, impl: str = "jit"):
    """0 + NumPy's pairwise sum of a contiguous 1-D array (``np.sum(a)``'s bits)."""
    stk, vals = np.empty((STACK, 3), dtype=np.int64), np.empty(STACK, dtype=a.dtype)
    return a.dtype.type(pick("nsconv", _KERNELS, "row_sum", impl)(
        np.ascontiguousarray(a), a.shape[0], a.dtype.type(0), stk, vals))  # (jit: a float)


def standardize(w2, mask2, over_active: bool, gain, safe, sf, eps, packed: bool, nnz: int,
                impl: str = "jit"):
    """(Ŵ, r, unclamped): Ŵ (O, F), or (nnz,) in index order when ``packed``. w2 (O, F) and
    mask2 (O, F) bool C-contiguous; gain, safe, sf (O,) in w2's dtype."""
    o, fan = w2.shape
    dt = w2.dtype
    what = np.empty(nnz if packed else (o, fan), dtype=dt)
    r = np.empty(o, dtype=dt)
    unclamped = np.empty(o, dtype=np.bool_)
    (crow, scratch), stk, vals = _workspace(fan, dt, 2)
    got = pick("nsconv", _KERNELS, "standardize", impl)(
        w2, mask2, over_active, gain, safe, sf, dt.type(eps), dt.type(0), dt.type(1), packed,
        what.reshape(1, nnz) if packed else what, r, unclamped, crow, scratch, stk, vals)
    if packed:
        _check("standardize", got, nnz)
    return what, r, unclamped


def standardize_grad(w2, mask2, over_active: bool, gain, safe, sf, r, r3, unclamped, g,
                     packed: bool, impl: str = "jit"):
    """(∂W (O, F), ∂g (O,)) from G = ``g``: (O, F), or (nnz,) in index order when ``packed``."""
    o, fan = w2.shape
    dt = w2.dtype
    dw = np.empty((o, fan), dtype=dt)
    dgain = np.empty(o, dtype=dt)
    (crow, grow, scratch), stk, vals = _workspace(fan, dt, 3)
    got = pick("nsconv", _KERNELS, "standardize_grad", impl)(
        w2, mask2, over_active, gain, safe, sf, r, r3, unclamped,
        np.ascontiguousarray(g).reshape(1, -1) if packed else g, dt.type(0), dt.type(1),
        packed, dw, dgain, crow, grow, scratch, stk, vals)
    if packed:
        _check("standardize_grad", got, g.shape[0])
    return dw, dgain
