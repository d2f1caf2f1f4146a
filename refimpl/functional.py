"""The public functional API (stable; auditors and cross-checkers script against it).

Each function takes NumPy arrays or traced :class:`refimpl.core.tape.Var` values. Called outside a
trace (no Var argument) it returns a plain ``numpy.ndarray``; inside a trace (see
:func:`refimpl.vjp`) it records one primitive on the tape and returns a Var.

Signatures follow ``torch.nn.functional`` (argument names, order and defaults) wherever PyTorch
has the op. Where PyTorch accepts a value refimpl does not implement (``ceil_mode=True``,
``return_indices=True``, string padding), a ``ValueError`` says so. Every op checks shapes and
dtypes up front and names itself, the expected and the received shapes or dtypes (CONV-1, CONV-2).
"""

from __future__ import annotations

import numpy as np

from .core.tape import Spec, Var, apply, value_of
from .kernels.masked_conv import WeightMask
from .ops import conv as _conv
from .ops import elementwise as _ew
from .ops import loss as _loss
from .ops import norm as _norm
from .ops import nsconv as _nsconv
from .ops import pool as _pool
from .ops import reduce as _reduce
from .ops import shape as _shape
from .ops.common import check_float, check_ndim, pair
from .sap import SapPolicy, SharedCache
from .sparsity import as_mask

__all__ = [
    "conv2d",
    "linear",
    "relu",
    "max_pool2d",
    "avg_pool2d",
    "global_avg_pool2d",
    "add",
    "mul",
    "reshape",
    "flatten",
    "sum",
    "mean",
    "cross_entropy",
    "batch_norm",
    "batch_norm2d",
    "nsconv2d",
    "NSCONV_EPS",
]

#: ε of the NSConv standardisation (NSC-1).
NSCONV_EPS = 1e-4


def _as_operand(op: str, v, like):
    """Python scalars become 0-d arrays of the other operand's dtype; arrays pass through."""
    if isinstance(v, Var) or isinstance(v, np.ndarray):
        return v
    if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
        return np.asarray(v, dtype=value_of(like).dtype)
    raise TypeError(f"{op}: expected an array, a Var or a Python number, received "
                    f"{type(v).__name__}")


def _as_mask(op: str, mask, w_shape) -> WeightMask:
    """A weight mask as a :class:`~refimpl.kernels.masked_conv.WeightMask` of the weight's shape.
    Masks are constants (TAPE-4). A WeightMask passes as it is (the engine builds one per layer
    per mask change, so its weight index is built once); an array is checked, never coerced:
    bool or exactly 0/1 (:func:`refimpl.sparsity.as_mask`)."""
    if isinstance(mask, Var):
        raise TypeError(f"{op}: mask is a constant and cannot be a traced value")
    if isinstance(mask, WeightMask):
        if mask.shape != tuple(w_shape):
            raise ValueError(f"{op}: expected mask of the weight's shape {tuple(w_shape)}, "
                             f"received {mask.shape}")
        return mask
    return WeightMask(as_mask(op, mask, w_shape))


def _as_sap(op: str, sap, shared_cache):
    """The SAP residual policy argument (SAP-1, SAP-2, CACHE-2): a
    :class:`refimpl.sap.SapPolicy` (built once per run with ``SapPolicy.make(gamma, policy)``)
    or None (no SAP: the layer keeps its input). ``shared_cache``: a
    :class:`refimpl.sap.SharedCache` given to every layer that reads this same input, so it is
    encoded and held once (SAP-1)."""
    if sap is not None and not isinstance(sap, SapPolicy):
        raise TypeError(f"{op}: sap must be a refimpl.sap.SapPolicy or None (build it once with "
                        f"SapPolicy.make(gamma, policy)), received {type(sap).__name__}")
    if shared_cache is not None and not isinstance(shared_cache, SharedCache):
        raise TypeError(f"{op}: shared_cache must be a refimpl.sap.SharedCache, received "
                        f"{type(shared_cache).__name__}")
    return sap


