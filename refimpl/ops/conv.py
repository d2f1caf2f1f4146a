"""Bilinear primitives: conv2d and linear (SPEC CONV-1, SAP-1, SAP-3, TAPE-4).

Both keep, for the weight gradient, the layer's *input* (the activation cache that SAP prunes)
and, for the input gradient, a reference to their weight operand. Their vjps are themselves
convolutions / matmuls, computed by the kernels in :mod:`refimpl.kernels.conv`.

SAP is a residual policy of both (``sap`` in their params, :mod:`refimpl.sap`): the forward uses
the exact input; the cached copy is x̂ (the n_keep largest |x|) in a compressed format; the vjp
decodes x̂ for grad_weight only, so grad_input and grad_bias stay exact (SAP-3). ``shared`` lets
layers that read the same input hold one cache of it (SAP-1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._jit import JIT_ENABLED
from ..kernels import conv as K
from ..kernels import masked_conv as MK
from ..sap import ActivationCache, SapPolicy, SharedCache, decode, prune_and_encode
from ..tape import Primitive, Residual


@dataclass(frozen=True, eq=False)
class ConvParams:
    """Static parameters. ``mask`` (bool, the weight's shape, a constant): the layer computes
    conv2d(x, where(mask, w, 0)) whatever the weight holds off the mask (MASK-3 enforced on
    every path): the masked kernels visit only active weights, the dense kernels (no Numba) get
    the weight with inactive entries zeroed. ``weight_grad``: ``"masked"`` (zero on inactive
    positions, the ordinary step) or ``"dense"`` (the full gradient, for growth scores, PG-5)."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    impl: str | None = None  # dense kernel implementation; None = kernels.conv.DEFAULT_IMPL
    mask: np.ndarray | None = None
    weight_grad: str = "masked"
    sap: SapPolicy | None = None  # None: cache the input itself (no SAP)
    shared: SharedCache | None = None  # one cache for every layer reading this input (SAP-1)

    @property
    def masked_impl(self) -> str | None:
        """Kernel family for a masked layer: the masked Numba kernels when compiled (or when
        asked for by ``impl``), else None: the dense kernels on where(mask, w, 0)
        (:func:`_dense_weight`), which compute the same function (interpreted masked loops
        would be far slower)."""
        if self.mask is None:
            return None
        if self.impl in MK.IMPLS:
            return self.impl
        return "jit" if JIT_ENABLED and self.impl is None else None


@dataclass(eq=False)
class ConvRes(Residual):
    """``x``: the cached input (N, C, H, W), kept only when the weight needs a gradient and no
    SAP policy is set; ``cache``: instead of ``x`` under a SAP policy, the compressed x̂
    (:class:`refimpl.sap.ActivationCache`); ``w``: the weight operand, kept only when the input
    needs a gradient."""

    operands = {"w": 1}
    x: np.ndarray | None
    w: np.ndarray | None
    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]
    cache: ActivationCache | None = None


def _cache_input(x, sap, shared, needed):
    """(x, cache) fields of a residual record: the input itself without SAP, else its SAP cache
    (SAP-1, SAP-2), encoded once per ``shared`` slot; nothing when no weight gradient is due."""
    if not needed:
        return None, None
    if sap is None:
        return x, None
    if shared is not None:
        return None, shared.get(x, sap)
    return None, prune_and_encode(x, sap)


def _cached_input(res):
    """The input the weight gradient uses: x, or x̂ decoded from the SAP cache (SAP-3)."""
    return res.x if res.cache is None else decode(res.cache)


def _dense_weight(w, p):
    """The weight the dense kernels use: inactive entries zeroed (not multiplied, so a NaN
    there is dropped as the masked kernels drop it)."""
    return w if p.mask is None else np.where(p.mask, w, np.zeros((), w.dtype))


def conv2d_fwd(inputs, p, needs):
    """y[n,o] = sum_{c in group(o), i, j} w[o, c, i, j] * x_pad[n, c, s*oh + d*i, s*ow + d*j]
    (+ b[o]). Shapes: x (N, C, H, W), w (O, C/groups, KH, KW), b (O,) -> y (N, O, OH, OW)."""
    x, w, b = inputs
    mimpl = p.masked_impl
    if mimpl is not None:
        out_shape = K.conv2d_output_shape(x.shape, w.shape, p.stride, p.padding, p.dilation,
                                          p.groups)
        y = MK.masked_conv2d_forward(x, w, p.mask, p.stride, p.padding, p.dilation, p.groups,
                                     out_shape, impl=mimpl)
    else:
        y = K.conv2d_forward(x, _dense_weight(w, p), p.stride, p.padding, p.dilation, p.groups,
                             impl=p.impl)
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    xc, cache = _cache_input(x, p.sap, p.shared, needs[1])
    res = ConvRes(xc, w if needs[0] else None, x.shape, w.shape, cache)
    return y, res


def conv2d_vjp(res, g, p, needs):
    dx = dw = db = None
    mimpl = p.masked_impl
    geom = (p.stride, p.padding, p.dilation, p.groups)
    if needs[0]:
        if mimpl is not None:
            dx = MK.masked_conv2d_grad_input(g, res.w, p.mask, res.x_shape, *geom, impl=mimpl)
        else:
            dx = K.conv2d_grad_input(g, _dense_weight(res.w, p), res.x_shape, *geom,
                                     impl=p.impl)
    if needs[1]:
        x = _cached_input(res)
        if mimpl is not None and p.weight_grad == "masked":
            dw = MK.masked_conv2d_grad_weight(x, g, p.mask, *geom, impl=mimpl)
        else:
            dw = K.conv2d_grad_weight(x, g, res.w_shape, *geom, impl=p.impl)
            if p.mask is not None and p.weight_grad == "masked":
                dw *= p.mask
    if needs[2]:
        db = np.sum(g, axis=(0, 2, 3))
    return dx, dw, db


CONV2D = Primitive("conv2d", conv2d_fwd, conv2d_vjp)


@dataclass(frozen=True, eq=False)
class LinearParams:
    """Static parameters of linear: its SAP residual policy and shared cache slot (as for
    :class:`ConvParams`). ``None`` params mean no SAP."""

    sap: SapPolicy | None = None
    shared: SharedCache | None = None


@dataclass(eq=False)
class LinearRes(Residual):
    """``x``: the cached input (*, in), kept when the weight needs a gradient (no SAP);
    ``cache``: the SAP cache of x instead (whole tensor, SAP-2); ``w``: the weight operand
    (out, in), kept when the input needs a gradient."""

    operands = {"w": 1}
    x: np.ndarray | None
    w: np.ndarray | None
    x_shape: tuple[int, ...]
    cache: ActivationCache | None = None


def linear_fwd(inputs, params, needs):
    """y = x @ w.T + b over the last axis. Shapes: x (*, in), w (out, in), b (out,)."""
    x, w, b = inputs
    y = x @ w.T
    if b is not None:
        y += b
    p = params or LinearParams()
    xc, cache = _cache_input(x, p.sap, p.shared, needs[1])
    return y, LinearRes(xc, w if needs[0] else None, x.shape, cache)


def linear_vjp(res, g, params, needs):
    dx = dw = db = None
    g2 = g.reshape(-1, g.shape[-1])
    if needs[0]:
        dx = (g2 @ res.w).reshape(res.x_shape)
    if needs[1]:
        dw = g2.T @ _cached_input(res).reshape(-1, res.x_shape[-1])
    if needs[2]:
        db = np.sum(g2, axis=0)
    return dx, dw, db


LINEAR = Primitive("linear", linear_fwd, linear_vjp)
