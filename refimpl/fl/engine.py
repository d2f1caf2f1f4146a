"""One federated round (SPEC FL-1): sample, broadcast, local training, upload, aggregate, and on
adjustment rounds prune and grow. Returns the new global state and the round's metrics record.
"""

from __future__ import annotations

import numpy as np

from .. import models
from ..sparsity import adjust_counts, fedpruning_count, marked_set
from . import bae
from .client import RoundPlan, local_train
from .config import Config
from .data import FedData
from .nets import evaluate
from .observe import Observer
from .schedule import (
    adjustment_target,
    alpha_at,
    coming_counts,
    grow_alpha_at,
    is_adjustment,
    is_extrusion,
    learning_rate,
)
from .server import aggregate, average_growth, bytes_down, bytes_up, prune_and_grow, sample_clients
from .state import GlobalState

__all__ = ["run_round", "should_evaluate", "evaluations"]


def should_evaluate(cfg: Config, t: int) -> bool:
    return t % cfg.run.eval_every == 0 or t == cfg.run.rounds


def evaluations(model: models.Model, params: dict, buffers: dict, masks: dict | None,
                data: FedData, cfg: Config) -> dict:
    """The evaluation keys of a record as ``run.eval_split`` asks: ``test_accuracy`` and
    ``test_loss`` on the test set, ``val_accuracy`` and ``val_loss`` on the validation split
    (each pair absent when not evaluated). Reads the model; changes nothing."""
    out = {}
    if cfg.run.eval_split in ("test", "both"):
        out["test_accuracy"], out["test_loss"] = evaluate(model, params, buffers, masks, data,
                                                          cfg, split="test")
    if cfg.run.eval_split in ("validation", "both"):
        out["val_accuracy"], out["val_loss"] = evaluate(model, params, buffers, masks, data, cfg,
                                                        split="validation")
    return out


def _weighted_mean(values, weights) -> float:
    total = float(sum(weights))
    return float(sum(v * (w / total) for v, w in zip(values, weights, strict=True)))


def _per_layer(names, index_sets) -> dict:
    return {n: int(s.size) for n, s in zip(names, index_sets, strict=True)}


def _server_marked(cfg: Config, received: list, masks: list, t_adj: int, t: int) -> list:
    """BAE-1 marked set of the coming adjustment from the received global model; with
    ``bae.marked_set`` = ``fedpruning``/``fedpruning_dynamic`` (compat F2) the FedPruning
    re-implementation's: int(α_t(γ)·nnz_l) smallest |θ| over all entries, its round t − 1."""
    if cfg.bae.marked_set in ("fedpruning", "fedpruning_dynamic"):
        counts = [fedpruning_count(int(m.sum()), t - 1, cfg.sap.gamma, cfg.t_end) for m in masks]
        return marked_set(received, masks, counts, among="all")
    return marked_set(received, masks, coming_counts(cfg, masks, t_adj))


