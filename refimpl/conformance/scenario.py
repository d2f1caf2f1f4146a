"""The conformance scenario: a tiny deterministic FedMef run that exercises every rule of the
federated loop in a few dozen local steps (docs/conformance.md).

A float64 ``cnn`` of width 0.125 with NSConv (2, 4, 8 channels; conv1 and fc end up dense under
ERK at d = 0.3, conv2 and conv3 sparse), on synthetic 8×8 images of 3 classes split over 4
clients (Dirichlet, sizes 8, 8, 7, 13: the last batch of an epoch is smaller for two of them).
3 clients per round, 2 local epochs of batches of 4, SAP γ = 0.7 (auto cache policy), BaE on.
Small enough that the committed golden dump stays near 1.3 MB.
Two rounds run: round 1 trains plainly, round 2 is the adjustment round (ΔT = 2) and extrudes
(BAE-5 default). The schedule horizon is R = T_end = 4, because α_t vanishes at t = T_end
(PG-2): with R = 2 the adjustment would move nothing. η_min is small (1e-3) so that the
budget-aware rate β_τ exceeds η_2 on the first extrusion steps and falls below it later: both
branches of BAE-4's max are exercised.
"""

from __future__ import annotations

import dataclasses

from .. import models
from ..fl.config import Config, config_from_dict, parse_set
from ..fl.data import FedData, load_fed_data
from ..fl.state import GlobalState, build_model, init_state
from ..models.graph import Conv, GlobalAvgPool, Linear, MaxPool, ReLU, ResidualBlock

__all__ = ["NAME", "ROUNDS_RUN", "BASE", "scenario_config", "build", "architecture"]

NAME = "tiny-nsconv-fedmef/1"
#: Rounds the scenario runs (the config's run.rounds is the schedule horizon R).
ROUNDS_RUN = 2

BASE: dict = {
    "run": {"method": "fedmef", "seed": 0, "rounds": 4, "dtype": "float64", "eval_every": 4,
            "checkpoint_every": 4, "threads": 1},
    "data": {"dataset": "synthetic", "num_clients": 4, "partition": "dirichlet",
             "dirichlet_alpha": 1.0, "min_client_size": 6, "synthetic_train": 36,
             "synthetic_test": 8, "synthetic_classes": 3, "synthetic_shape": [1, 8, 8]},
    "model": {"name": "cnn", "width": 0.125, "norm": "nsconv", "nsconv_stats": "dense"},
    "train": {"clients_per_round": 3, "local_epochs": 2, "batch_size": 4, "lr": 0.1,
              "lr_min": 1e-5, "lr_schedule": "exponential"},
    "sparse": {"density": 0.3, "density_kind": "erk", "delta_t": 2, "alpha": 0.5},
    "bae": {"enabled": True, "lambda": 1.0, "variant": "l2sq", "budget_lr": True, "rounds": 0},
    "sap": {"gamma": 0.7, "cache_policy": "auto"},
}


def scenario_config(sets=()) -> Config:
    """The scenario's configuration, with ``sets`` (``section.key=value``) applied on top, e.g.
    ``bae.variant=authors`` for a compat dump. The result must still adjust at round 2."""
    raw = {sec: dict(body) for sec, body in BASE.items()}
    for item in sets:
        sec, key, value = parse_set(item)
        raw.setdefault(sec, {})[key] = value
    cfg = config_from_dict(raw)
    if not cfg.dynamic or cfg.sparse.delta_t != ROUNDS_RUN:
        raise ValueError(f"the conformance scenario adjusts the mask in round {ROUNDS_RUN}: it "
                         f"needs a dynamic method and sparse.delta_t = {ROUNDS_RUN}")
    if cfg.run.rounds <= ROUNDS_RUN or cfg.t_end <= ROUNDS_RUN:
        # R >= the rounds run (CONV-7), and α_t = 0 at t = T_end (PG-2): the adjustment of round
        # ROUNDS_RUN would move nothing unless T_end is later
        raise ValueError(f"the conformance scenario runs {ROUNDS_RUN} rounds and adjusts the mask "
                         f"in round {ROUNDS_RUN}: it needs run.rounds > {ROUNDS_RUN} and "
                         f"sparse.t_end = 0 or > {ROUNDS_RUN} (received run.rounds = "
                         f"{cfg.run.rounds}, sparse.t_end = {cfg.sparse.t_end})")
    if cfg.sap.gamma == 0 and cfg.sap.cache_policy == "dense":
        raise ValueError("the conformance scenario records every layer's SAP cache: keep "
                         "sap.gamma > 0 or a cache policy other than 'dense' (γ = 0 with "
                         "'auto' records the uncompressed input)")
    return cfg


def build(cfg: Config) -> tuple[FedData, models.Model, GlobalState]:
    """Data, model and initial global state of the scenario, by the engine's own functions
    (FL-1, ERK-3)."""
    data = load_fed_data(cfg)
    model = build_model(cfg, data.input_shape[0], data.num_classes)
    return data, model, init_state(cfg, model)


def architecture(model: models.Model) -> list[dict]:
    """The top-level layers as plain records for the manifest, so another implementation can
    build the same network (CONV-1 semantics; ``act/NN_kind`` keys follow this order). A
    residual block is ``{"kind": "block", "body": [...], "shortcut": [...], "relu": bool}``:
    ``relu(body(x) + shortcut(x))`` (identity when the shortcut is empty; no ReLU when
    ``relu`` is false)."""
    return _records(model.layers)


def _records(layers) -> list[dict]:
    out = []
    for layer in layers:
        if isinstance(layer, Conv):
            out.append({"kind": "conv", **dataclasses.asdict(layer),
                        "weight_shape": list(layer.weight_shape)})
        elif isinstance(layer, Linear):
            out.append({"kind": "linear", **dataclasses.asdict(layer),
                        "weight_shape": list(layer.weight_shape)})
        elif isinstance(layer, ReLU):
            out.append({"kind": "relu"})
        elif isinstance(layer, MaxPool):
            out.append({"kind": "maxpool", "kernel": layer.kernel, "stride": layer.stride})
        elif isinstance(layer, GlobalAvgPool):
            out.append({"kind": "gap"})
        elif isinstance(layer, ResidualBlock):
            out.append({"kind": "block", "body": _records(layer.body),
                        "shortcut": _records(layer.shortcut), "relu": layer.relu})
        else:  # pragma: no cover - the zoo has no other layers
            raise TypeError(f"architecture: unsupported layer {layer!r}")
    return out
