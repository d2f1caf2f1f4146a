"""Reductions: sum and mean over given axes. No arrays kept."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.tape import Plan, Primitive, Residual, Spec


@dataclass(frozen=True)
class ReduceParams:
    axes: tuple[int, ...]  # normalised, non-negative, sorted
    keepdim: bool
    mean: bool


@dataclass(eq=False)
class ReduceRes(Residual):
    in_shape: tuple[int, ...]


def reduce_fwd(inputs, params, needs):
    """out = sum(x, axes) or mean(x, axes); the result keeps the input dtype."""
    (x,) = inputs
    f = np.mean if params.mean else np.sum
    out = np.asarray(f(x, axis=params.axes, keepdims=params.keepdim), dtype=x.dtype)
    return out, ReduceRes(x.shape)


def reduce_vjp(res, g, params, needs):
    kept = list(res.in_shape)
    for a in params.axes:
        kept[a] = 1
    g = np.reshape(g, kept)
    if params.mean:
        count = int(np.prod([res.in_shape[a] for a in params.axes]))
        g = g / g.dtype.type(count)
    # Materialise: a broadcast view is read-only with zero strides.
    return (np.array(np.broadcast_to(g, res.in_shape)),)


def reduce_plan(specs, params, needs):
    (x,) = specs
    shape = [1 if i in params.axes else s for i, s in enumerate(x.shape)]
    if not params.keepdim:
        shape = [s for i, s in enumerate(shape) if i not in params.axes]
    return Plan(Spec(shape, x.dtype), ReduceRes(x.shape))


REDUCE = Primitive("reduce", reduce_fwd, reduce_vjp, reduce_plan)
