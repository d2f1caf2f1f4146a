"""Bilinear primitives: conv2d and linear (SPEC CONV-1, SAP-1, SAP-3, TAPE-4).

Both keep, for the weight gradient, the layer's *input* (the activation cache that SAP prunes)
and, for the input gradient, a reference to their weight operand. Their vjps are themselves
convolutions / matmuls, computed by the kernels in :mod:`refimpl.kernels.conv`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels import conv as K
from ..tape import Primitive, Residual


@dataclass(frozen=True)
class ConvParams:
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    impl: str | None = None  # kernel implementation; None = refimpl.kernels.conv.DEFAULT_IMPL


@dataclass(eq=False)
class ConvRes(Residual):
    """``x``: the cached input (N, C, H, W), kept only when the weight needs a gradient;
    ``w``: the weight operand, kept only when the input needs a gradient."""

    operands = {"w": 1}
    x: np.ndarray | None
    w: np.ndarray | None
    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]


def conv2d_fwd(inputs, p, needs):
    """y[n,o] = sum_{c in group(o), i, j} w[o, c, i, j] * x_pad[n, c, s*oh + d*i, s*ow + d*j]
    (+ b[o]). Shapes: x (N, C, H, W), w (O, C/groups, KH, KW), b (O,) -> y (N, O, OH, OW)."""
    x, w, b = inputs
    y = K.conv2d_forward(x, w, p.stride, p.padding, p.dilation, p.groups, impl=p.impl)
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    res = ConvRes(x if needs[1] else None, w if needs[0] else None, x.shape, w.shape)
    return y, res


def conv2d_vjp(res, g, p, needs):
    dx = dw = db = None
    if needs[0]:
        dx = K.conv2d_grad_input(
            g, res.w, res.x_shape, p.stride, p.padding, p.dilation, p.groups, impl=p.impl
        )
    if needs[1]:
        dw = K.conv2d_grad_weight(
            res.x, g, res.w_shape, p.stride, p.padding, p.dilation, p.groups, impl=p.impl
        )
    if needs[2]:
        db = np.sum(g, axis=(0, 2, 3))
    return dx, dw, db


CONV2D = Primitive("conv2d", conv2d_fwd, conv2d_vjp)


@dataclass(eq=False)
class LinearRes(Residual):
    """``x``: the cached input (*, in), kept when the weight needs a gradient; ``w``: the weight
    operand (out, in), kept when the input needs a gradient."""

    operands = {"w": 1}
    x: np.ndarray | None
    w: np.ndarray | None
    x_shape: tuple[int, ...]


def linear_fwd(inputs, params, needs):
    """y = x @ w.T + b over the last axis. Shapes: x (*, in), w (out, in), b (out,)."""
    x, w, b = inputs
    y = x @ w.T
    if b is not None:
        y += b
    return y, LinearRes(x if needs[1] else None, w if needs[0] else None, x.shape)


def linear_vjp(res, g, params, needs):
    dx = dw = db = None
    g2 = g.reshape(-1, g.shape[-1])
    if needs[0]:
        dx = (g2 @ res.w).reshape(res.x_shape)
    if needs[1]:
        dw = g2.T @ res.x.reshape(-1, res.x_shape[-1])
    if needs[2]:
        db = np.sum(g2, axis=0)
    return dx, dw, db


LINEAR = Primitive("linear", linear_fwd, linear_vjp)
