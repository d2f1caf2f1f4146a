"""Batch normalisation over the channel axis 1 (baselines only: NSConv models have none, NSC-4).

The functional wrapper computes the batch statistics, passes them in as static params and then
updates the running statistics in place, PyTorch style. The primitive itself stays pure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core._jit import JIT_ENABLED
from ..core.tape import Plan, Primitive, Residual, Spec
from ..kernels import norm as NK
from .elementwise import rectified, relu_grad

#: The kernels of :mod:`refimpl.kernels.norm` (one pass each, the same bits) when Numba compiles;
#: else the NumPy expressions below.
KERNELS = JIT_ENABLED


@dataclass(frozen=True, eq=False)
class BatchNormParams:
    mean: np.ndarray  # per-channel statistics used to normalise, shape (C,)
    var: np.ndarray  # biased variance (training) or running variance (eval), shape (C,)
    eps: float
    training: bool  # True: mean/var are batch statistics and depend on x
    relu: bool = False  # y = relu_gain · max(bn(x), 0), the ReLU in the normalisation's pass
    relu_gain: float = 1.0


@dataclass(eq=False)
class BatchNormRes(Residual):
    """Normalised input x̂ (same shape as x) and per-channel 1/sqrt(var + eps) (SAP-4); the
    weight is a reference to the op's operand; ``relu_bits``: with a fused ReLU, the packed
    bitmap of (y > 0) (as :class:`refimpl.ops.elementwise.ReluRes`)."""

    operands = {"weight": 1}
    category = "bn"
    categories = {"relu_bits": "relu_bitmap"}
    xhat: np.ndarray | None
    invstd: np.ndarray
    weight: np.ndarray | None
    relu_bits: np.ndarray | None = None


def _bshape(x: np.ndarray) -> tuple[int, ...]:
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _one_dtype(*arrays) -> bool:
    """Whether the given arrays (None skipped) share one dtype: the kernels compute in it, as the
    NumPy expressions do only then (mixed dtypes promote)."""
    dts = {a.dtype for a in arrays if a is not None}
    return len(dts) == 1


def batch_stats(x: np.ndarray, axes) -> tuple[np.ndarray, np.ndarray]:
    """The batch mean and biased variance over ``axes`` (every axis but 1): np.mean(x) and
    np.mean(np.square(x − mean)), by the compiled sums where they give NumPy's bits, else by
    NumPy (one full-size temporary for the deviations)."""
    if KERNELS and NK.sums_apply(x):
        m = NK.channel_means(x)
        return m, NK.channel_means(x, m)
    m = np.mean(x, axis=axes)
    d = x - m.reshape((1, x.shape[1]) + (1,) * (x.ndim - 2))
    v = np.mean(np.square(d, out=d), axis=axes)  # in place: one full-size temporary
    return m, v


def batch_norm_fwd(inputs, p, needs):
    """y = (x - mean) * invstd * weight + bias, per channel; with ``p.relu`` then
    relu_gain · max(y, 0) (CONV-5: the kept bitmap is (y > 0))."""
    x, weight, bias = inputs
    bs = _bshape(x)
    invstd = (1.0 / np.sqrt(p.var + p.eps)).astype(x.dtype)
    keep_xhat = any(needs) and (needs[1] or (needs[0] and p.training))
    if KERNELS and _one_dtype(x, p.mean, weight, bias):  # one pass (refimpl.kernels.norm)
        xhat, y = NK.bn_forward(x, p.mean.astype(x.dtype, copy=False), invstd, weight, bias,
                                keep_xhat, relu=p.relu)
    else:
        # The same operations in the same order as (x - mean) * invstd * weight + bias, in place
        # where a full-size temporary would otherwise be made.
        xhat = x - p.mean.reshape(bs)
        xhat *= invstd.reshape(bs)
        y = xhat * weight.reshape(bs) if weight is not None else xhat.copy()
        if bias is not None:
            y += bias.reshape(bs)
        if p.relu:
            np.maximum(y, y.dtype.type(0), out=y)
    bits = None
    if p.relu:
        y, bits = rectified(y, p.relu_gain, any(needs))
    res = None
    if any(needs):
        res = BatchNormRes(
            xhat if keep_xhat else None, invstd,
            weight if (needs[0] and weight is not None) else None, bits,
        )
    return y, res


def batch_norm_vjp(res, g, p, needs):
    if p.relu:
        g = relu_grad(g, res.relu_bits, p.relu_gain)
    axes = (0,) + tuple(range(2, g.ndim))
    bs = (1, g.shape[1]) + (1,) * (g.ndim - 2)
    kernels = KERNELS and _one_dtype(g, res.xhat, res.weight, res.invstd)
    dx = dw = db = None
    t = None  # one full-size scratch for the products, reused (same values, fewer temporaries)
    train_sums = needs[0] and p.training
    if kernels and NK.sums_apply(g) and (res.xhat is None or (
            res.xhat.shape == g.shape and NK.sums_apply(res.xhat))):
        # every sum in one pass, NumPy's bits (kernels/norm.py); then dx in one more
        m_g, m_gx, dw, db = NK.grad_sums(g, res.xhat, res.weight, train_sums, needs[1], needs[2])
        if needs[0]:
            dx = NK.bn_grad_input(g, res.xhat if p.training else None, res.weight, res.invstd,
                                  m_g, m_gx, p.training)
        return dx, dw, db
    if needs[0]:
        m_g = m_gx = None
        if p.training:
            # d/dx of the normalisation through the batch mean and variance:
            # dx = invstd * (gx - mean(gx) - xhat * mean(gx * xhat)).
            gx = g * res.weight.reshape(bs) if res.weight is not None else g
            m_g = np.mean(gx, axis=axes, keepdims=True)
            t = np.multiply(gx, res.xhat)
            m_gx = np.mean(t, axis=axes, keepdims=True)
        if kernels:  # dx in one pass, the same operations (refimpl.kernels.norm)
            dx = NK.bn_grad_input(g, res.xhat if p.training else None, res.weight, res.invstd,
                                  None if m_g is None else m_g.reshape(-1),
                                  None if m_gx is None else m_gx.reshape(-1), p.training)
        elif p.training:
            dx = gx - m_g
            dx -= np.multiply(res.xhat, m_gx, out=t)
            dx *= res.invstd.reshape(bs)
        else:
            gx = g * res.weight.reshape(bs) if res.weight is not None else g
            dx = gx * res.invstd.reshape(bs)
        gx = None
    if needs[1]:
        dw = np.sum(np.multiply(g, res.xhat, out=t), axis=axes)
    if needs[2]:
        db = np.sum(g, axis=axes)
    return dx, dw, db


def batch_norm_plan(specs, p, needs):
    x, weight, bias = specs
    res = None
    if any(needs):
        keep_xhat = needs[1] or (needs[0] and p.training)
        res = BatchNormRes(Spec(x.shape, x.dtype) if keep_xhat else None,
                           Spec((x.shape[1],), x.dtype),
                           weight if (needs[0] and weight is not None) else None,
                           Spec(((x.size + 7) // 8,), np.uint8) if p.relu else None)
    return Plan(Spec(x.shape, x.dtype), res)


BATCH_NORM = Primitive("batch_norm", batch_norm_fwd, batch_norm_vjp, batch_norm_plan)
