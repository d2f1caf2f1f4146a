"""Elementwise primitives: relu, add, mul (SPEC CONV-5, SAP-4)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.tape import Plan, Primitive, Residual, Spec
from ..kernels import relu as RK
from .common import unbroadcast


# ---- relu -------------------------------------------------------------------------------------
@dataclass(eq=False)
class ReluRes(Residual):
    """Packed bitmap of (out > 0), 8 positions per byte, little bit order (SAP-4);
    ``ceil(numel / 8)`` bytes."""

    category = "relu_bitmap"
    bits: np.ndarray  # uint8, (ceil(numel/8),)
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ReluParams:
    """``gain``: y = gain · max(x, 0), gain > 0 (``model.relu_gain``); no params means 1."""

    gain: float = 1.0


def _gain(params) -> float:
    return 1.0 if params is None else params.gain


def relu_fwd(inputs, params, needs):
    """y = gain · max(x, 0) (gain 1 without params). ReLU'(0) = 0 (CONV-5), so the kept bitmap
    is (x > 0); a positive gain does not change it."""
    (x,) = inputs
    # one pass: max(x, 0) and the packed (x > 0), kept only when a gradient will be asked for
    y, bits = RK.relu_forward(x, with_bits=needs[0])
    if _gain(params) != 1.0:
        y *= y.dtype.type(params.gain)
    res = ReluRes(bits, x.shape) if needs[0] else None
    return y, res


def relu_vjp(res, g, params, needs):
    return (relu_grad(g, res.bits, _gain(params)),)


def rectified(y, gain: float, want_bits: bool):
    """The rest of a ReLU whose max(·, 0) a kernel already applied to y (fused into a conv's or
    batch norm's pass): the kept bitmap (y > 0) when a gradient will be asked for, then y scaled
    in place by the positive gain (which keeps the bitmap). Returns (y, bits or None)."""
    bits = RK.relu_bitmap(y) if want_bits else None
    if gain != 1.0:
        y *= y.dtype.type(gain)
    return y, bits


def relu_grad(g, bits, gain: float):
    """A ReLU's gradient: g · (y > 0) (a multiply, kernels/relu.py), times the gain; a new
    array."""
    dx = RK.relu_backward(g, bits)
    if gain != 1.0:
        dx *= dx.dtype.type(gain)
    return dx


def relu_plan(specs, params, needs):
    (x,) = specs
    res = ReluRes(Spec(((x.size + 7) // 8,), np.uint8), x.shape) if needs[0] else None
    return Plan(Spec(x.shape, x.dtype), res)


RELU = Primitive("relu", relu_fwd, relu_vjp, relu_plan)


# ---- add --------------------------------------------------------------------------------------
@dataclass(eq=False)
class AddRes(Residual):
    """No arrays (SAP-4): only the operand shapes, to undo broadcasting."""

    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]


def add_fwd(inputs, params, needs):
    """out = a + b with NumPy broadcasting."""
    a, b = inputs
    return a + b, AddRes(a.shape, b.shape)


def add_vjp(res, g, params, needs):
    return (
        unbroadcast(g, res.a_shape) if needs[0] else None,
        unbroadcast(g, res.b_shape) if needs[1] else None,
    )


def add_plan(specs, params, needs):
    a, b = specs
    return Plan(Spec(np.broadcast_shapes(a.shape, b.shape), a.dtype), AddRes(a.shape, b.shape))


ADD = Primitive("add", add_fwd, add_vjp, add_plan)


# ---- mul --------------------------------------------------------------------------------------
@dataclass(eq=False)
class MulRes(Residual):
    """Keeps the *other* operand of each input that needs a gradient (both are op operands)."""

    operands = {"a": 0, "b": 1}
    a: np.ndarray | None
    b: np.ndarray | None
    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]


def mul_fwd(inputs, params, needs):
    """out = a * b with NumPy broadcasting."""
    a, b = inputs
    res = MulRes(a if needs[1] else None, b if needs[0] else None, a.shape, b.shape)
    return a * b, res


def mul_vjp(res, g, params, needs):
    return (
        unbroadcast(g * res.b, res.a_shape) if needs[0] else None,
        unbroadcast(g * res.a, res.b_shape) if needs[1] else None,
    )


def mul_plan(specs, params, needs):
    a, b = specs
    res = MulRes(a if needs[1] else None, b if needs[0] else None, a.shape, b.shape)
    return Plan(Spec(np.broadcast_shapes(a.shape, b.shape), a.dtype), res)


MUL = Primitive("mul", mul_fwd, mul_vjp, mul_plan)
