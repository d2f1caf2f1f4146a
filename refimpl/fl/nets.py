"""Model helpers of the engine: run options (SAP, masks), the effective-kernel model for growth
scores (PG-5) and test-set evaluation.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .. import functional as F
from .. import models
from ..core.tape import apply
from ..kernels.masked_conv import WeightMask
from ..models.graph import Conv, ResidualBlock
from ..ops import nsconv as _nsconv
from .config import Config

__all__ = ["run_options", "effective_model", "weight_scores", "evaluate"]


def run_options(cfg: Config, masks: dict | None) -> models.RunOptions:
    """RunOptions of a training forward: the masks (each wrapped once in a WeightMask, so its
    weight index is built once for the client's round), NSConv stats and the run's SAP policy
    (``cfg.sap_policy``, built once per run, with its keep rule; SAP-1, CACHE-2) and the layers
    it reaches (``sap.layers``, compat)."""
    return models.RunOptions(masks=masks, nsconv_stats=cfg.model.nsconv_stats,
                             sap=cfg.sap_policy, sap_layers=cfg.sap.layers,
                             relu_gain=cfg.model.relu_gain)


def _plain_layers(layers):
    """The layer graph with every NSConv unit turned into a plain conv (norm "none")."""
    out = []
    for layer in layers:
        if isinstance(layer, Conv) and layer.norm == "nsconv":
            out.append(dataclasses.replace(layer, norm="none"))
        elif isinstance(layer, ResidualBlock):
            out.append(dataclasses.replace(layer, body=_plain_layers(layer.body),
                                           shortcut=_plain_layers(layer.shortcut)))
        else:
            out.append(layer)
    return tuple(out)


def _nsconv_layers(model: models.Model, params: dict, masks: dict | None, stats: str):
    """(layer, weight name, standardisation params) of every NSConv layer, with its mask (an
    all-true one for a dense layer) and the mode's mask rule (NSC-1/2, or compat)."""
    for layer in models.iter_layers(model.layers):
        if isinstance(layer, Conv) and layer.norm == "nsconv":
            name = f"{layer.name}.weight"
            mask = masks.get(name) if masks is not None else None
            if mask is None:
                mask = WeightMask.counts(layer.weight_shape, math.prod(layer.weight_shape))
            yield layer, name, _nsconv.StandardizeParams.make(mask, params[name], stats,
                                                              F.NSCONV_EPS)


def effective_model(model: models.Model, params: dict, masks: dict, stats: str):
    """A model and parameters computing the same function as ``model`` whose prunable weights
    are the *effective kernels* (PG-5): Ŵ (NSC-1/2) for NSConv layers, W ⊙ M otherwise.

    The NSConv units become plain convolutions with weight Ŵ (their gains are folded into Ŵ),
    so a gradient with respect to these weights, run without masks, is the dense gradient with
    respect to the effective kernel. Buffers are copied: a forward in train mode must not move
    the running statistics of the real model.
    """
    layers = _plain_layers(model.layers)
    new = dict(params)
    for layer, name, p in _nsconv_layers(model, params, masks, stats):
        new[name] = apply(_nsconv.STANDARDIZE, (params[name], params[f"{layer.name}.gain"]), p)
        del new[f"{layer.name}.gain"]
    buffers = {k: v.copy() for k, v in model.buffers.items()}
    return models.Model(model.name, layers, new, buffers), new


def weight_scores(model: models.Model, params: dict, masks: dict, stats: str,
                  kernel_grads: dict) -> dict:
    """dL/dW from dL/d(effective kernel) (compat growth score G1, docs/DEVIATIONS.md): for each
    NSConv layer the pullback of ``kernel_grads`` through its standardisation (the vjp of the
    same primitive the forward runs, :func:`refimpl.ops.nsconv.pullback`); other layers'
    kernels are W ⊙ M, so their gradient is passed on unchanged. Returns a new dict."""
    out = dict(kernel_grads)
    for layer, name, p in _nsconv_layers(model, params, masks, stats):
        out[name] = _nsconv.pullback(params[name], params[f"{layer.name}.gain"], p,
                                     kernel_grads[name])[0]
    return out


def evaluate(model: models.Model, params: dict, buffers: dict, masks: dict | None, data,
             cfg: Config, batch: int = 500, split: str = "test") -> tuple[float, float]:
    """Accuracy and mean cross-entropy of the global model on the test set (``split="test"``)
    or the validation split (``"validation"``); eval mode, no tape, nothing modified.

    ``buffers`` are the global model's (aggregated, AGG-1) BatchNorm running statistics: eval
    mode normalises with them, so they must be the global state's, not the buffers the model
    object was built with."""
    model = models.Model(model.name, model.layers, params, dict(buffers))
    opts = models.RunOptions(masks=masks, nsconv_stats=cfg.model.nsconv_stats,
                             relu_gain=cfg.model.relu_gain)
    x_all, y_all = data.split(split)
    correct, loss_sum = 0, 0.0
    n = len(y_all)
    for s in range(0, n, batch):
        xb, yb = data.batch(x_all[s:s + batch]), y_all[s:s + batch]
        logits = models.forward(model, params, xb, train=False, options=opts)
        correct += int(np.sum(np.argmax(logits, axis=1) == yb))
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
    return correct / n, loss_sum / n
