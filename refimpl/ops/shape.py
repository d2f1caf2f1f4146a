"""Shape primitives: reshape (flatten is a reshape). No arrays kept (SAP-4)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.tape import Plan, Primitive, Residual, Spec


@dataclass(frozen=True)
class ReshapeParams:
    shape: tuple[int, ...]


@dataclass(eq=False)
class ReshapeRes(Residual):
    in_shape: tuple[int, ...]


def reshape_fwd(inputs, params, needs):
    """out = x viewed with ``params.shape`` (C order, CONV-3)."""
    (x,) = inputs
    return np.reshape(x, params.shape), ReshapeRes(x.shape)


def reshape_vjp(res, g, params, needs):
    return (np.reshape(g, res.in_shape),)


def reshape_plan(specs, params, needs):
    (x,) = specs
    return Plan(Spec(params.shape, x.dtype), ReshapeRes(x.shape))


RESHAPE = Primitive("reshape", reshape_fwd, reshape_vjp, reshape_plan)