# ---- bilinear ---------------------------------------------------------------------------------
def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, mask=None,
           weight_grad="masked", sap=None, shared_cache=None, relu=False, relu_gain=1.0):
    """2-D convolution (cross-correlation), PyTorch semantics (CONV-1).

    input (N, C_in, H, W); weight (C_out, C_in/groups, kH, kW); bias (C_out,) or None;
    returns (N, C_out, H_out, W_out) with H_out = floor((H + 2p - d(kH - 1) - 1) / s) + 1.
    Residuals: the input (for the weight gradient) and the weight (for the input gradient).

    Keyword-only, beyond PyTorch: ``mask`` (bool or exactly 0/1 of the weight's shape, anything
    else is a ``ValueError``; or a :class:`~refimpl.kernels.masked_conv.WeightMask`) computes
    ``conv2d(input, where(mask, weight, 0))`` on every kernel path (MASK-3 enforced: every path
    uses only the active weights, so the result never depends on whether Numba is installed),
    and the weight gradient is zero off the mask unless ``weight_grad="dense"`` (growth scores,
    PG-5). ``sap``, ``shared_cache``: the SAP residual policy, see :func:`_as_sap` (SAP-1..3,
    CACHE-1..2). ``relu=True`` fuses a ReLU: ``relu(conv2d(...))`` in one node, computed in the
    output buffer, keeping the ReLU's bitmap (the same values and gradients as two ops);
    ``relu_gain`` (> 0, with ``relu=True``) multiplies it: ``relu(conv2d(...), gain=relu_gain)``.
    """
    x, w, b = value_of(input), value_of(weight), value_of(bias)
    check_float("conv2d", input=x, weight=w, bias=b)
    check_ndim("conv2d", "weight", w, 4, "(C_out, C_in/groups, kH, kW)")
    if weight_grad not in ("masked", "dense"):
        raise ValueError(f"conv2d: weight_grad must be 'masked' or 'dense', received "
                         f"{weight_grad!r}")
    m = None if mask is None else _as_mask("conv2d", mask, w.shape)
    return _conv2d(input, weight, bias, stride, padding, dilation, groups, m, weight_grad, sap,
                   shared_cache, w.shape, relu=relu, relu_gain=relu_gain)


def _check_gain(op: str, gain, relu: bool = True) -> float:
    """A ReLU gain: a finite number > 0, and only where there is a ReLU to scale."""
    if isinstance(gain, bool) or not isinstance(gain, (int, float, np.floating, np.integer)) \
            or not np.isfinite(gain) or not gain > 0:
        raise ValueError(f"{op}: relu gain must be a finite number > 0, received {gain!r}")
    if not relu and gain != 1:
        raise ValueError(f"{op}: relu_gain = {gain} scales a fused ReLU; pass relu=True with it")
    return float(gain)


def _conv2d(input, weight, bias, stride, padding, dilation, groups, m, weight_grad, sap,
            shared_cache, w_shape, packed=False, relu=False, relu_gain=1.0):
    """Checks shared by conv2d and nsconv2d, then the primitive. ``w_shape`` is the dense
    weight's shape (the operand is (nnz,) when ``packed``)."""
    relu_gain = _check_gain("conv2d", relu_gain, bool(relu))
    x, b = value_of(input), value_of(bias)
    sap = _as_sap("conv2d", sap, shared_cache)
    check_ndim("conv2d", "input", x, 4, "(N, C_in, H, W)")
    if isinstance(padding, str):
        raise ValueError(f"conv2d: string padding {padding!r} is not supported; give ints")
    if not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"conv2d: groups must be a positive int, received {groups!r}")
    c = x.shape[1]
    if c % groups or w_shape[0] % groups or w_shape[1] * groups != c:
        raise ValueError(
            f"conv2d: expected weight of shape (C_out, {c // groups if c % groups == 0 else '?'},"
            f" kH, kW) with C_out divisible by groups={groups} for input with {c} channels, "
            f"received weight shape {tuple(w_shape)} and input shape {x.shape}"
        )
    if b is not None and b.shape != (w_shape[0],):
        raise ValueError(f"conv2d: expected bias of shape ({w_shape[0]},), received {b.shape}")
    p = _conv.ConvParams(
        pair("conv2d", "stride", stride),
        pair("conv2d", "padding", padding),
        pair("conv2d", "dilation", dilation),
        int(groups),
        mask=m,
        weight_grad=weight_grad,
        sap=sap,
        shared=shared_cache if sap is not None else None,
        packed=packed,
        relu=bool(relu),
        relu_gain=relu_gain,
    )
    if min(p.stride) < 1 or min(p.dilation) < 1 or min(p.padding) < 0:
        raise ValueError(
            f"conv2d: expected stride >= 1, dilation >= 1, padding >= 0, received stride "
            f"{p.stride}, dilation {p.dilation}, padding {p.padding}"
        )
    return apply(_conv.CONV2D, (input, weight, bias), p)


