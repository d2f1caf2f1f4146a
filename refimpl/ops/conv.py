"""Bilinear primitives: conv2d and linear (SPEC CONV-1, SAP-1, SAP-3, TAPE-4, MEM-5).

Both keep, for the weight gradient, the layer's *input* (the activation cache that SAP prunes)
and, for the input gradient, a reference to their weight operand. Their vjps are themselves
convolutions / matmuls, computed by :mod:`refimpl.kernels.conv` (dense) and
:mod:`refimpl.kernels.masked_conv` (a masked layer: only its active weights, over the weight
index its :class:`~refimpl.kernels.masked_conv.WeightMask` built once).

A masked conv's weight operand is either the dense weight (a parameter, zero off the mask) or,
with ``packed``, its active values in index order (NSConv's standardised kernel Ŵ, which exists
only at the active positions, NSC-3). Every kernel path uses only the active values, so a
weight that is nonzero off its mask is masked identically with and without Numba (MASK-3).

SAP is a residual policy of both (``sap`` in their params, :mod:`refimpl.sap`): the forward uses
the exact input; the cached copy is x̂ (the n_keep largest |x|) in a compressed format; the vjp
decodes x̂ for grad_weight only, so grad_input and grad_bias stay exact (SAP-3). ``shared`` lets
layers that read the same input hold one cache of it (SAP-1).

Each primitive also has a ``plan`` (its dry twin, :class:`refimpl.core.tape.Plan`): the record
the forward keeps, with Specs, and the workspace the lean kernels need (docs/memory.md, MEM-5):
``weight_index`` 4·(O + 1) + 4·nnz bytes in a masked layer's forward and backward,
``selection_histogram`` 1 KiB when SAP selects (a radix select with 8-bit digits and 32-bit
counts), ``decoded_input`` numel·itemsize in the backward of a compressed (non-dense) cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core._jit import JIT_ENABLED
from ..core.tape import Plan, Primitive, Residual, Spec
from ..kernels import conv as K
from ..kernels import masked_conv as MK
from ..sap import ActivationCache, SapPolicy, SharedCache, decode, plan_cache, prune_and_encode
from .elementwise import rectified, relu_grad

#: Workspace of the lean SAP selection: a 256-bin histogram of 32-bit counts (8-bit digits).
SELECTION_HISTOGRAM_NBYTES = 256 * 4


@dataclass(frozen=True, eq=False)
class ConvParams:
    """Static parameters. ``mask`` (a :class:`~refimpl.kernels.masked_conv.WeightMask`, a
    constant) selects the masked kernels, which visit only active weights; ``packed``: the
    weight operand is the active values (nnz,) in index order instead of the dense weight.
    ``weight_grad``: ``"masked"`` (the gradient at active positions only, the ordinary step) or
    ``"dense"`` (the full gradient of a dense weight operand, for growth scores, PG-5)."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    impl: str | None = None  # kernel implementation; None = the default of each family
    mask: MK.WeightMask | None = None
    weight_grad: str = "masked"
    sap: SapPolicy | None = None  # None: cache the input itself (no SAP)
    shared: SharedCache | None = None  # one cache for every layer reading this input (SAP-1)
    packed: bool = False
    relu: bool = False  # y = relu(conv(x) + b), computed in place in the output buffer
    relu_gain: float = 1.0  # with relu: y = relu_gain · relu(conv(x) + b) (model.relu_gain)

    @property
    def geometry(self):
        return self.stride, self.padding, self.dilation, self.groups

    @property
    def masked_impl(self) -> str | None:
        """Masked kernels to run: ``jit`` when compiled (or the ``impl`` asked for), else None:
        the dense kernels on the scattered active values, which compute the same function
        (interpreted masked loops would be far slower)."""
        if self.impl in MK.IMPLS:
            return self.impl
        return "jit" if JIT_ENABLED and self.impl is None else None

    @property
    def dense_impl(self) -> str | None:
        return self.impl if self.impl in K.IMPLS else None


