"""Model definitions as data: a small layer graph that one interpreter runs (:func:`forward`)
and that analytic tools (parameter counts, the memory ledger) walk without running anything.

Layers (all frozen records):
- :class:`Conv`: a conv unit. ``norm`` says what follows the convolution: ``"none"``, ``"bn"``
  (BatchNorm2d; baselines only) or ``"nsconv"`` (weight-standardised sparse conv, SPEC §3).
- :class:`Linear`, :class:`ReLU`, :class:`MaxPool`, :class:`GlobalAvgPool`.
- :class:`Residual`: ``body(x) + shortcut(x)``, then a ReLU when ``relu`` is set; an empty
  shortcut is the identity. The body's first conv and a projection shortcut read the same input.

Parameter names: ``{layer}.weight``, ``{layer}.bias``, ``{layer}.gain`` (NSConv),
``{layer}.bn.weight``, ``{layer}.bn.bias``; buffers ``{layer}.bn.running_mean``,
``{layer}.bn.running_var``. Prunable tensors (MASK-1) are the conv and linear weights, in layer
order; biases, gains and BatchNorm parameters are dense.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from refimpl import functional as F
from refimpl.sap import POLICIES, SapPolicy, SharedCache

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
class Residual:
    body: tuple
    shortcut: tuple = ()
    relu: bool = True


@dataclass(frozen=True, eq=False)
class RunOptions:
    """How a forward pass runs, beyond the parameters.

    masks: prunable weight name -> bool mask (None: a dense model, ERK-3). NSConv layers of a
    dense model use an all-true mask. nsconv_stats: NSC-1 ``dense`` or NSC-2 ``masked``.
    sap_gamma: SAP ratio γ ∈ [0, 1) as a decimal (counts by the exact rational, CONV-6);
    cache_policy: ``dense`` | ``bitmap`` | ``index`` | ``auto`` (CACHE-2). Every conv and linear
    layer caches its input under this policy when γ > 0 or the policy is not ``dense``; the first
    conv of a block and its projection shortcut share one cache of their input (SAP-1). At γ = 0
    ``auto`` stores the input itself (dense is smallest), so the default costs nothing.
    sap_keep: the keep-count rule, ``exact`` (SAP-2) or the compat ``authors`` (float count).
    sap_layers: ``all`` (SAP-1) or the compat ``plain_conv`` (the authors' DropIT patches plain
    convolutions only: NSConv and linear layers keep their input). nsconv_stats may also name a
    compat mode (``authors``, ``authors_method1``). Compat: docs/DEVIATIONS.md.
    """

    masks: dict | None = None
    nsconv_stats: str = "dense"
    sap_gamma: float = 0.0
    cache_policy: str = "auto"
    sap_keep: str = "exact"
    sap_layers: str = "all"

    def __post_init__(self):
        if self.sap_layers not in SAP_LAYERS:
            raise ValueError(f"RunOptions: unknown sap_layers {self.sap_layers!r}; valid: "
                             f"{', '.join(SAP_LAYERS)}")
        if self.cache_policy not in POLICIES:
            raise ValueError(f"RunOptions: unknown cache_policy {self.cache_policy!r}; valid: "
                             f"{', '.join(POLICIES)}")
        SapPolicy.make(self.sap_gamma, self.cache_policy, self.sap_keep)  # validates γ, rule

    @property
    def sap_active(self) -> bool:
        """Whether conv/linear inputs are cached under a SAP policy (else: the input itself)."""
        return SapPolicy.make(self.sap_gamma, self.cache_policy) is not None


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
        if isinstance(layer, Residual):
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


def _mask(model: Model, name: str, opts: RunOptions):
    if opts.masks is not None and name in opts.masks:
        return opts.masks[name]
    return None


def _sap_kwargs(opts: RunOptions, shared: SharedCache | None = None, plain_conv=True) -> dict:
    if not opts.sap_active or (opts.sap_layers == "plain_conv" and not plain_conv):
        return {}
    return {"sap_gamma": opts.sap_gamma, "cache_policy": opts.cache_policy,
            "shared_cache": shared, "sap_keep": opts.sap_keep}


def _conv(layer: Conv, model, params, h, train, opts, shared=None):
    w = params[f"{layer.name}.weight"]
    b = params.get(f"{layer.name}.bias")
    mask = _mask(model, f"{layer.name}.weight", opts)
    sap = _sap_kwargs(opts, shared, plain_conv=layer.norm != "nsconv")
    if layer.norm == "nsconv":
        if mask is None:
            mask = np.ones(layer.weight_shape, dtype=bool)
        return F.nsconv2d(h, w, mask, params[f"{layer.name}.gain"], b, stride=layer.stride,
                          padding=layer.padding, groups=layer.groups, stats=opts.nsconv_stats,
                          **sap)
    h = F.conv2d(h, w, b, stride=layer.stride, padding=layer.padding, groups=layer.groups,
                 mask=mask, **sap)
    if layer.norm == "bn":
        h = F.batch_norm2d(
            h, model.buffers[f"{layer.name}.bn.running_mean"],
            model.buffers[f"{layer.name}.bn.running_var"],
            params[f"{layer.name}.bn.weight"], params[f"{layer.name}.bn.bias"], training=train,
        )
    return h


def shares_input_cache(block: Residual) -> bool:
    """SAP-1: a block whose body and projection shortcut both start with a conv reads its input
    into two convs; they hold one cache of it."""
    return bool(block.body and block.shortcut and isinstance(block.body[0], Conv)
                and isinstance(block.shortcut[0], Conv))


def _run(layers, model, params, h, train, opts, shared=None):
    """Run ``layers`` on ``h``; ``shared`` (a SharedCache of ``h``) goes to the first layer when
    it is a conv."""
    for i, layer in enumerate(layers):
        first_shared = shared if i == 0 else None
        if isinstance(layer, Conv):
            h = _conv(layer, model, params, h, train, opts, first_shared)
        elif isinstance(layer, Linear):
            h = F.linear(h, params[f"{layer.name}.weight"], params.get(f"{layer.name}.bias"),
                         **_sap_kwargs(opts, plain_conv=False))
        elif isinstance(layer, ReLU):
            h = F.relu(h)
        elif isinstance(layer, MaxPool):
            h = F.max_pool2d(h, layer.kernel, layer.stride)
        elif isinstance(layer, GlobalAvgPool):
            h = F.global_avg_pool2d(h)
        elif isinstance(layer, Residual):
            slot = SharedCache() if opts.sap_active and shares_input_cache(layer) else None
            body = _run(layer.body, model, params, h, train, opts, slot)
            short = _run(layer.shortcut, model, params, h, train, opts, slot) if layer.shortcut \
                else h
            h = F.add(body, short)
            if layer.relu:
                h = F.relu(h)
        else:  # pragma: no cover - guarded by the builders
            raise TypeError(f"unknown layer {layer!r}")
    return h
