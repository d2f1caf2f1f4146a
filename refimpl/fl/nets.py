"""Model helpers of the engine: run options (SAP, masks), the effective-kernel model for growth
scores (PG-5) and test-set evaluation.
"""

from __future__ import annotations

import dataclasses

import numpy as np

import models
from models.graph import Conv, Residual

from .. import functional as F
from ..ops import nsconv as _nsconv
from ..tape import apply
from .config import Config

__all__ = ["run_options", "effective_model", "weight_scores", "evaluate", "NSCONV_EPS"]

#: ε of the NSConv standardisation (NSC-1); models.forward uses nsconv2d's default, this value.
NSCONV_EPS = 1e-4


def _sap_supported() -> bool:
    names = {f.name for f in dataclasses.fields(models.RunOptions)}
    return {"sap_gamma", "cache_policy"} <= names


def run_options(cfg: Config, masks: dict | None) -> models.RunOptions:
    """RunOptions of a training forward: the masks, NSConv stats and SAP (SAP-1, CACHE-2)."""
    kw = dict(masks=masks, nsconv_stats=cfg.model.nsconv_stats)
    if _sap_supported():
        kw.update(sap_gamma=float(cfg.sap.gamma), cache_policy=cfg.sap.cache_policy,
                  sap_keep=cfg.sap.keep_count, sap_layers=cfg.sap.layers)
    elif cfg.sap.gamma > 0 or cfg.sap.cache_policy != "auto":
        raise ValueError("this checkout's models.RunOptions has no SAP fields (sap_gamma, "
                         "cache_policy); set sap.gamma = 0 and sap.cache_policy = \"auto\"")
    return models.RunOptions(**kw)


def _plain_layers(layers):
    """The layer graph with every NSConv unit turned into a plain conv (norm "none")."""
    out = []
    for layer in layers:
        if isinstance(layer, Conv) and layer.norm == "nsconv":
            out.append(dataclasses.replace(layer, norm="none"))
        elif isinstance(layer, Residual):
            out.append(dataclasses.replace(layer, body=_plain_layers(layer.body),
                                           shortcut=_plain_layers(layer.shortcut)))
        else:
            out.append(layer)
    return tuple(out)


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
    for layer in models.iter_layers(model.layers):
        if isinstance(layer, Conv) and layer.norm == "nsconv":
            name = f"{layer.name}.weight"
            mask = masks[name] if masks is not None and name in masks else \
                np.ones(layer.weight_shape, dtype=bool)
            p = _nsconv.StandardizeParams.make(mask, params[name], stats, NSCONV_EPS)
            new[name] = apply(_nsconv.STANDARDIZE, (params[name], params[f"{layer.name}.gain"]),
                              p)
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
    for layer in models.iter_layers(model.layers):
        if isinstance(layer, Conv) and layer.norm == "nsconv":
            name = f"{layer.name}.weight"
            mask = masks[name] if masks is not None and name in masks else \
                np.ones(layer.weight_shape, dtype=bool)
            p = _nsconv.StandardizeParams.make(mask, params[name], stats, NSCONV_EPS)
            out[name] = _nsconv.pullback(params[name], params[f"{layer.name}.gain"], p,
                                         kernel_grads[name])[0]
    return out


def evaluate(model: models.Model, params: dict, buffers: dict, masks: dict | None, data,
             cfg: Config, batch: int = 500) -> tuple[float, float]:
    """Test accuracy and mean cross-entropy of the global model (eval mode, no tape).

    ``buffers`` are the global model's (aggregated, AGG-1) BatchNorm running statistics: eval
    mode normalises with them, so they must be the global state's, not the buffers the model
    object was built with."""
    model = models.Model(model.name, model.layers, params, dict(buffers))
    opts = models.RunOptions(masks=masks, nsconv_stats=cfg.model.nsconv_stats)
    correct, loss_sum = 0, 0.0
    n = len(data.y_test)
    for s in range(0, n, batch):
        xb, yb = data.batch(data.x_test[s:s + batch]), data.y_test[s:s + batch]
        logits = models.forward(model, params, xb, train=False, options=opts)
        correct += int(np.sum(np.argmax(logits, axis=1) == yb))
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
    return correct / n, loss_sum / n