@dataclass(eq=False)
class ConvRes(Residual):
    """``x``: the cached input (N, C, H, W), kept only when the weight needs a gradient and no
    SAP policy is set; ``cache``: instead of ``x`` under a SAP policy, the compressed x̂
    (:class:`refimpl.sap.ActivationCache`); ``w``: the weight operand, kept only when the input
    needs a gradient (counted only when it is an intermediate: NSConv's Ŵ); ``relu_bits``: with
    a fused ReLU, the packed bitmap of (y > 0) (as :class:`refimpl.ops.elementwise.ReluRes`)."""

    operands = {"w": 1}
    categories = {"x": "input_cache", "cache": "input_cache", "w": "standardised_kernel",
                  "relu_bits": "relu_bitmap"}
    x: np.ndarray | None
    w: np.ndarray | None
    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]
    cache: ActivationCache | None = None
    relu_bits: np.ndarray | None = None


def _cache_input(x, sap, shared, needed):
    """(x, cache) fields of a residual record: the input itself without SAP, else its SAP cache
    (SAP-1, SAP-2), encoded once per ``shared`` slot; nothing when no weight gradient is due.
    ``x`` may be a Spec (a dry trace: the record's plan)."""
    if not needed:
        return None, None
    if sap is None:
        return x, None
    if shared is not None:
        return None, shared.get(x, sap)
    return None, plan_cache(x, sap) if isinstance(x, Spec) else prune_and_encode(x, sap)


def _cached_input(res):
    """The input the weight gradient uses: x, or x̂ decoded from the SAP cache (SAP-3)."""
    return res.x if res.cache is None else decode(res.cache)


def _sap_workspace(x, sap, shared, needed) -> tuple[dict, dict]:
    """(forward, backward) workspace of an input cache (MEM-5): the selection histogram when
    this layer encodes and drops something, the decoded x̂ when the format is not dense."""
    if not needed or sap is None:
        return {}, {}
    n_keep, fmt = sap.layout(x.size, x.dtype.itemsize)
    encodes = shared is None or shared.pending(x, sap)
    fwd = {"selection_histogram": SELECTION_HISTOGRAM_NBYTES} if encodes and n_keep < x.size \
        else {}
    vjp = {"decoded_input": x.nbytes} if fmt != "dense" else {}
    return fwd, vjp


def _dense_weight(w, p):
    """The dense weight a dense kernel needs: the operand, or the packed values scattered."""
    return MK.scatter(w, p.mask.index) if p.packed else w


def _active_values(w, p):
    return w if p.packed else MK.gather(w, p.mask.index)


def conv2d_fwd(inputs, p, needs):
    """y[n,o] = sum_{c in group(o), i, j} w[o, c, i, j] * x_pad[n, c, s*oh + d*i, s*ow + d*j]
    + b[o]. Shapes: x (N, C, H, W), w (O, C/groups, KH, KW) or packed (nnz,), b (O,) ->
    y (N, O, OH, OW)."""
    x, w, b = inputs
    # with p.relu the kernels return max(y, 0) (np.maximum's values, in their epilogue)
    if p.mask is None:
        y = K.conv2d_forward(x, w, *p.geometry, impl=p.impl, bias=b, relu=p.relu)
    elif p.masked_impl is not None:
        out_shape = K.conv2d_output_shape(x.shape, p.mask.shape, *p.geometry)
        y = MK.masked_conv2d_forward(x, p.mask.index, _active_values(w, p), b, *p.geometry,
                                     out_shape, impl=p.masked_impl, relu=p.relu)
    else:
        wd = MK.scatter(_active_values(w, p), p.mask.index)
        y = K.conv2d_forward(x, wd, *p.geometry, impl=p.dense_impl, bias=b, relu=p.relu)
    bits = None
    if p.relu:  # ReLU'(0) = 0 (CONV-5): the kept bitmap is (y > 0), as the relu primitive's
        y, bits = rectified(y, p.relu_gain, any(needs))
    xc, cache = _cache_input(x, p.sap, p.shared, needs[1])
    return y, ConvRes(xc, w if needs[0] else None, x.shape, w.shape, cache, bits)


