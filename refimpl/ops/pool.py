"""Pooling primitives: max_pool2d, avg_pool2d, global_avg_pool2d (SPEC CONV-1, CONV-5, SAP-4).

Window geometry follows PyTorch: output size ``floor((H + 2p - d(k - 1) - 1) / s) + 1``; max
pooling pads with -inf, average pooling with zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core import _jit
from ..core.tape import Plan, Primitive, Residual, Spec
from ..kernels import pool as PK


@dataclass(frozen=True)
class PoolParams:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    count_include_pad: bool = True
    divisor_override: int | None = None
    impl: str | None = None  # max-pool kernel twin (refimpl.kernels.pool); None = default


def pool_output_hw(op: str, h: int, w: int, p: PoolParams) -> tuple[int, int]:
    out = []
    for size, k, s, pad, d, axis in zip(
        (h, w), p.kernel, p.stride, p.padding, p.dilation, ("height", "width")
    ):
        span = d * (k - 1) + 1
        o = (size + 2 * pad - span) // s + 1
        if o < 1:
            raise ValueError(
                f"{op}: input {axis} {size} with padding {pad} is smaller than the window span "
                f"{span}; expected {axis} >= {span - 2 * pad}"
            )
        out.append(o)
    return out[0], out[1]


def _window_slice(i: int, d: int, s: int, o: int) -> slice:
    """Positions of window offset ``i`` for all ``o`` outputs, in padded coordinates."""
    return slice(i * d, i * d + s * (o - 1) + 1, s)


# ---- max_pool2d -------------------------------------------------------------------------------
@dataclass(eq=False)
class MaxPoolRes(Residual):
    """Argmax position inside each window, row-major window order, as uint8 (SAP-4):
    one byte per output element."""

    category = "maxpool_argmax"
    arg: np.ndarray  # uint8 (N, C, OH, OW)
    in_shape: tuple[int, ...]


def _pool_impl(p) -> str:
    """The kernel twin: ``p.impl``, else the compiled loops when Numba is on, else NumPy."""
    if p.impl is not None:
        return p.impl
    return "jit" if _jit.JIT_ENABLED else "np"


def max_pool2d_fwd(inputs, p, needs):
    """y[n,c,i,j] = max over the window; the first maximum in row-major window order wins
    (CONV-5), so equal values route the gradient to the earliest position
    (:mod:`refimpl.kernels.pool`)."""
    (x,) = inputs
    oh, ow = pool_output_hw("max_pool2d", x.shape[2], x.shape[3], p)
    y, arg = PK.max_pool2d_forward(x, p.kernel, p.stride, p.padding, p.dilation, oh, ow,
                                   impl=_pool_impl(p))
    return y, (MaxPoolRes(arg, x.shape) if needs[0] else None)


def max_pool2d_vjp(res, g, p, needs):
    return (PK.max_pool2d_backward(g, res.arg, res.in_shape, p.kernel, p.stride, p.padding,
                                   p.dilation, impl=_pool_impl(p)),)


def max_pool2d_plan(specs, p, needs):
    (x,) = specs
    oh, ow = pool_output_hw("max_pool2d", x.shape[2], x.shape[3], p)
    out = (x.shape[0], x.shape[1], oh, ow)
    return Plan(Spec(out, x.dtype), MaxPoolRes(Spec(out, np.uint8), x.shape) if needs[0] else None)


MAX_POOL2D = Primitive("max_pool2d", max_pool2d_fwd, max_pool2d_vjp, max_pool2d_plan)


# ---- avg_pool2d -------------------------------------------------------------------------------
@dataclass(eq=False)
class AvgPoolRes(Residual):
    """No arrays (SAP-4)."""

    in_shape: tuple[int, ...]


def _avg_divisor(h: int, w: int, oh: int, ow: int, p: PoolParams, dtype) -> np.ndarray:
    """Per-output divisor, shape (OH, OW) broadcastable, as PyTorch defines it."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = p.kernel, p.stride, p.padding, p.dilation
    if p.divisor_override is not None:
        return np.asarray(p.divisor_override, dtype=dtype)
    if p.count_include_pad:
        return np.asarray(kh * kw, dtype=dtype)
    inside = np.zeros((h + 2 * ph, w + 2 * pw))
    inside[ph : ph + h, pw : pw + w] = 1.0
    cnt = np.zeros((oh, ow))
    for i in range(kh):
        for j in range(kw):
            cnt += inside[_window_slice(i, dh, sh, oh), _window_slice(j, dw, sw, ow)]
    return cnt.astype(dtype)


def avg_pool2d_fwd(inputs, p, needs):
    """y = (sum over the zero-padded window) / divisor."""
    (x,) = inputs
    n, c, h, w = x.shape
    oh, ow = pool_output_hw("avg_pool2d", h, w, p)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = p.kernel, p.stride, p.padding, p.dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
    acc = np.zeros((n, c, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            acc += xp[:, :, _window_slice(i, dh, sh, oh), _window_slice(j, dw, sw, ow)]
    return acc / _avg_divisor(h, w, oh, ow, p, x.dtype), AvgPoolRes(x.shape)


def avg_pool2d_vjp(res, g, p, needs):
    n, c, h, w = res.in_shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = p.kernel, p.stride, p.padding, p.dilation
    oh, ow = g.shape[2:]
    gd = g / _avg_divisor(h, w, oh, ow, p, g.dtype)
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=g.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, _window_slice(i, dh, sh, oh), _window_slice(j, dw, sw, ow)] += gd
    return (dxp[:, :, ph : ph + h, pw : pw + w].copy() if ph or pw else dxp,)


def avg_pool2d_plan(specs, p, needs):
    (x,) = specs
    oh, ow = pool_output_hw("avg_pool2d", x.shape[2], x.shape[3], p)
    return Plan(Spec((x.shape[0], x.shape[1], oh, ow), x.dtype), AvgPoolRes(x.shape))


AVG_POOL2D = Primitive("avg_pool2d", avg_pool2d_fwd, avg_pool2d_vjp, avg_pool2d_plan)


# ---- global_avg_pool2d ------------------------------------------------------------------------
def global_avg_pool2d_fwd(inputs, params, needs):
    """y[n, c] = mean over (H, W) of x[n, c]; output shape (N, C)."""
    (x,) = inputs
    return np.mean(x, axis=(2, 3), dtype=x.dtype), AvgPoolRes(x.shape)


def global_avg_pool2d_vjp(res, g, params, needs):
    n, c, h, w = res.in_shape
    gd = g / g.dtype.type(h * w)
    return (np.array(np.broadcast_to(gd[:, :, None, None], res.in_shape)),)


def global_avg_pool2d_plan(specs, params, needs):
    (x,) = specs
    return Plan(Spec(x.shape[:2], x.dtype), AvgPoolRes(x.shape))


GLOBAL_AVG_POOL2D = Primitive("global_avg_pool2d", global_avg_pool2d_fwd, global_avg_pool2d_vjp,
                              global_avg_pool2d_plan)
