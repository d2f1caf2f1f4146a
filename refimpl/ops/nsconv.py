"""Weight standardisation of NSConv (SPEC §3: NSC-1, NSC-2, NSC-3), and the two compat
standardisations of the authors' public code (docs/DEVIATIONS.md, N1 and N2).

Per output channel ``o`` with weights ``W_o`` (already masked), mask ``M_o``, gain ``g_o`` and an
averaging set ``a_o`` (all ``fan_in`` entries in stats mode ``dense``; the active entries in mode
``masked``), with ``F_o = |a_o|``, a divisor ``D_o`` and a scale count ``S_o``:

    μ_o = Σ a W / F_o,   c = a ⊙ (W_o − μ_o),   s²_o = Σ c² / D_o,
    v_o = s²_o · S_o,    r_o = sqrt(max(v_o, ε)),   Ŵ_o = g_o · c / r_o ⊙ M_o.

| mode              | mask M               | a      | D               | S      | rule        |
|-------------------|----------------------|--------|-----------------|--------|-------------|
| `dense`           | the given mask       | all    | max(F − 1, 1)   | fan_in | NSC-1       |
| `masked`          | the given mask       | M      | max(nnz − 1, 1) | nnz    | NSC-2       |
| `authors`         | given mask ∧ (W ≠ 0) | all    | max(F − 1, 1)   | fan_in | compat (N1) |
| `authors_method1` | given mask ∧ (W ≠ 0) | M      | nnz − 1         | fan_in | compat (N2) |

Mode ``dense`` (NSC-1) is exactly the SPEC formula with F = fan_in. Mode ``masked`` (NSC-2)
replaces fan_in by nnz_o in all three places (mean, divisor and the scale s²·F); SPEC leaves the
scale's count open, see docs/decisions.md. A channel with no active entry gives Ŵ_o = 0.

The compat modes reproduce the authors' ``WSConv2D`` (fixtures ``nsconv_method2.npz`` and
``nsconv_method1.npz`` of spec_tests/fixtures/authors): their mask is ``weight != 0``, so an
active weight that is exactly 0 (every freshly grown one, PG-7) is switched off in Ŵ; their
commented-out "method 1" averages over the nonzeros but scales with fan_in, and divides by
nnz − 1 unguarded: a channel with one active entry (0/0) or none gets NaN, as in their code.

Gradients flow to W and g through μ and s² (NSC-3). With G = ∂L/∂Ŵ ⊙ M:

    ∂L/∂g_o = Σ G c / r_o
    ∂L/∂c   = g_o G / r_o − [v_o > ε] · g_o (S_o/D_o) c Σ(G c) / r_o³
    ∂L/∂W   = a ⊙ (∂L/∂c − Σ(a ∂L/∂c) / F_o)

except in ``authors_method1``, whose mean is ΣW/nnz over *every* entry (the inactive ones are 0
in value, not in the graph), so ∂L/∂W drops the outer ``a ⊙``: each inactive entry of a channel
gets −Σ(a ∂L/∂c)/nnz_o.

Residuals: only the per-channel r_o and the clamp flags. The centred weights are recomputed
from W in the vjp: W is a leaf (a parameter), so referring to it costs no memory, while keeping
``c`` would hold another weight-sized buffer.

Layout of Ŵ (``packed``): a masked layer's Ŵ exists only at its active positions (NSC-3), so
the primitive returns its active values (nnz,) in weight-index order (= ``Ŵ[M]``), which the
masked convolution consumes directly; the conv keeps that for its input gradient, nnz·itemsize
bytes instead of a dense copy (MEM-1 ``standardised_kernel``). The statistics are computed on
the dense W exactly as above, so every value is bit-identical to the dense layout's. (The
compat modes, whose mask depends on W's values, keep the dense layout.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core._jit import JIT_ENABLED
from ..core.tape import Plan, Primitive, Residual, Spec
from ..kernels import masked_conv as MK
from ..kernels import nsconv as NK

#: SPEC's stats modes (NSC-1, NSC-2).
STATS = ("dense", "masked")
#: Compat modes of the authors' code (docs/DEVIATIONS.md N1, N2): never SPEC, never a default.
#: Their mask is the given mask ∧ (W ≠ 0).
COMPAT_STATS = ("authors", "authors_method1")
ALL_STATS = STATS + COMPAT_STATS
#: Stats modes that average over the active entries only.
_OVER_ACTIVE = ("masked", "authors_method1")
#: The channel-by-channel kernels of :mod:`refimpl.kernels.nsconv` (the same bits, one call
#: instead of some twenty NumPy passes) when Numba compiles; else the NumPy expressions below.
KERNELS = JIT_ENABLED


@dataclass(frozen=True, eq=False)
class StandardizeParams:
    mask: MK.WeightMask  # the weight's mask; a constant (never needs a gradient)
    stats: str  # one of ALL_STATS
    eps: float
    packed: bool = False  # return Ŵ's active values (nnz,) in index order, not the dense Ŵ

    @classmethod
    def make(cls, mask, w, stats: str, eps: float, packed: bool = False):
        """The parameters of one call: the mask the mode applies (the given one, or for the
        compat modes the given one ∧ (W ≠ 0), fixed from W's value at this call, a constant).
        ``mask``: a WeightMask or a bool array; ``w`` an array (or a Spec in a dry trace, where
        the compat modes keep the given mask: the ledger does not model them)."""
        if stats not in ALL_STATS:
            raise ValueError(f"nsconv: stats must be one of {ALL_STATS}, received {stats!r}")
        m = mask if isinstance(mask, MK.WeightMask) else MK.WeightMask(np.asarray(mask, bool))
        if stats in COMPAT_STATS:
            packed = False
            if not isinstance(w, Spec):
                m = MK.WeightMask(m.mask & (np.asarray(w) != 0))
        return cls(m, stats, float(eps), packed)


@dataclass(eq=False)
class StandardizeRes(Residual):
    """``w``, ``gain``: references to the operands; ``r`` (C_out,) the per-channel scale in the
    weights' dtype; ``unclamped`` (C_out,) bool, whether v_o > ε."""

    operands = {"w": 0, "gain": 1}
    category = "nsconv_scale"
    w: np.ndarray
    gain: np.ndarray
    r: np.ndarray
    unclamped: np.ndarray


def _raw(p: StandardizeParams) -> bool:
    """Method 1 divides unguarded (NaN for a channel with < 2 active entries, as their code)."""
    return p.stats == "authors_method1"


def _counts(w: np.ndarray, p: StandardizeParams):
    """Per channel: the averaging set's size F_o (int64) and the mean's divisor (w's dtype)."""
    o = w.shape[0]
    if p.stats in _OVER_ACTIVE:
        count = p.mask.mask.reshape(o, -1).sum(axis=1).astype(np.int64)
    else:
        count = np.full(o, w[0].size, dtype=np.int64)
    return count, (count if _raw(p) else np.maximum(count, 1)).astype(w.dtype)


def _centre(w: np.ndarray, p: StandardizeParams):
    """Per-channel averaging set, count, centred weights c and Σc², all (C_out, fan_in)."""
    o = w.shape[0]
    w2 = w.reshape(o, -1)
    m2 = p.mask.mask.reshape(o, -1)
    a = m2 if p.stats in _OVER_ACTIVE else np.ones_like(m2)
    count, safe = _counts(w, p)
    mu = np.sum(w2 * a, axis=1) / safe
    c = (w2 - mu[:, None]) * a
    return a, count, c, np.sum(c * c, axis=1)


def _scale_factor(count: np.ndarray, fan_in: int, p: StandardizeParams, dtype) -> np.ndarray:
    """S / D, so that v = s²·S = Σc² · S / D (see the table above)."""
    if _raw(p):
        return (fan_in / (count - 1)).astype(dtype)
    scale = count if p.stats == "masked" else fan_in
    return (scale / np.maximum(count - 1, 1)).astype(dtype)


def _kernels(p: StandardizeParams, *arrays) -> bool:
    """Whether the compiled kernels run: SPEC's stats modes, arrays of one float dtype (the
    NumPy expressions compute in it only then; mixed dtypes promote)."""
    return (KERNELS and p.stats in STATS and len({a.dtype for a in arrays}) == 1
            and arrays[0].dtype in (np.float32, np.float64))


def _kernel_args(w: np.ndarray, p: StandardizeParams):
    """The leading arguments of both kernels: W and its mask as (C_out, fan_in), whether the
    averaging set is the mask, and the per-channel divisor and scale factor (the formulas of
    :func:`_counts` and :func:`_scale_factor`, in NumPy; they depend on the mask alone, so they
    are computed once per mask and kept with it)."""
    o = w.shape[0]

    def divisor_and_scale():
        count, safe = _counts(w, p)
        return safe, _scale_factor(count, w[0].size, p, w.dtype)

    safe, sf = p.mask.memo(("nsconv", p.stats, w.dtype.str), divisor_and_scale)
    return (w.reshape(o, -1), p.mask.mask.reshape(o, -1), p.stats in _OVER_ACTIVE, safe, sf)


def standardize_fwd(inputs, p, needs):
    """Ŵ = g · (W − μ) / sqrt(max(s² S, ε)) ⊙ M per output channel; shape of W."""
    w, gain = inputs
    fan_in = w[0].size
    if _kernels(p, w, gain):  # the same operations, channel by channel (kernels/nsconv.py)
        w2, m2, over_active, safe, sf = _kernel_args(w, p)
        what, r, unclamped = NK.standardize(w2, m2, over_active, gain, safe, sf, p.eps, p.packed,
                                            p.mask.nnz)
        res = StandardizeRes(w, gain, r, unclamped) if any(needs) else None
        return (what if p.packed else what.reshape(w.shape)), res
    with np.errstate(invalid="ignore", divide="ignore"):  # method 1's NaN is deliberate
        a, count, c, ss = _centre(w, p)
        v = ss * _scale_factor(count, fan_in, p, w.dtype)
        eps = w.dtype.type(p.eps)
        r = np.sqrt(np.maximum(v, eps))
        what = (gain[:, None] * c / r[:, None]) * p.mask.mask.reshape(w.shape[0], -1)
    if not _raw(p):
        what[count == 0] = 0
    res = StandardizeRes(w, gain, r, v > eps) if any(needs) else None
    what = what.reshape(w.shape)
    return (MK.gather(what, p.mask.index) if p.packed else what), res


def standardize_vjp(res, g, p, needs):
    w, gain, r = res.w, res.gain, res.r
    o, fan_in = w.shape[0], w[0].size
    raw = _raw(p)
    if _kernels(p, w, gain, g):
        w2, m2, over_active, safe, sf = _kernel_args(w, p)
        dw2, dgain = NK.standardize_grad(w2, m2, over_active, gain, safe, sf, r, r**3,
                                         res.unclamped, g if p.packed else g.reshape(o, -1),
                                         p.packed)
        return (dw2.reshape(w.shape) if needs[0] else None), (dgain if needs[1] else None)
    with np.errstate(invalid="ignore", divide="ignore"):
        a, count, c, _ = _centre(w, p)
        if p.packed:
            g = MK.scatter(g, p.mask.index)
        gm = g.reshape(o, -1) * p.mask.mask.reshape(o, -1)
        gc = np.sum(gm * c, axis=1)
        dw = dgain = None
        if needs[1]:
            dgain = (gc / r if raw else np.where(count > 0, gc / r, 0)).astype(w.dtype)
        if needs[0]:
            coef = np.where(res.unclamped,
                            gain * _scale_factor(count, fan_in, p, w.dtype) * gc / r**3, 0)
            dc = gain[:, None] * gm / r[:, None] - coef.astype(w.dtype)[:, None] * c
            dc *= a
            safe = (count if raw else np.maximum(count, 1)).astype(w.dtype)
            dw2 = dc - (np.sum(dc, axis=1) / safe)[:, None]
            if not raw:  # method 1's mean is ΣW/nnz over every entry: all of W gets ∂μ
                dw2 *= a
                dw2[count == 0] = 0
            dw = dw2.reshape(w.shape)
    return dw, dgain


def standardize_plan(specs, p, needs):
    """Ŵ's Spec (dense, or (nnz,) packed) and the record of r and the clamp flags. The lean
    standardisation works channel by channel on the active values: no workspace."""
    w, gain = specs
    o = w.shape[0]
    out = Spec((p.mask.nnz,) if p.packed else w.shape, w.dtype)
    res = StandardizeRes(w, gain, Spec((o,), w.dtype), Spec((o,), np.bool_)) if any(needs) \
        else None
    return Plan(out, res)


STANDARDIZE = Primitive("nsconv_standardize", standardize_fwd, standardize_vjp, standardize_plan)


def pullback(w: np.ndarray, gain: np.ndarray, p: StandardizeParams, g: np.ndarray):
    """(∂L/∂W, ∂L/∂g) from ∂L/∂Ŵ = ``g`` (any positions; only those of the mask count), without a
    tape: the growth score of the authors' code reads ∂L/∂W (compat G1, docs/DEVIATIONS.md)."""
    _, res = standardize_fwd((w, gain), p, (True, True))
    return standardize_vjp(res, g, p, (True, True))