def linear(input, weight, bias=None, *, sap=None, shared_cache=None):
    """y = input @ weight.T + bias. input (*, in), weight (out, in), bias (out,) -> (*, out).

    Residuals: the input (for the weight gradient; under SAP its compressed x̂ over the whole
    tensor, see :func:`_as_sap`) and the weight (for the input gradient)."""
    x, w, b = value_of(input), value_of(weight), value_of(bias)
    sap = _as_sap("linear", sap, shared_cache)
    check_float("linear", input=x, weight=w, bias=b)
    check_ndim("linear", "weight", w, 2, "(out_features, in_features)")
    if x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(
            f"linear: expected input of shape (*, {w.shape[1]}) for weight {w.shape}, "
            f"received {x.shape}"
        )
    if b is not None and b.shape != (w.shape[0],):
        raise ValueError(f"linear: expected bias of shape ({w.shape[0]},), received {b.shape}")
    p = None if sap is None else _conv.LinearParams(sap, shared_cache)
    return apply(_conv.LINEAR, (input, weight, bias), p)


# ---- elementwise ------------------------------------------------------------------------------
def relu(input, inplace=False, *, gain=1.0):
    """max(input, 0); ReLU'(0) = 0 (CONV-5). Residual: a packed bitmap of (input > 0).
    Keyword-only, beyond PyTorch: ``gain`` (> 0) returns ``gain · max(input, 0)`` (the same
    bitmap; ``model.relu_gain``, docs/decisions.md)."""
    if inplace:
        raise ValueError("relu: inplace=True is not supported (the tape never mutates values)")
    check_float("relu", input=value_of(input))
    gain = _check_gain("relu", gain)
    return apply(_ew.RELU, (input,), None if gain == 1.0 else _ew.ReluParams(gain))


def _broadcast_check(op: str, a, b) -> None:
    check_float(op, input=value_of(a), other=value_of(b))
    try:
        np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(
            f"{op}: shapes {a.shape} and {b.shape} do not broadcast; expected equal sizes or 1 "
            f"on each trailing axis"
        ) from None


def add(input, other):
    """input + other with NumPy broadcasting. No arrays kept."""
    other = _as_operand("add", other, input)
    input = _as_operand("add", input, other)
    _broadcast_check("add", input, other)
    return apply(_ew.ADD, (input, other), None)


def mul(input, other):
    """input * other with NumPy broadcasting. Keeps the other operand of each input that needs
    a gradient."""
    other = _as_operand("mul", other, input)
    input = _as_operand("mul", input, other)
    _broadcast_check("mul", input, other)
    return apply(_ew.MUL, (input, other), None)


# ---- shape ------------------------------------------------------------------------------------
def reshape(input, shape):
    """input viewed with ``shape`` in C order (one entry may be -1)."""
    x = value_of(input)
    shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
    known = int(np.prod([s for s in shape if s != -1]))
    free = [i for i, s in enumerate(shape) if s == -1]
    target = list(shape)
    if len(free) == 1 and known > 0 and x.size % known == 0:
        target[free[0]] = x.size // known
    if len(free) > 1 or min(target, default=0) < 0 or int(np.prod(target)) != x.size:
        raise ValueError(
            f"reshape: cannot view input of shape {x.shape} ({x.size} elements) as {shape}"
        )
    target = tuple(target)
    return apply(_shape.RESHAPE, (input,), _shape.ReshapeParams(target))