def run_round(cfg: Config, model: models.Model, state: GlobalState, data: FedData,
              t: int, observer: Observer | None = None) -> tuple[GlobalState, dict]:
    """Round t on ``state`` (the state after round t − 1); ``state`` itself is not modified.

    ``observer`` (:class:`refimpl.fl.observe.Observer`) is told what the round computes, step
    by step, without changing it (the conformance kit records golden vectors this way)."""
    if t != state.round + 1:
        raise ValueError(f"run_round: state holds round {state.round}, cannot run round {t}")
    prunable = model.prunable
    masks = state.masks
    mask_list = [masks[n] for n in prunable] if masks is not None else None
    received = [state.params[n] for n in prunable]
    lr = learning_rate(cfg, t)
    clients = sample_clients(cfg.run.seed, t, cfg.data.num_clients, cfg.train.clients_per_round)

    # BAE-1: the marked set of the coming adjustment, from the received global model
    t_adj = adjustment_target(cfg, t)
    marked = None
    if t_adj is not None:
        marked = _server_marked(cfg, received, mask_list, t_adj, t)
    adjusting = is_adjustment(cfg, t)
    grow_counts = adjust_counts(mask_list, grow_alpha_at(cfg, t)) if adjusting else None
    plan = RoundPlan(t, lr, marked if is_extrusion(cfg, t) else None, grow_counts)
    if observer is not None:
        observer.round_start(t, clients, plan, alpha_at(cfg, t) if adjusting else None)

    client_versions = state.client_mask_version.copy()
    updates, down = [], 0
    for k in clients:
        k = int(k)
        down += bytes_down(state.params, state.buffers, masks,
                           send_mask=client_versions[k] != state.mask_version)
        client_versions[k] = state.mask_version
        updates.append(local_train(model, state.params, state.buffers, masks, data, k, plan, cfg,
                                   observer))
    shapes = {n: state.params[n].shape for n in prunable}
    up = sum(bytes_up(u, masks, shapes) for u in updates)
    params, buffers = aggregate(updates, masks)
    if observer is not None:
        observer.aggregated(t, params, buffers)
    norm_after = bae.marked_norm([params[n] for n in prunable], marked) if marked else None

    new_masks, mask_version, report = masks, state.mask_version, None
    around = cfg.run.eval_around_adjustment and adjusting
    before = evaluations(model, params, buffers, masks, data, cfg) if around else None
    if adjusting:
        scores = average_growth(updates, list(shapes.values()))
        low = None
        if cfg.sparse.prune == "marked":  # Low_l of this adjustment round (docs/federated.md)
            low = marked if t_adj == t else marked_set(received, mask_list, grow_counts)
        grow_alpha = grow_alpha_at(cfg, t) if cfg.sparse.counts == "drift" else None
        params, new_masks, report = prune_and_grow(params, masks, prunable, scores,
                                                   alpha_at(cfg, t), cfg.sparse.prune, low,
                                                   grow_alpha)
        if any(not np.array_equal(new_masks[n], masks[n]) for n in prunable):
            mask_version += 1
        if observer is not None:
            observer.adjusted(t, scores, report, params, new_masks)
    new_state = GlobalState(t, params, buffers, new_masks, mask_version, client_versions)

    weights = [u.n for u in updates]
    after = evaluations(model, params, buffers, new_masks, data, cfg) if around else None
    ev = {}
    if should_evaluate(cfg, t):  # the model after prune-and-grow: `after` when it was measured
        ev = after if after is not None else evaluations(model, params, buffers, new_masks, data,
                                                         cfg)
    numel = {n: int(params[n].size) for n in prunable}
    nnz = ({n: int(new_masks[n].sum()) for n in prunable} if new_masks is not None
           else dict(numel))
    record = {
        "round": t,
        "lr": lr,
        "clients": [u.client for u in updates],
        "client_sizes": weights,
        "local_iterations": [u.iterations for u in updates],
        "train_loss": _weighted_mean([u.loss for u in updates], weights),
        "test_accuracy": ev.get("test_accuracy"),
        "test_loss": ev.get("test_loss"),
    }
    if cfg.data.validation > 0:  # keys of the validation split only when the run holds one out
        record["val_accuracy"] = ev.get("val_accuracy")
        record["val_loss"] = ev.get("val_loss")
    record |= {
        "density": sum(nnz.values()) / sum(numel.values()),
        "layer_density": {n: nnz[n] / numel[n] for n in prunable},
        "layer_nnz": nnz,
        "activation_bytes": max(u.activation_bytes for u in updates),
        "activation_bytes_per_client": [u.activation_bytes for u in updates],
        "bytes_down": int(down),
        "bytes_up": int(up),
        "extrusion": plan.marked is not None,
        "max_lr": max(u.max_lr for u in updates),
        "marked_count": sum(int(m.size) for m in marked) if marked is not None else None,
        "marked_norm_before": bae.marked_norm(received, marked) if marked else None,
        "marked_norm_after": norm_after,
        "adjustment": adjusting,
        "alpha": alpha_at(cfg, t) if adjusting else None,
        "pruned": _per_layer(prunable, report.pruned) if report else None,
        "grown": _per_layer(prunable, report.grown) if report else None,
    }
    if cfg.run.eval_around_adjustment:  # the aggregated model just before and after PG
        record["adjustment_eval"] = {"before": before, "after": after} if around else None
    return new_state, record
