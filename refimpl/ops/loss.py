"""Fused softmax cross-entropy (SPEC LT-2, SAP-4)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.tape import Plan, Primitive, Residual, Spec


@dataclass(frozen=True, eq=False)
class CrossEntropyParams:
    target: np.ndarray  # int64 (N,); a constant: labels never need a gradient (TAPE-4)
    reduction: str = "mean"  # "mean" | "sum"


@dataclass(eq=False)
class CrossEntropyRes(Residual):
    """Softmax probabilities (N, C) in the logits' dtype and the int64 labels (N,) (SAP-4)."""

    category = "loss"
    probs: np.ndarray
    target: np.ndarray


def cross_entropy_fwd(inputs, p, needs):
    """loss_i = logsumexp(z_i) - z_i[t_i] with z_i = x_i - max(x_i) (max-shifted, so exp never
    overflows); mean (or sum) over the batch."""
    (x,) = inputs
    n = x.shape[0]
    z = x - np.max(x, axis=1, keepdims=True)
    ez = np.exp(z)
    s = np.sum(ez, axis=1, keepdims=True)
    lse = np.log(s)
    picked = z[np.arange(n), p.target]
    losses = lse[:, 0] - picked
    total = np.sum(losses)
    loss = total / x.dtype.type(n) if p.reduction == "mean" else total
    res = CrossEntropyRes(ez / s, p.target.copy()) if needs[0] else None
    return np.asarray(loss, dtype=x.dtype), res


def cross_entropy_vjp(res, g, p, needs):
    n = res.probs.shape[0]
    d = res.probs.copy()
    d[np.arange(n), res.target] -= 1
    scale = g / g.dtype.type(n) if p.reduction == "mean" else g
    return (d * scale,)


def cross_entropy_plan(specs, p, needs):
    (x,) = specs
    res = CrossEntropyRes(Spec(x.shape, x.dtype), Spec(p.target.shape, np.int64)) if needs[0] \
        else None
    return Plan(Spec((), x.dtype), res)


CROSS_ENTROPY = Primitive("cross_entropy", cross_entropy_fwd, cross_entropy_vjp,
                          cross_entropy_plan)