def flatten(input, start_dim=0, end_dim=-1):
    """Merge axes start_dim..end_dim (inclusive) into one, like ``torch.flatten``."""
    shp = value_of(input).shape
    nd = max(len(shp), 1)
    s, e = start_dim % nd, end_dim % nd
    if s > e:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
    merged = int(np.prod(shp[s : e + 1])) if shp else 1
    return reshape(input, shp[:s] + (merged,) + shp[e + 1 :])


# ---- reductions -------------------------------------------------------------------------------
def _axes(op: str, ndim: int, dim) -> tuple[int, ...]:
    if dim is None:
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, (int, np.integer)) else tuple(dim)
    out = []
    for d in dims:
        if not -ndim <= d < max(ndim, 1):
            raise ValueError(f"{op}: dim {d} is out of range for a {ndim}-d input")
        out.append(int(d) % max(ndim, 1))
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: dim {dim!r} repeats an axis")
    return tuple(sorted(out))


def sum(input, dim=None, keepdim=False):  # noqa: A001 - PyTorch's name
    """Sum over ``dim`` (all axes when None)."""
    x = value_of(input)
    check_float("sum", input=x)
    p = _reduce.ReduceParams(_axes("sum", x.ndim, dim), bool(keepdim), False)
    return apply(_reduce.REDUCE, (input,), p)


def mean(input, dim=None, keepdim=False):
    """Mean over ``dim`` (all axes when None)."""
    x = value_of(input)
    check_float("mean", input=x)
    p = _reduce.ReduceParams(_axes("mean", x.ndim, dim), bool(keepdim), True)
    return apply(_reduce.REDUCE, (input,), p)


