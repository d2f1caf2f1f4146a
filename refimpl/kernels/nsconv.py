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
:func:`_row_sum_naive`: 0 plus its pairwise sum (blocks of at most 128 entries summed with
eight running sums, larger rows split in two at a multiple of 8), so the sums are bit-identical
to ``np.sum(..., axis=1)``. The packed layout (``Ŵ`` as its active values in index order, and
``G`` likewise) is read and written in the same pass (C order of (o, c, i, j): the weight
index's order).

Twins: the NumPy expressions of ops/nsconv.py (the oracle, and the path for the compat modes);
``naive`` (these loops, interpreted) and ``jit`` (compiled). Sequential: a layer's weights are
small (at most a few hundred thousand entries) and every channel holds three sums.
"""

from __future__ import annotations

import types

import numpy as np

from ..core._jit import njit
from . import pick

__all__ = ["IMPLS", "STACK", "standardize", "standardize_grad"]

IMPLS = ("naive", "jit")
#: Frames of :func:`_row_sum_naive`'s explicit stack: each split adds two, and a row of n
#: entries splits about log2(n / 128) times deep.
STACK = 128
_BLOCK = 128  # NumPy's pairwise block (PW_BLOCKSIZE)


def _row_sum_naive(a, n, zero, stk, vals):
    """0 + NumPy's pairwise sum of a[0:n] (numpy/_core/src/umath/loops_utils.h.src): a block of
    at most 128 entries is summed with eight running sums (fewer than 8 entries: in order), a
    longer range is split at half its length rounded down to a multiple of 8 and its halves
    added. The recursion runs on an explicit stack (stk int64 (STACK, 3): start, length, state;
    vals (STACK,) in a's dtype), so the compiled kernels call no recursive function."""
    sp = 0
    vp = 0
    stk[0, 0] = 0
    stk[0, 1] = n
    stk[0, 2] = 0
    while sp >= 0:
        lo = stk[sp, 0]
        m = stk[sp, 1]
        if m <= _BLOCK:
            if m < 8:
                res = zero
                for i in range(m):
                    res = res + a[lo + i]
            else:
                r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
                r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
                i = 8
                while i < m - m % 8:
                    r0 = r0 + a[lo + i]
                    r1 = r1 + a[lo + i + 1]
                    r2 = r2 + a[lo + i + 2]
                    r3 = r3 + a[lo + i + 3]
                    r4 = r4 + a[lo + i + 4]
                    r5 = r5 + a[lo + i + 5]
                    r6 = r6 + a[lo + i + 6]
                    r7 = r7 + a[lo + i + 7]
                    i += 8
                res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
                while i < m:
                    res = res + a[lo + i]
                    i += 1
            vals[vp] = res
            vp += 1
            sp -= 1
        elif stk[sp, 2] == 0:  # split: the second half below the first, so the first runs first
            stk[sp, 2] = 1
            half = m // 2
            half -= half % 8
            stk[sp + 1, 0] = lo + half
            stk[sp + 1, 1] = m - half
            stk[sp + 1, 2] = 0
            stk[sp + 2, 0] = lo
            stk[sp + 2, 1] = half
            stk[sp + 2, 2] = 0
            sp += 2
        else:  # both halves done: first + second
            vals[vp - 2] = vals[vp - 2] + vals[vp - 1]
            vp -= 1
            sp -= 1
    return zero + vals[0]


def _standardize_naive(w, mask, over_active, gain, safe, sf, eps, zero, one, packed, what,
                       r, unclamped, crow, scratch, stk, vals):
    """Ŵ of the module docstring. w (O, F); mask (O, F) bool; ``over_active``: the averaging set
    is the mask (stats ``masked``), else every entry; safe, sf (O,) per channel; ``what``: (O, F),
    or (1, nnz) the active values in index order when ``packed``; r (O,) and unclamped (O,) bool
    are written; crow, scratch (F,) workspace. Returns how many active entries it met (the
    packed length when they agree)."""
    c_out, fan = w.shape
    every = not over_active  # the averaging set: every entry, or the mask's
    p = 0
    for o in range(c_out):
        count = 0  # the averaging set's size
        for k in range(fan):
            a = one if (mask[o, k] | every) else zero
            scratch[k] = w[o, k] * a
            count += a == one
        mu = _row_sum(scratch, fan, zero, stk, vals) / safe[o]
        for k in range(fan):
            c = (w[o, k] - mu) * (one if (mask[o, k] | every) else zero)
            crow[k] = c
            scratch[k] = c * c
        v = _row_sum(scratch, fan, zero, stk, vals) * sf[o]
        ro = np.sqrt(v if (v >= eps or v != v) else eps)  # np.maximum(v, ε): NaN stays NaN
        r[o] = ro
        unclamped[o] = v > eps
        g = gain[o]
        for k in range(fan):
            on = mask[o, k]
            ws = ((g * crow[k]) / ro) * (one if on else zero) if count > 0 else zero
            if not packed:
                what[o, k] = ws
            elif on:
                if p < what.shape[1]:
                    what[0, p] = ws
                p += 1
    return p


def _standardize_grad_naive(w, mask, over_active, gain, safe, sf, r, r3, unclamped, gw, zero,
                            one, packed, dw, dgain, crow, grow, scratch, stk, vals):
    """∂W (O, F) and ∂g (O,) of the module docstring from G = ``gw``: (O, F), or (1, nnz) the
    active values in index order when ``packed``; r3 = r³ (NumPy's power, per channel); crow,
    grow, scratch (F,) workspace. Returns how many active entries it met."""
    c_out, fan = w.shape
    every = not over_active  # the averaging set: every entry, or the mask's
    p = 0
    for o in range(c_out):
        count = 0
        for k in range(fan):
            a = one if (mask[o, k] | every) else zero
            scratch[k] = w[o, k] * a
            count += a == one
        mu = _row_sum(scratch, fan, zero, stk, vals) / safe[o]
        for k in range(fan):
            on = mask[o, k]
            c = (w[o, k] - mu) * (one if (on | every) else zero)
            crow[k] = c
            gv = zero  # G scattered: +0.0 off the mask
            if not packed:
                gv = gw[o, k]
            elif on:
                if p < gw.shape[1]:
                    gv = gw[0, p]
                p += 1
            gm = gv * (one if on else zero)
            grow[k] = gm
            scratch[k] = gm * c
        gc = _row_sum(scratch, fan, zero, stk, vals)
        ro = r[o]
        g = gain[o]
        dgain[o] = gc / ro if count > 0 else zero
        coef = ((g * sf[o]) * gc) / r3[o] if unclamped[o] else zero
        for k in range(fan):
            a = one if (mask[o, k] | every) else zero
            grow[k] = ((g * grow[k]) / ro - coef * crow[k]) * a  # dc
        mean = _row_sum(grow, fan, zero, stk, vals) / safe[o]
        for k in range(fan):
            a = one if (mask[o, k] | every) else zero
            dw[o, k] = (grow[k] - mean) * a if count > 0 else zero
    return p


def _interpreted(f):
    """``f`` whose call of the row sum is the interpreted loop (the naive twin calls no compiled
    code); the compiled kernels call the compiled row sum."""
    names = dict(f.__globals__)
    names["_row_sum"] = _row_sum_naive
    twin = types.FunctionType(f.__code__, names, f.__name__, f.__defaults__, f.__closure__)
    twin.__doc__ = f.__doc__
    return twin


_row_sum = njit(_row_sum_naive)
_KERNELS = {
    "row_sum": {"naive": _row_sum_naive, "jit": _row_sum},
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
