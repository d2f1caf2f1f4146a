"""The server's global state between rounds, its initialisation (FL-1, ERK-1..3) and its
checkpoint form.

The state after round t is everything a later round reads: the global parameters, buffers
(BatchNorm running statistics), masks, and for the communication ledger (MEM-4) the version of
the mask and the version each client last received. Clients and RNG streams carry no state
(RNG-1), so this is all a resume needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import models
from ..core.rng import Purpose, stream
from ..sparsity import layer_counts, random_masks
from .config import Config

__all__ = ["GlobalState", "init_state"]


@dataclass
class GlobalState:
    round: int  # rounds completed
    params: dict
    buffers: dict
    masks: dict | None  # prunable name -> bool mask; None for a dense run
    mask_version: int  # incremented by every prune-and-grow
    client_mask_version: np.ndarray  # int64 (K,): version each client holds, -1 for none

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {f"param/{k}": v for k, v in self.params.items()}
        out.update({f"buffer/{k}": v for k, v in self.buffers.items()})
        if self.masks is not None:
            out.update({f"mask/{k}": v for k, v in self.masks.items()})
        out["client_mask_version"] = self.client_mask_version
        return out

    @classmethod
    def from_arrays(cls, t: int, mask_version: int, arrays: dict, model: models.Model,
                    dense: bool) -> GlobalState:
        def group(prefix):
            return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

        params, buffers, masks = group("param/"), group("buffer/"), group("mask/")
        if params.keys() != model.params.keys() or buffers.keys() != model.buffers.keys():
            raise ValueError("checkpoint: parameter names do not match the configured model")
        for k, v in params.items():
            if v.shape != model.params[k].shape or v.dtype != model.params[k].dtype:
                raise ValueError(f"checkpoint: {k} has shape {v.shape} dtype {v.dtype}, the "
                                 f"model expects {model.params[k].shape} "
                                 f"{model.params[k].dtype}")
        if not dense and masks.keys() != set(model.prunable):
            raise ValueError("checkpoint: masks do not match the model's prunable layers")
        return cls(t, params, buffers, None if dense else masks, mask_version,
                   arrays["client_mask_version"].astype(np.int64))


def build_model(cfg: Config, in_channels: int, num_classes: int) -> models.Model:
    """The configured model with FL-1 initialisation from stream MODEL_INIT."""
    return models.build(cfg.model.name, in_channels, num_classes, norm=cfg.model.norm,
                        width=cfg.model.width, dtype=np.dtype(cfg.run.dtype),
                        rng=stream(cfg.run.seed, Purpose.MODEL_INIT))


def init_state(cfg: Config, model: models.Model) -> GlobalState:
    """FL-1: initial weights of ``model`` and, for a sparse run, the ERK random mask (ERK-3,
    stream MASK_INIT with extra = layer index), applied so W == W ⊙ M (MASK-3)."""
    params = {k: v.copy() for k, v in model.params.items()}
    buffers = {k: v.copy() for k, v in model.buffers.items()}
    masks = None
    if cfg.sparse_masks:
        names = model.prunable
        shapes = [params[n].shape for n in names]
        counts = layer_counts(shapes, cfg.sparse.density, cfg.sparse.density_kind)
        rngs = [stream(cfg.run.seed, Purpose.MASK_INIT, extra=i) for i in range(len(names))]
        masks = dict(zip(names, random_masks(shapes, counts, rngs), strict=True))
        for n in names:
            params[n] *= masks[n]
    return GlobalState(0, params, buffers, masks, 0,
                       np.full(cfg.data.num_clients, -1, dtype=np.int64))
