"""Model definitions as data: a small layer graph that one interpreter runs (:func:`forward`)
and that analytic tools (parameter counts, the memory ledger) walk without running anything.

Layers (all frozen records):
- :class:`Conv`: a conv unit. ``norm`` says what follows the convolution: ``"none"``, ``"bn"``
  (BatchNorm2d; baselines only) or ``"nsconv"`` (weight-standardised sparse conv, SPEC §3).
- :class:`Linear`, :class:`ReLU`, :class:`MaxPool`, :class:`GlobalAvgPool`.
- :class:`ResidualBlock`: ``body(x) + shortcut(x)``, then a ReLU when ``relu`` is set; an empty
  shortcut is the identity. The body's first conv and a projection shortcut read the same input.

Parameter names: ``{layer}.weight``, ``{layer}.bias``, ``{layer}.gain`` (NSConv),
``{layer}.bn.weight``, ``{layer}.bn.bias``; buffers ``{layer}.bn.running_mean``,
``{layer}.bn.running_var``. Prunable tensors (MASK-1) are the conv and linear weights, in layer
order; biases, gains and BatchNorm parameters are dense.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .. import functional as F
from ..core.tape import scope
from ..kernels.masked_conv import WeightMask
from ..ops import nsconv as _nsconv
from ..sap import SapPolicy, SharedCache

NORMS = ("nsconv", "bn", "none")
#: Which layers SAP reaches: every conv and linear (SAP-1), or plain convs only (compat S2).
SAP_LAYERS = ("all", "plain_conv")


@dataclass(frozen=True)
class Conv:
    name: str
    in_ch: int
    out_ch: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    bias: bool = False
    norm: str = "none"

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_ch, self.in_ch // self.groups, self.kernel, self.kernel)


@dataclass(frozen=True)
class Linear:
    name: str
    in_features: int
    out_features: int
    bias: bool = True

    @property
    def weight_shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)


@dataclass(frozen=True)
class ReLU:
    pass


@dataclass(frozen=True)
class MaxPool:
    kernel: int = 2
    stride: int = 2


@dataclass(frozen=True)
class GlobalAvgPool:
    pass


@dataclass(frozen=True)
class ResidualBlock:
    body: tuple
    shortcut: tuple = ()
    relu: bool = True


@dataclass(frozen=True, eq=False)
class RunOptions:
    """How a forward pass runs, beyond the parameters.

    masks: prunable weight name -> :class:`~refimpl.kernels.masked_conv.WeightMask` (a bool mask
    is wrapped once here, so each layer's weight index is built once per mask change); None: a
    dense model (ERK-3). NSConv layers of a dense model use an all-true mask. nsconv_stats: NSC-1
    ``dense`` or NSC-2 ``masked`` (or a compat mode, ``authors``, ``authors_method1``). sap: the
    run's :class:`refimpl.sap.SapPolicy` (None: no SAP, every conv and linear keeps its input);
    under a policy every conv and linear layer caches its input by it, and the first conv of a
    block and its projection shortcut share one cache of their input (SAP-1). sap_layers:
    ``all`` (SAP-1) or the compat ``plain_conv`` (the authors' DropIT patches plain convolutions
    only: NSConv and linear layers keep their input). Compat: docs/DEVIATIONS.md.
    relu_gain: every ReLU of the graph computes ``relu_gain · max(x, 0)``, fused or not
    (``model.relu_gain``; 1, the default, is SPEC's plain ReLU, NSC-4; docs/decisions.md).
    """

    masks: dict | None = None
    nsconv_stats: str = "dense"
    sap: SapPolicy | None = None
    sap_layers: str = "all"
    relu_gain: float = 1.0

    def __post_init__(self):
        if self.sap is not None and not isinstance(self.sap, SapPolicy):
            raise TypeError(f"RunOptions: sap must be a refimpl.sap.SapPolicy or None, received "
                            f"{type(self.sap).__name__}; build it once with "
                            f"SapPolicy.make(gamma, policy)")
        if self.nsconv_stats not in _nsconv.STATS + _nsconv.COMPAT_STATS:
            raise ValueError(f"RunOptions: unknown nsconv_stats {self.nsconv_stats!r}; valid: "
                             f"{', '.join(_nsconv.STATS + _nsconv.COMPAT_STATS)}")
        if isinstance(self.relu_gain, bool) or not isinstance(self.relu_gain, (int, float)) \
                or not math.isfinite(self.relu_gain) or not self.relu_gain > 0:
            raise ValueError(f"RunOptions: relu_gain must be a finite number > 0, received "
                             f"{self.relu_gain!r}")
        if self.sap_layers not in SAP_LAYERS:
            raise ValueError(f"RunOptions: unknown sap_layers {self.sap_layers!r}; valid: "
                             f"{', '.join(SAP_LAYERS)}")
        if self.masks is not None:
            object.__setattr__(self, "masks", {
                k: m if isinstance(m, WeightMask) else WeightMask(np.asarray(m, dtype=bool))
                for k, m in self.masks.items()})

    def sap_for(self, plain_conv: bool) -> SapPolicy | None:
        """The SAP policy of a layer: every conv and linear (SAP-1), or with the compat
        ``sap_layers = "plain_conv"`` only plain convolutions."""
        return self.sap if self.sap_layers == "all" or plain_conv else None


@dataclass
class Model:
    """A built model: its layer graph, parameters, buffers and the prunable parameter names."""

    name: str
    layers: tuple
    params: dict[str, np.ndarray]
    buffers: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def prunable(self) -> list[str]:
        return [f"{layer.name}.weight" for layer in iter_layers(self.layers)
                if isinstance(layer, (Conv, Linear))]

    def num_params(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    def num_prunable(self) -> int:
        return int(sum(self.params[n].size for n in self.prunable))


def iter_layers(layers):
    """All layers in execution order, descending into residual blocks (body, then shortcut)."""
    for layer in layers:
        if isinstance(layer, ResidualBlock):
            yield from iter_layers(layer.body)
            yield from iter_layers(layer.shortcut)
        else:
            yield layer


def init_params(layers, dtype, rng: np.random.Generator):
    """He-normal (fan_in) weights, zero biases, BatchNorm weight 1 / bias 0 (FL-1)."""
    params: dict[str, np.ndarray] = {}
    buffers: dict[str, np.ndarray] = {}
    for layer in iter_layers(layers):
        if isinstance(layer, (Conv, Linear)):
            shape = layer.weight_shape
            fan_in = int(np.prod(shape[1:]))
            params[f"{layer.name}.weight"] = (
                rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
            ).astype(dtype)
            out = shape[0]
            if layer.bias:
                params[f"{layer.name}.bias"] = np.zeros(out, dtype=dtype)
            if isinstance(layer, Conv) and layer.norm == "nsconv":
                params[f"{layer.name}.gain"] = np.ones(out, dtype=dtype)
            if isinstance(layer, Conv) and layer.norm == "bn":
                params[f"{layer.name}.bn.weight"] = np.ones(out, dtype=dtype)
                params[f"{layer.name}.bn.bias"] = np.zeros(out, dtype=dtype)
                buffers[f"{layer.name}.bn.running_mean"] = np.zeros(out, dtype=dtype)
                buffers[f"{layer.name}.bn.running_var"] = np.ones(out, dtype=dtype)
    return params, buffers


def forward(model: Model, params, x, train: bool = True, options: RunOptions | None = None):
    """Run the layer graph on ``x`` (N, C, H, W) and return logits (N, classes).

    ``params`` may hold traced values (inside :func:`refimpl.value_and_grad`) or arrays.
    In ``train`` mode BatchNorm uses batch statistics and updates ``model.buffers`` in place.
    """
    return _run(model.layers, model, params, x, train, options or RunOptions())


def _conv(layer: Conv, params, h, opts, shared=None, relu=False):
    """The convolution of a conv unit (NSConv, or plain with its mask); ``relu``: fused."""
    w = params[f"{layer.name}.weight"]
    b = params.get(f"{layer.name}.bias")
    mask = opts.masks.get(f"{layer.name}.weight") if opts.masks is not None else None
    sap = opts.sap_for(plain_conv=layer.norm != "nsconv")
    kw = {"sap": sap, "shared_cache": shared if sap is not None else None, "relu": relu,
          "relu_gain": opts.relu_gain if relu else 1.0}
    if layer.norm == "nsconv":
        if mask is None:
            mask = WeightMask.counts(layer.weight_shape, math.prod(layer.weight_shape))
        return F.nsconv2d(h, w, mask, params[f"{layer.name}.gain"], b, stride=layer.stride,
                          padding=layer.padding, groups=layer.groups, stats=opts.nsconv_stats,
                          **kw)
    return F.conv2d(h, w, b, stride=layer.stride, padding=layer.padding, groups=layer.groups,
                    mask=mask, **kw)


def _batch_norm(layer: Conv, model, params, h, train, relu=False, relu_gain=1.0):
    return F.batch_norm2d(
        h, model.buffers[f"{layer.name}.bn.running_mean"],
        model.buffers[f"{layer.name}.bn.running_var"],
        params[f"{layer.name}.bn.weight"], params[f"{layer.name}.bn.bias"], training=train,
        relu=relu, relu_gain=relu_gain,
    )


def shares_input_cache(block: ResidualBlock) -> bool:
    """SAP-1: a block whose body and projection shortcut both start with a conv reads its input
    into two convs; they hold one cache of it."""
    return bool(block.body and block.shortcut and isinstance(block.body[0], Conv)
                and isinstance(block.shortcut[0], Conv))


def _run(layers, model, params, h, train, opts, shared=None, last="input"):
    """Run ``layers`` on ``h``; ``shared`` (a SharedCache of ``h``) goes to the first layer when
    it is a conv. Every layer runs in a tape scope named after it (the memory ledger's rows):
    a conv or linear by its name, a ReLU or max-pool as ``<previous layer>.relu`` /
    ``.maxpool``, a block's add and closing ReLU as ``<block>.add`` / ``<block>.relu``. A ReLU
    right after a conv is fused into it (one node, in the conv's scope: the same function,
    one output buffer instead of two). In evaluation (``train`` False) a ReLU after BatchNorm
    is fused into the normalisation the same way (training keeps them two nodes, the ledger's
    rows)."""
    fused = False
    for i, layer in enumerate(layers):
        first_shared = shared if i == 0 else None
        if fused:  # this ReLU ran inside the conv before it
            fused = False
            continue
        if isinstance(layer, Conv):
            # Each step rebinds h, so a buffer is freed as soon as its last reader has run
            # (the liveness of MEM-5). A ReLU after BatchNorm cannot fuse into the conv.
            fused = i + 1 < len(layers) and isinstance(layers[i + 1], ReLU)
            with scope(layer.name):
                h = _conv(layer, params, h, opts, first_shared, fused and layer.norm != "bn")
                if layer.norm == "bn":
                    in_bn = fused and not train  # evaluation: the ReLU in the normalisation
                    h = _batch_norm(layer, model, params, h, train, in_bn,
                                    opts.relu_gain if in_bn else 1.0)
            if fused and layer.norm == "bn" and train:
                with scope(f"{layer.name}.relu"):
                    h = F.relu(h, gain=opts.relu_gain)
            last = layer.name
        elif isinstance(layer, Linear):
            with scope(layer.name):
                h = F.linear(h, params[f"{layer.name}.weight"], params.get(f"{layer.name}.bias"),
                             sap=opts.sap_for(plain_conv=False))
            last = layer.name
        elif isinstance(layer, ReLU):
            with scope(f"{last}.relu"):
                h = F.relu(h, gain=opts.relu_gain)
        elif isinstance(layer, MaxPool):
            with scope(f"{last}.maxpool"):
                h = F.max_pool2d(h, layer.kernel, layer.stride)
        elif isinstance(layer, GlobalAvgPool):
            with scope("avgpool"):
                h = F.global_avg_pool2d(h)
            last = "avgpool"
        elif isinstance(layer, ResidualBlock):
            block = layer.body[0].name.rsplit(".", 1)[0] if layer.body else last
            slot = SharedCache() if opts.sap is not None and shares_input_cache(layer) else None
            x_in, h = h, None  # the block input lives as long as a branch still reads it
            body = _run(layer.body, model, params, x_in, train, opts, slot, last)
            short = _run(layer.shortcut, model, params, x_in, train, opts, slot, last) \
                if layer.shortcut else x_in
            del x_in
            with scope(f"{block}.add"):
                h = F.add(body, short)
            del body, short
            last = block
            if layer.relu:
                with scope(f"{block}.relu"):
                    h = F.relu(h, gain=opts.relu_gain)
        else:  # pragma: no cover - guarded by the builders
            raise TypeError(f"unknown layer {layer!r}")
    return h
