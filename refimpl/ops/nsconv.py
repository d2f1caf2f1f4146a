"""Weight standardisation of NSConv (SPEC §3: NSC-1, NSC-2, NSC-3).

Per output channel ``o`` with weights ``W_o`` (already masked), mask ``M_o``, gain ``g_o`` and an
averaging set ``a_o`` (all ``fan_in`` entries in stats mode ``dense``; the active entries in mode
``masked``), with ``F_o = |a_o|``:

    μ_o = Σ a W / F_o,   c = a ⊙ (W_o − μ_o),   s²_o = Σ c² / max(F_o − 1, 1),
    v_o = s²_o · F_o,    r_o = sqrt(max(v_o, ε)),   Ŵ_o = g_o · c / r_o ⊙ M_o.

Mode ``dense`` (NSC-1) is exactly the SPEC formula with F = fan_in. Mode ``masked`` (NSC-2)
replaces fan_in by nnz_o in all three places (mean, divisor and the scale s²·F); SPEC leaves the
scale's count open, see docs/decisions.md. A channel with no active entry gives Ŵ_o = 0.

Gradients flow to W and g through μ and s² (NSC-3). With G = ∂L/∂Ŵ ⊙ M:

    ∂L/∂g_o = Σ G c / r_o
    ∂L/∂c   = g_o G / r_o − [v_o > ε] · g_o (F_o/max(F_o − 1, 1)) c Σ(G c) / r_o³
    ∂L/∂W   = a ⊙ (∂L/∂c − Σ(a ∂L/∂c) / F_o)

Residuals: only the per-channel r_o and the clamp flags. The centred weights are recomputed
from W in the vjp: W is a leaf (a parameter), so referring to it costs no memory, while keeping
``c`` would hold another weight-sized buffer.

Layout of Ŵ (``packed``): a masked layer's Ŵ exists only at its active positions (NSC-3), so
the primitive returns its active values (nnz,) in weight-index order (= ``Ŵ[M]``), which the
masked convolution consumes directly; the conv keeps that for its input gradient, nnz·itemsize
bytes instead of a dense copy (MEM-1 ``standardised_kernel``). The statistics are computed on
the dense W exactly as above, so every value is bit-identical to the dense layout's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.tape import Plan, Primitive, Residual, Spec
from ..kernels import masked_conv as MK

STATS = ("dense", "masked")


@dataclass(frozen=True, eq=False)
class StandardizeParams:
    mask: MK.WeightMask  # the weight's mask; a constant (never needs a gradient)
    stats: str  # "dense" | "masked"
    eps: float
    packed: bool = False  # return Ŵ's active values (nnz,) in index order, not the dense Ŵ


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


def _centre(w: np.ndarray, p: StandardizeParams):
    """Per-channel averaging set, count, centred weights c and Σc², all (C_out, fan_in)."""
    o = w.shape[0]
    w2 = w.reshape(o, -1)
    m2 = p.mask.mask.reshape(o, -1)
    if p.stats == "dense":
        a = np.ones_like(m2)
        count = np.full(o, w2.shape[1], dtype=np.int64)
    else:
        a = m2
        count = m2.sum(axis=1).astype(np.int64)
    safe = np.maximum(count, 1).astype(w.dtype)
    mu = np.sum(w2 * a, axis=1) / safe
    c = (w2 - mu[:, None]) * a
    return a, count, c, np.sum(c * c, axis=1)


def _scale_factor(count: np.ndarray, dtype) -> np.ndarray:
    """F / max(F − 1, 1), so that v = s²·F = Σc² · F / max(F − 1, 1)."""
    return (count / np.maximum(count - 1, 1)).astype(dtype)


def standardize_fwd(inputs, p, needs):
    """Ŵ = g · (W − μ) / sqrt(max(s² F, ε)) ⊙ M per output channel; shape of W."""
    w, gain = inputs
    a, count, c, ss = _centre(w, p)
    v = ss * _scale_factor(count, w.dtype)
    eps = w.dtype.type(p.eps)
    r = np.sqrt(np.maximum(v, eps))
    what = (gain[:, None] * c / r[:, None]) * p.mask.mask.reshape(w.shape[0], -1)
    what[count == 0] = 0
    res = StandardizeRes(w, gain, r, v > eps) if any(needs) else None
    what = what.reshape(w.shape)
    return (MK.gather(what, p.mask.index) if p.packed else what), res


def standardize_vjp(res, g, p, needs):
    w, gain, r = res.w, res.gain, res.r
    o = w.shape[0]
    a, count, c, _ = _centre(w, p)
    if p.packed:
        g = MK.scatter(g, p.mask.index)
    gm = g.reshape(o, -1) * p.mask.mask.reshape(o, -1)
    gc = np.sum(gm * c, axis=1)
    dw = dgain = None
    if needs[1]:
        dgain = np.where(count > 0, gc / r, 0).astype(w.dtype)
    if needs[0]:
        coef = np.where(res.unclamped, gain * _scale_factor(count, w.dtype) * gc / r**3, 0)
        dc = gain[:, None] * gm / r[:, None] - coef.astype(w.dtype)[:, None] * c
        dc *= a
        safe = np.maximum(count, 1).astype(w.dtype)
        dw2 = (dc - (np.sum(dc, axis=1) / safe)[:, None]) * a
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