# ---- pooling ----------------------------------------------------------------------------------
def _pool_params(op, x, kernel_size, stride, padding, dilation, ceil_mode, **extra):
    check_float(op, input=x)
    check_ndim(op, "input", x, 4, "(N, C, H, W)")
    if ceil_mode:
        raise ValueError(f"{op}: ceil_mode=True is not supported; use ceil_mode=False")
    k = pair(op, "kernel_size", kernel_size)
    s = k if stride is None or stride == [] or stride == () else pair(op, "stride", stride)
    p = _pool.PoolParams(k, s, pair(op, "padding", padding), pair(op, "dilation", dilation),
                         **extra)
    if min(k) < 1 or min(s) < 1 or min(p.dilation) < 1:
        raise ValueError(f"{op}: expected kernel_size, stride, dilation >= 1, received {k}, {s}, "
                         f"{p.dilation}")
    if any(pd < 0 or pd > kk // 2 for pd, kk in zip(p.padding, k)):
        raise ValueError(
            f"{op}: padding {p.padding} must be between 0 and half the kernel size {k}"
        )
    _pool.pool_output_hw(op, x.shape[2], x.shape[3], p)
    return p


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """Max over each window (pads with -inf); the first maximum in row-major window order gets
    the gradient (CONV-5). Residual: the argmax window position, uint8, one byte per output."""
    if return_indices:
        raise ValueError("max_pool2d: return_indices=True is not supported")
    p = _pool_params("max_pool2d", value_of(input), kernel_size, stride, padding, dilation,
                     ceil_mode)
    if p.kernel[0] * p.kernel[1] > 256:
        raise ValueError(f"max_pool2d: windows of {p.kernel} exceed 256 positions (uint8 argmax)")
    return apply(_pool.MAX_POOL2D, (input,), p)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    """Mean over each zero-padded window, with PyTorch's divisor rules. No arrays kept."""
    if divisor_override is not None and (not isinstance(divisor_override, int) or
                                         divisor_override < 1):
        raise ValueError(f"avg_pool2d: divisor_override must be a positive int, received "
                         f"{divisor_override!r}")
    p = _pool_params("avg_pool2d", value_of(input), kernel_size, stride, padding, 1, ceil_mode,
                     count_include_pad=bool(count_include_pad), divisor_override=divisor_override)
    return apply(_pool.AVG_POOL2D, (input,), p)


def global_avg_pool2d(input):
    """Mean over (H, W): (N, C, H, W) -> (N, C) (like ``adaptive_avg_pool2d(x, 1)`` then
    flatten). No arrays kept."""
    x = value_of(input)
    check_float("global_avg_pool2d", input=x)
    check_ndim("global_avg_pool2d", "input", x, 4, "(N, C, H, W)")
    return apply(_pool.GLOBAL_AVG_POOL2D, (input,), None)


# ---- loss -------------------------------------------------------------------------------------
def cross_entropy(input, target, reduction="mean"):
    """Softmax cross-entropy of logits ``input`` (N, C) against integer class labels ``target``
    (N,), mean over the batch (or sum). Fused and max-shifted. Residual: the softmax
    probabilities and the labels (SAP-4)."""
    x = value_of(input)
    check_float("cross_entropy", input=x)
    check_ndim("cross_entropy", "input", x, 2, "(N, C) logits")
    if isinstance(target, Var):
        raise TypeError("cross_entropy: target holds labels and cannot be a traced value")
    t = np.asarray(target)
    if t.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: target must hold integer labels, received dtype {t.dtype}")
    if t.shape != (x.shape[0],):
        raise ValueError(
            f"cross_entropy: expected target of shape ({x.shape[0]},) for input {x.shape}, "
            f"received {t.shape}"
        )
    if t.size and (t.min() < 0 or t.max() >= x.shape[1]):
        raise ValueError(
            f"cross_entropy: labels must lie in [0, {x.shape[1]}), received range "
            f"[{t.min()}, {t.max()}]"
        )
    if reduction not in ("mean", "sum"):
        raise ValueError(f"cross_entropy: reduction must be 'mean' or 'sum', received "
                         f"{reduction!r}")
    if x.shape[0] == 0:
        raise ValueError("cross_entropy: empty batch")
    p = _loss.CrossEntropyParams(t.astype(np.int64), reduction)
    return apply(_loss.CROSS_ENTROPY, (input,), p)


# ---- normalisation ----------------------------------------------------------------------------
def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-05, relu=False, relu_gain=1.0):
    """Batch normalisation over axis 1, PyTorch semantics.

    training=True normalises with the batch mean and biased variance over all axes but 1, and
    updates ``running_mean``/``running_var`` in place (momentum; unbiased variance), when given.
    training=False normalises with the running statistics. Residual: x̂ and 1/std per channel.
    ``relu``: the ReLU that follows, in the same pass and node: relu_gain · max(y, 0), the
    values and gradients of ``relu(batch_norm(...), gain=relu_gain)`` (its bitmap kept too).
    """
    x, w, b = value_of(input), value_of(weight), value_of(bias)
    check_float("batch_norm", input=x, weight=w, bias=b)
    if x.ndim < 2:
        raise ValueError(f"batch_norm: expected input (N, C, ...), received shape {x.shape}")
    c = x.shape[1]
    for name, a in (("weight", w), ("bias", b), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if a is not None and np.shape(a) != (c,):
            raise ValueError(f"batch_norm: expected {name} of shape ({c},), received "
                             f"{np.shape(a)}")
    axes = (0,) + tuple(range(2, x.ndim))
    gain = _check_gain("batch_norm", relu_gain, relu)
    if isinstance(x, Spec):  # a dry trace: shapes only, no statistics to compute
        if training and x.size // c < 2:
            raise ValueError(f"batch_norm: training needs more than 1 value per channel, "
                             f"received input shape {x.shape}")
        p = _norm.BatchNormParams(None, None, float(eps), bool(training), bool(relu), gain)
        return apply(_norm.BATCH_NORM, (input, weight, bias), p)
    if training:
        count = x.size // c
        if count < 2:
            raise ValueError(f"batch_norm: training needs more than 1 value per channel, "
                             f"received input shape {x.shape}")
        m, v = _norm.batch_stats(x, axes)
        if running_mean is not None:
            running_mean *= 1 - momentum
            running_mean += momentum * m
        if running_var is not None:
            running_var *= 1 - momentum
            running_var += momentum * v * (count / (count - 1))
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm: training=False needs running_mean and running_var")
        m, v = np.asarray(running_mean, dtype=x.dtype), np.asarray(running_var, dtype=x.dtype)
    p = _norm.BatchNormParams(m, v, float(eps), bool(training), bool(relu), gain)
    return apply(_norm.BATCH_NORM, (input, weight, bias), p)


def batch_norm2d(input, running_mean, running_var, weight=None, bias=None, training=False,
                 momentum=0.1, eps=1e-05, relu=False, relu_gain=1.0):
    """:func:`batch_norm` for NCHW input only."""
    check_ndim("batch_norm2d", "input", value_of(input), 4, "(N, C, H, W)")
    return batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps,
                      relu, relu_gain)


