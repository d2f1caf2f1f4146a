"""The analytic memory ledger (SPEC §5: MEM-1..MEM-4).

:func:`ledger` walks a model's layer graph (``models.graph``) with shapes alone, never running
the model, and lists per layer and category the bytes a training step holds. The activation
cache it predicts is exactly what ``Tape.residual_nbytes()`` measures after the forward pass of
``models.forward`` on a tape whose parameters are leaves (MEM-2), because it mirrors the residual
record of every primitive the interpreter calls:

    category             held by                              bytes (s = itemsize)
    input_cache          conv2d / linear input (SAP cache)    sap.format_nbytes(fmt, numel, k, s)
    standardised_kernel  NSConv Ŵ, kept by its conv for dx    prod(weight shape) · s (not for a
                                                              conv whose input is the data batch)
    nsconv_scale         NSConv r (C_out,) and flags          C_out · s + C_out
    bn                   BatchNorm x̂ and 1/std                numel(out) · s + C_out · s
    relu_bitmap          ReLU (out > 0), packed               ceil(numel / 8)
    maxpool_argmax       max-pool argmax in window, uint8     numel(out)
    loss                 cross-entropy probabilities, labels  N · classes · s + N · 8

What counts (see docs/memory.md): the data batch cached by the first conv counts (it is the
buffer the tape holds; with SAP it is a compressed copy); parameters referenced as operands do
not (they are the caller's memory, TAPE-3); add, reshape and average pooling hold nothing. A
block's first conv and its projection shortcut hold one shared cache (SAP-1), counted once.

Model-side categories per layer (MEM-1, MEM-3), with N_l the prunable size, n_l its nonzeros
(ERK-2 counts), P_l its other parameters (bias, NSConv gain, BatchNorm weight and bias) and B_l
its buffers (BatchNorm running statistics):

    weights_dense    (N_l + P_l + B_l) · s
    weights_sparse   n_l · s + ceil(N_l / 8) + (P_l + B_l) · s   (values + mask bitmap)
    masks            N_l bytes: the bool mask arrays the training loop holds
    gradients        (n_l + P_l) · s   (MASK-3: masked entries carry no gradient)
    optimizer_state  gradients when momentum is on, else 0 (plain SGD keeps no state)

A density d >= 1 is a dense model with no mask machinery (ERK-3): sparse = dense, masks = 0.
Totals: footprint = weights_sparse + activation_cache (the paper's measure, MEM-3);
training_peak = footprint + gradients + optimizer_state. ``*_dense`` variants give what this
implementation's dense arrays take (dense weights, bool masks, dense gradients and state).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from . import sap as S
from .kernels.conv import conv2d_output_shape
from .sparsity import KINDS, exact_fraction, layer_counts

__all__ = ["CATEGORIES", "SCHEMA_VERSION", "Ledger", "ledger", "communication", "largest_batch",
           "parse_shape"]

SCHEMA_VERSION = 1
CATEGORIES = ("input_cache", "standardised_kernel", "nsconv_scale", "bn", "relu_bitmap",
              "maxpool_argmax", "loss")
_PARAM_KEYS = ("weights_dense", "weights_sparse", "masks", "gradients", "gradients_dense",
               "optimizer_state", "optimizer_state_dense")


@dataclass
class Ledger:
    """A ledger: ``config`` (the inputs), ``layers`` (one dict per graph layer, execution
    order), ``totals`` (int bytes), ``activation_by_category`` (int bytes), ``counts``
    (parameter and nonzero counts) and ``communication`` (MEM-4, int bytes per client per
    round). :meth:`to_json` gives the stable schema documented in docs/memory.md."""

    config: dict
    layers: list[dict]
    totals: dict[str, int]
    activation_by_category: dict[str, int]
    counts: dict[str, int]
    communication: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"schema": "fedmef.memory", "schema_version": SCHEMA_VERSION,
                "config": self.config, "totals": self.totals,
                "activation_by_category": self.activation_by_category, "counts": self.counts,
                "communication": self.communication, "layers": self.layers}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def parse_shape(text: str) -> tuple[int, ...]:
    """``"3x32x32"`` -> (3, 32, 32)."""
    try:
        shape = tuple(int(p) for p in str(text).lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input shape must be CxHxW with positive ints, e.g. 3x32x32; received "
                         f"{text!r}")
    return shape


def _model(model, input_shape, num_classes, norm, width, dtype):
    import models  # the zoo lives beside refimpl; imported here to keep refimpl importable alone

    if isinstance(model, str):
        dt = np.dtype(np.float32 if dtype is None else dtype)
        return models.build(model, input_shape[0], num_classes, norm=norm, width=width, dtype=dt)
    if not isinstance(model, models.Model):
        raise TypeError(f"ledger: model must be a models.Model or a zoo name ({models.names()}), "
                        f"received {type(model).__name__}")
    return model


class _Walker:
    """Shape-only twin of ``models.graph._run``: one row per layer."""

    def __init__(self, itemsize, policy, nnz, momentum, sparse):
        self.s, self.policy = itemsize, policy
        self.nnz, self.momentum, self.sparse = nnz, momentum, sparse
        self.rows: list[dict] = []
        self.last = "input"

    def row(self, name, kind, in_shape, out_shape, **extra):
        r = {"name": name, "kind": kind, "input_shape": list(in_shape),
             "output_shape": list(out_shape), "params": 0, "prunable": 0, "nnz": 0}
        r.update({k: 0 for k in _PARAM_KEYS})
        r.update({"cache_format": None, "cache_numel": 0, "cache_keep": 0,
                  "cache_shared_with": None, "activation": {c: 0 for c in CATEGORIES},
                  "activation_no_sap": 0, "activation_int32_index": 0})
        r.update(extra)
        self.rows.append(r)
        return r

    def params(self, r, name, weight_shape, other, buffers):
        s, n = self.s, math.prod(weight_shape)
        nnz = self.nnz.get(f"{name}.weight", n)
        r.update(params=n + other, prunable=n, nnz=nnz)
        r["weights_dense"] = (n + other + buffers) * s
        r["weights_sparse"] = (nnz * s + (n + 7) // 8 if self.sparse else n * s) \
            + (other + buffers) * s
        r["masks"] = n if self.sparse else 0
        r["gradients"] = (nnz + other) * s
        r["gradients_dense"] = (n + other) * s
        r["optimizer_state"] = r["gradients"] if self.momentum else 0
        r["optimizer_state_dense"] = r["gradients_dense"] if self.momentum else 0

    def cache(self, r, in_shape, shared_with):
        """The input cache of a conv/linear (SAP-2, CACHE-1/2) and its no-SAP and int32 twins."""
        numel, s = math.prod(in_shape), self.s
        k = self.policy.keep_count(numel) if self.policy else numel
        fmt = S.choose_format(self.policy.policy, numel, k, s) if self.policy else "dense"
        r.update(cache_format=fmt, cache_numel=numel, cache_keep=k, cache_shared_with=shared_with)
        if shared_with is None:
            r["activation"]["input_cache"] = S.format_nbytes(fmt, numel, k, s)
            r["activation_no_sap"] += numel * s
            r["activation_int32_index"] += k * (4 + s)

    def conv(self, layer, in_shape, traced, shared_with):
        if len(in_shape) != 4 or in_shape[1] != layer.in_ch:
            raise ValueError(f"ledger: layer {layer.name} expects (N, {layer.in_ch}, H, W) input, "
                             f"the walk reaches it with shape {tuple(in_shape)}; check the "
                             f"input shape (C x H x W) against the model")
        out = conv2d_output_shape(in_shape, layer.weight_shape, (layer.stride,) * 2,
                                  (layer.padding,) * 2, (1, 1), layer.groups)
        kind = "dwconv" if layer.groups > 1 and layer.groups == layer.in_ch else "conv"
        r = self.row(layer.name, kind, in_shape, out, norm=layer.norm)
        c, s = layer.out_ch, self.s
        other = c * (int(layer.bias) + int(layer.norm == "nsconv") + 2 * int(layer.norm == "bn"))
        self.params(r, layer.name, layer.weight_shape, other, 2 * c if layer.norm == "bn" else 0)
        self.cache(r, in_shape, shared_with)
        act = r["activation"]
        if layer.norm == "nsconv":
            act["nsconv_scale"] = c * s + c  # r_o in the weights' dtype + bool clamp flags
            # Ŵ is an intermediate the conv keeps for its input gradient: none for data input
            act["standardised_kernel"] = math.prod(layer.weight_shape) * s if traced else 0
        elif layer.norm == "bn":
            act["bn"] = math.prod(out) * s + c * s
        self.last = layer.name
        return out

    def linear(self, layer, in_shape):
        if in_shape[-1] != layer.in_features:
            raise ValueError(f"ledger: layer {layer.name} expects (*, {layer.in_features}) input, "
                             f"the walk reaches it with shape {tuple(in_shape)}")
        out = tuple(in_shape[:-1]) + (layer.out_features,)
        r = self.row(layer.name, "linear", in_shape, out, norm=None)
        self.params(r, layer.name, layer.weight_shape, layer.out_features * int(layer.bias), 0)
        self.cache(r, in_shape, None)
        self.last = layer.name
        return out

    def run(self, layers, shape, traced, shared_with=None):
        """Walk ``layers`` from ``shape``; ``traced``: whether the activation is a tape value
        (the data batch is not; everything after a conv or linear is). Returns (shape, traced).
        ``shared_with``: name of the conv whose input cache the first layer here shares."""
        import models.graph as G

        for i, layer in enumerate(layers):
            if isinstance(layer, G.Conv):
                shape = self.conv(layer, shape, traced, shared_with if i == 0 else None)
                traced = True
            elif isinstance(layer, G.Linear):
                shape = self.linear(layer, shape)
                traced = True
            elif isinstance(layer, G.ReLU):
                r = self.row(f"{self.last}.relu", "relu", shape, shape, norm=None)
                r["activation"]["relu_bitmap"] = (math.prod(shape) + 7) // 8 if traced else 0
            elif isinstance(layer, G.MaxPool):
                n, c, h, w = shape
                out = (n, c, (h - layer.kernel) // layer.stride + 1,
                       (w - layer.kernel) // layer.stride + 1)
                r = self.row(f"{self.last}.maxpool", "maxpool", shape, out, norm=None)
                r["activation"]["maxpool_argmax"] = math.prod(out) if traced else 0
                shape = out
            elif isinstance(layer, G.GlobalAvgPool):
                out = tuple(shape[:2])
                self.row("avgpool", "avgpool", shape, out, norm=None)
                shape = out
            elif isinstance(layer, G.Residual):
                block = layer.body[0].name.rsplit(".", 1)[0] if layer.body else self.last
                share = G.shares_input_cache(layer)
                body, t_body = self.run(layer.body, shape, traced)
                first = layer.body[0].name if share else None
                short, t_short = self.run(layer.shortcut, shape, traced, first) \
                    if layer.shortcut else (shape, traced)
                if tuple(body) != tuple(short):
                    raise ValueError(f"ledger: block {block} adds shapes {body} and {short}")
                self.row(f"{block}.add", "add", body, body, norm=None)
                self.last = block
                shape, traced = body, t_body or t_short
                if layer.relu:
                    r = self.row(f"{block}.relu", "relu", shape, shape, norm=None)
                    r["activation"]["relu_bitmap"] = (math.prod(shape) + 7) // 8 if traced else 0
            else:
                raise TypeError(f"ledger: unknown layer {layer!r}")
        return shape, traced


def _finish(rows):
    for r in rows:
        other = sum(v for k, v in r["activation"].items() if k != "input_cache")
        r["activation_cache"] = sum(r["activation"].values())
        r["activation_cache_no_sap"] = r.pop("activation_no_sap") + other
        r["activation_cache_int32_index"] = r.pop("activation_int32_index") + other
    return rows


def ledger(model, input_shape, batch, *, density=1.0, density_kind="erk", gamma=0.0,
           policy="auto", dtype=None, momentum=False, nsconv_stats="dense", num_classes=10,
           norm="nsconv", width=1.0, loss=True, alpha_t=0.3) -> Ledger:
    """The analytic ledger of one training step (MEM-1, MEM-3, MEM-4).

    model: a built ``models.Model`` or a zoo name (built with in_channels = input_shape[0],
    ``num_classes``, ``norm``, ``width``). input_shape (C, H, W); batch N >= 1. density d and
    density_kind (ERK-1/2) give the per-layer nonzeros; gamma γ ∈ [0, 1) and policy (dense |
    bitmap | index | auto) the SAP caches, applied as ``models.RunOptions(sap_gamma=gamma,
    cache_policy=policy)`` applies them. dtype: float32 | float64 (None: the model's, float32 for
    a name). momentum: SGD momentum buffers on. nsconv_stats: NSC-1/NSC-2 (same sizes: both keep
    (C_out,) statistics). loss: include the cross-entropy residual (a training step computes it;
    False for a bare ``models.forward``). alpha_t: α_t of the adjustment round for the growth
    pairs of MEM-4 (default 0.3, the paper's α, an upper bound on every round's α_t).
    """
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"ledger: batch must be an int >= 1, received {batch!r}")
    input_shape = tuple(int(v) for v in input_shape)
    if len(input_shape) != 3:
        raise ValueError(f"ledger: input_shape must be (C, H, W), received {input_shape}")
    if density_kind not in KINDS:
        raise ValueError(f"ledger: unknown density_kind {density_kind!r}; valid: {KINDS}")
    if nsconv_stats not in ("dense", "masked"):
        raise ValueError(f"ledger: nsconv_stats must be 'dense' or 'masked', received "
                         f"{nsconv_stats!r}")
    sap_policy = S.SapPolicy.make(gamma, policy)
    m = _model(model, input_shape, num_classes, norm, width, dtype)
    dt = np.dtype(dtype) if dtype is not None else next(iter(m.params.values())).dtype
    if dt not in (np.float32, np.float64):
        raise ValueError(f"ledger: dtype must be float32 or float64, received {dt}")
    shapes = {n: m.params[n].shape for n in m.prunable}
    d = exact_fraction(density)
    sparse = d < 1
    nnz = {}
    if sparse:
        counts = layer_counts(list(shapes.values()), density, density_kind)
        nnz = dict(zip(shapes, counts, strict=True))
    walker = _Walker(dt.itemsize, sap_policy, nnz, bool(momentum), sparse)
    out, _ = walker.run(m.layers, (int(batch),) + input_shape, False)
    if loss:
        if len(out) != 2:
            raise ValueError(f"ledger: the model ends in shape {out}, expected (N, classes)")
        r = walker.row("loss", "loss", out, (), norm=None)
        r["activation"]["loss"] = math.prod(out) * dt.itemsize + out[0] * 8  # probs + int64
    rows = _finish(walker.rows)
    totals = {k: sum(r[k] for r in rows) for k in _PARAM_KEYS}
    for k in ("activation_cache", "activation_cache_no_sap", "activation_cache_int32_index"):
        totals[k] = sum(r[k] for r in rows)
    totals["footprint"] = totals["weights_sparse"] + totals["activation_cache"]
    totals["footprint_no_sap"] = totals["weights_sparse"] + totals["activation_cache_no_sap"]
    totals["training_peak"] = totals["footprint"] + totals["gradients"] \
        + totals["optimizer_state"]
    totals["training_peak_dense"] = (totals["weights_dense"] + totals["masks"]
                                     + totals["gradients_dense"] + totals["optimizer_state_dense"]
                                     + totals["activation_cache"])
    by_cat = {c: sum(r["activation"][c] for r in rows) for c in CATEGORIES}
    counts = {"params": sum(r["params"] for r in rows),
              "prunable": sum(r["prunable"] for r in rows), "nnz": sum(r["nnz"] for r in rows)}
    config = {"model": m.name, "input_shape": list(input_shape), "batch": int(batch),
              "density": str(density), "density_kind": density_kind, "gamma": str(gamma),
              "policy": policy, "dtype": dt.name, "momentum": bool(momentum),
              "nsconv_stats": nsconv_stats, "loss": bool(loss), "alpha_t": float(alpha_t)}
    comm = communication(rows, dt.itemsize, sparse, alpha_t)
    return Ledger(config, rows, totals, by_cat, counts, comm)


def communication(rows, itemsize: int, sparse: bool, alpha_t: float) -> dict[str, int]:
    """MEM-4, bytes per client per round from the ledger's layer rows.

    down: nonzero values of the prunable tensors + every dense tensor (biases, gains, BatchNorm
    parameters and running statistics); mask_bitmap: ceil(N_l/8) per layer, sent when the mask
    changed; up: the same values and dense tensors; growth_pairs (adjustment rounds): per layer
    k_l = min(ceil(α_t·n_l), n_l, N_l − n_l) (flat index, value) pairs, the index in the
    narrowest of uint8/16/32 that holds N_l − 1 (as CACHE-1)."""
    values = sum(r["weights_sparse"] - ((r["prunable"] + 7) // 8 if sparse else 0)
                 for r in rows)
    bitmap = sum((r["prunable"] + 7) // 8 for r in rows) if sparse else 0
    pairs = 0
    if sparse:
        for r in rows:
            n, nnz = r["prunable"], r["nnz"]
            if n:
                k = min(math.ceil(alpha_t * nnz), nnz, n - nnz)
                pairs += k * (S.index_dtype(n).itemsize + itemsize)
    return {"down": values, "mask_bitmap": bitmap, "down_mask_changed": values + bitmap,
            "up": values, "growth_pairs": pairs, "up_adjustment": values + pairs}


def largest_batch(budget: int, model, input_shape, *, key: str = "training_peak",
                  limit: int = 1 << 20, **kw) -> int:
    """The largest batch N (<= limit) whose ``totals[key]`` fits in ``budget`` bytes; 0 when
    not even N = 1 fits. Every total is non-decreasing in N (each cache format's size is), so a
    doubling search and bisection find it."""
    m = _model(model, tuple(input_shape), kw.get("num_classes", 10), kw.get("norm", "nsconv"),
               kw.get("width", 1.0), kw.get("dtype"))
    kw = {k: v for k, v in kw.items() if k not in ("num_classes", "norm", "width")}

    def fits(n):
        try:
            return ledger(m, input_shape, n, **kw).totals[key] <= budget
        except ValueError:  # e.g. an index cache beyond uint32 (CACHE-1): does not fit
            return False

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:  # invariant: fits(lo), not fits(hi) (or hi beyond the limit)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