def conv2d_vjp(res, g, p, needs):
    dx = dw = db = None
    if p.relu:
        g = relu_grad(g, res.relu_bits, p.relu_gain)
    if needs[2]:
        db = np.sum(g, axis=(0, 2, 3))
    x = _cached_input(res) if needs[1] else None
    dense_np = (p.mask is None and p.impl in (None, "np")) or \
        (p.mask is not None and p.masked_impl is None and p.dense_impl in (None, "np"))
    if dense_np and K.DEFAULT_IMPL == "np" and (needs[0] or needs[1]):
        # The BLAS kernels read g channel-major: move it once for both gradients and drop the
        # (N, O, OH, OW) copy this vjp made (the ReLU-masked g) before the GEMMs (MEM-6).
        g = K.channel_major(g)
    if p.mask is None:
        if needs[0]:
            dx = K.conv2d_grad_input(g, res.w, res.x_shape, *p.geometry, impl=p.impl)
        if needs[1]:
            dw = K.conv2d_grad_weight(x, g, res.w_shape, *p.geometry, impl=p.impl)
    elif p.masked_impl is not None:
        index = p.mask.index
        val = _active_values(res.w, p) if needs[0] else None
        dx = np.zeros(res.x_shape, dtype=g.dtype) if needs[0] else None
        masked_dw = needs[1] and p.weight_grad == "masked"
        dval = np.zeros(index.nnz, dtype=g.dtype) if masked_dw else None
        MK.masked_conv2d_backward(g, x, index, val, *p.geometry, dx=dx, dval=dval,
                                  impl=p.masked_impl)
        if masked_dw:
            dw = dval if p.packed else MK.scatter(dval, index)
        elif needs[1]:  # the dense gradient of a dense weight operand (growth scores, PG-5)
            dw = K.conv2d_grad_weight(x, g, res.w_shape, *p.geometry, impl=p.dense_impl)
    else:
        if needs[0]:
            wd = MK.scatter(_active_values(res.w, p), p.mask.index)
            dx = K.conv2d_grad_input(g, wd, res.x_shape, *p.geometry, impl=p.dense_impl)
        if needs[1]:
            dw = K.conv2d_grad_weight(x, g, p.mask.shape, *p.geometry, impl=p.dense_impl)
            if p.weight_grad == "masked":
                dw = MK.gather(dw, p.mask.index) if p.packed else dw * p.mask.mask
    return dx, dw, db


def conv2d_plan(specs, p, needs):
    x, w, b = specs
    w_shape = p.mask.shape if p.mask is not None else w.shape
    out = Spec(K.conv2d_output_shape(x.shape, w_shape, *p.geometry), x.dtype)
    fwd_ws, vjp_ws = _sap_workspace(x, p.sap, p.shared, needs[1])
    xc, cache = _cache_input(x, p.sap, p.shared, needs[1])
    if p.mask is not None:  # the lean masked kernels build the weight index while they run
        fwd_ws = {"weight_index": p.mask.index_nbytes, **fwd_ws}
        vjp_ws = {"weight_index": p.mask.index_nbytes, **vjp_ws}
    bits = Spec(((out.size + 7) // 8,), np.uint8) if p.relu else None
    res = ConvRes(xc, w if needs[0] else None, x.shape, w.shape, cache, bits)
    return Plan(out, res, fwd_ws, vjp_ws)


CONV2D = Primitive("conv2d", conv2d_fwd, conv2d_vjp, conv2d_plan)


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
    categories = {"x": "input_cache", "cache": "input_cache", "w": "standardised_kernel"}
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


def linear_plan(specs, params, needs):
    x, w, b = specs
    p = params or LinearParams()
    out = Spec(tuple(x.shape[:-1]) + (w.shape[0],), x.dtype)
    fwd_ws, vjp_ws = _sap_workspace(x, p.sap, p.shared, needs[1])
    xc, cache = _cache_input(x, p.sap, p.shared, needs[1])
    return Plan(out, LinearRes(xc, w if needs[0] else None, x.shape, cache), fwd_ws, vjp_ws)


LINEAR = Primitive("linear", linear_fwd, linear_vjp, linear_plan)