# ---- NSConv -----------------------------------------------------------------------------------
def nsconv2d(input, weight, mask, gain, bias=None, stride=1, padding=0, groups=1, stats="dense",
             eps=NSCONV_EPS, *, weight_grad="masked", sap=None, shared_cache=None, relu=False,
             relu_gain=1.0):
    """Normalised sparse convolution (SPEC §3): ``conv2d(input, Ŵ, bias)`` with the
    per-output-channel standardised kernel Ŵ = g ⊙ (W − μ) / sqrt(max(s²·F, ε)) ⊙ M.

    weight (C_out, C_in/groups, kH, kW); mask: bool or exactly 0/1 array of the weight's shape,
    or a :class:`~refimpl.kernels.masked_conv.WeightMask` (a constant; Ŵ is zero where it is
    False, NSC-3); gain (C_out,); ``stats`` is ``"dense"`` (NSC-1) or ``"masked"`` (NSC-2), or a
    compat mode of the authors' code (docs/DEVIATIONS.md): ``"authors"`` (NSC-1 statistics, mask
    ``mask ∧ (weight ≠ 0)``) or ``"authors_method1"`` (their commented-out method 1).
    Gradients reach weight and gain through the mean and variance (NSC-3). Residuals: per-channel
    scale of the standardisation, and Ŵ kept by the convolution (an intermediate; a masked layer
    keeps only its nnz active values). ``sap``, ``shared_cache``: the convolution's SAP residual
    policy (:func:`conv2d`); SAP applies to NSConv inputs like to any conv (SAP-1). ``relu``,
    ``relu_gain``: a fused ReLU and its gain, as in :func:`conv2d`.
    """
    w, g = value_of(weight), value_of(gain)
    check_float("nsconv2d", weight=w, gain=g, input=value_of(input), bias=value_of(bias))
    check_ndim("nsconv2d", "weight", w, 4, "(C_out, C_in/groups, kH, kW)")
    m = _as_mask("nsconv2d", mask, w.shape)
    if g.shape != (w.shape[0],):
        raise ValueError(f"nsconv2d: expected gain of shape ({w.shape[0]},), received {g.shape}")
    if stats not in _nsconv.ALL_STATS:
        raise ValueError(f"nsconv2d: stats must be one of {_nsconv.ALL_STATS}, received "
                         f"{stats!r}")
    if not eps > 0:
        raise ValueError(f"nsconv2d: eps must be > 0, received {eps}")
    _as_sap("nsconv2d", sap, shared_cache)  # fail before recording
    # A masked layer's Ŵ travels packed (its active values only) into the masked convolution.
    p = _nsconv.StandardizeParams.make(m, w, stats, eps,
                                       packed=not m.dense and weight_grad == "masked")
    what = apply(_nsconv.STANDARDIZE, (weight, gain), p)
    if p.packed:
        return _conv2d(input, what, bias, stride, padding, 1, groups, p.mask, weight_grad, sap,
                       shared_cache, w.shape, packed=True, relu=relu, relu_gain=relu_gain)
    # An all-true mask (a dense model, ERK-3) runs the dense BLAS kernels: the same function,
    # several times faster than the masked kernels visiting every weight. So does a non-finite
    # Ŵ (compat `authors_method1`): a dense convolution spreads its NaN as the authors' code does.
    dense = p.mask.dense or (stats == "authors_method1"
                             and not np.isfinite(value_of(what)).all())
    return conv2d(input, what, bias, stride=stride, padding=padding, groups=groups,
                  mask=None if dense else p.mask, weight_grad=weight_grad, sap=sap,
                  shared_cache=shared_cache, relu=relu, relu_gain=relu_gain)
