"""One federated round (SPEC FL-1): sample, broadcast, local training, upload, aggregate, and on
adjustment rounds prune and grow. Returns the new global state and the round's metrics record.

A round is three steps, so that *where* the clients compute their updates is the only thing an
execution engine changes (one source of truth for everything else)::

    start = server_begin(cfg, model, state, t)   # FL-1 sampling, BAE-1 marked set, the
                                                 # RoundPlan, MEM-4 downloads -> start.task
    updates = clients.train(start.task)          # LT-1..3, BAE-2..4, PG-5 on every client
    state, record = server_end(cfg, model, state, data, start, updates)
                                                 # AGG-1, PG-5..7, MEM-4 uploads, evaluation

:func:`run_round` does the three with a :class:`~refimpl.fl.client.ClientExecutor`:
:class:`~refimpl.fl.client.LocalClients` (this process) by default, or the Flower engine's
(:mod:`refimpl.fl.flower`), whose ClientApps call ``LocalClients`` on their one client. The
plan a client trains with is a function of the global model it received
(:func:`round_plan`), so a remote client can recompute it from its download and check it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import models
from ..sparsity import adjust_counts, fedpruning_count, marked_set
from . import bae
from .client import ClientExecutor, ClientUpdate, LocalClients, RoundPlan, RoundTask
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

__all__ = ["run_round", "server_begin", "server_end", "round_plan", "RoundStart",
           "should_evaluate", "evaluations"]


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


def round_plan(cfg: Config, received: list, masks: list | None, t: int
               ) -> tuple[RoundPlan, list | None]:
    """The RoundPlan of round t and the BAE-1 marked set of the coming adjustment (None when
    round t works towards none), from the global model at round start: ``received`` and
    ``masks`` are the prunable layers' weights and masks in ``model.prunable`` order (masks
    None for a dense run).

    The plan carries η_t (LT-1), the marked set when the round extrudes (BAE-5) and the PG-3
    counts k_l when it adjusts. The marked set is also computed for a dynamic method without
    BaE, for the metrics (docs/federated.md). It reads only the active entries (or, compat F2,
    |θ| of every entry), so a client that rebuilt the model from its sparse download (zeros
    off the mask) computes the same plan as the server."""
    t_adj = adjustment_target(cfg, t)
    marked = _server_marked(cfg, received, masks, t_adj, t) if t_adj is not None else None
    grow_counts = adjust_counts(masks, grow_alpha_at(cfg, t)) if is_adjustment(cfg, t) else None
    plan = RoundPlan(t, learning_rate(cfg, t), marked if is_extrusion(cfg, t) else None,
                     grow_counts)
    return plan, marked


@dataclass(frozen=True)
class RoundStart:
    """The server's side of round t after :func:`server_begin`: the broadcast (``task``) and
    what :func:`server_end` needs besides the updates.

    ``received``: the prunable weights broadcast (the global model at round start, in
    ``model.prunable`` order); ``marked``: the BAE-1 marked set of the coming adjustment (None
    when there is none); ``client_versions``: the mask version each client holds after the
    broadcast; ``bytes_down``: MEM-4 downloads of the round, summed over its clients."""

    task: RoundTask
    received: list
    marked: list | None
    t_adj: int | None
    adjusting: bool
    client_versions: np.ndarray
    bytes_down: int


def server_begin(cfg: Config, model: models.Model, state: GlobalState, t: int) -> RoundStart:
    """Round t, server side before the clients: sample C of K clients (FL-1, stream SAMPLE),
    the round plan (:func:`round_plan`) and the MEM-4 download of each client (mask bitmaps to
    a client that does not hold the current mask). ``state`` is not modified."""
    if t != state.round + 1:
        raise ValueError(f"run_round: state holds round {state.round}, cannot run round {t}")
    prunable = model.prunable
    masks = state.masks
    mask_list = [masks[n] for n in prunable] if masks is not None else None
    received = [state.params[n] for n in prunable]
    clients = sample_clients(cfg.run.seed, t, cfg.data.num_clients, cfg.train.clients_per_round)
    plan, marked = round_plan(cfg, received, mask_list, t)

    client_versions = state.client_mask_version.copy()
    send_mask, down = [], 0
    for k in clients:
        send = bool(client_versions[k] != state.mask_version)
        down += bytes_down(state.params, state.buffers, masks, send_mask=send)
        client_versions[k] = state.mask_version
        send_mask.append(send)
    task = RoundTask(t, tuple(int(k) for k in clients), state.params, state.buffers, masks,
                     state.mask_version, plan, tuple(send_mask))
    return RoundStart(task, received, marked, adjustment_target(cfg, t),
                      is_adjustment(cfg, t), client_versions, int(down))


def _check_updates(task: RoundTask, updates: list[ClientUpdate]) -> None:
    got = sorted(u.client for u in updates)
    if got != sorted(task.clients):
        raise ValueError(f"round {task.t}: the client executor returned updates of clients "
                         f"{got}, expected one of each of {list(task.clients)}")


def server_end(cfg: Config, model: models.Model, state: GlobalState, data: FedData,
               start: RoundStart, updates: list[ClientUpdate],
               observer: Observer | None = None) -> tuple[GlobalState, dict]:
    """Round t, server side after the clients: MEM-4 uploads, FedAvg (AGG-1, in ascending
    client id whatever the order of ``updates``), on an adjustment round growth averaging and
    prune-and-grow (PG-5..PG-7), evaluation, and the round's metrics record. ``state`` (the
    state the round started from) is not modified."""
    task, t = start.task, start.task.t
    _check_updates(task, updates)
    prunable = model.prunable
    masks = state.masks
    mask_list = [masks[n] for n in prunable] if masks is not None else None
    received, marked, t_adj = start.received, start.marked, start.t_adj
    shapes = {n: state.params[n].shape for n in prunable}
    updates = sorted(updates, key=lambda u: u.client)  # the record lists clients ascending
    up = sum(bytes_up(u, masks, shapes) for u in updates)
    params, buffers = aggregate(updates, masks)
    if observer is not None:
        observer.aggregated(t, params, buffers)
    norm_after = bae.marked_norm([params[n] for n in prunable], marked) if marked else None

    new_masks, mask_version, report = masks, state.mask_version, None
    around = cfg.run.eval_around_adjustment and start.adjusting
    before = evaluations(model, params, buffers, masks, data, cfg) if around else None
    if start.adjusting:
        scores = average_growth(updates, list(shapes.values()))
        low = None
        if cfg.sparse.prune == "marked":  # Low_l of this adjustment round (docs/federated.md)
            low = marked if t_adj == t else marked_set(received, mask_list,
                                                       task.plan.grow_counts)
        grow_alpha = grow_alpha_at(cfg, t) if cfg.sparse.counts == "drift" else None
        params, new_masks, report = prune_and_grow(params, masks, prunable, scores,
                                                   alpha_at(cfg, t), cfg.sparse.prune, low,
                                                   grow_alpha)
        if any(not np.array_equal(new_masks[n], masks[n]) for n in prunable):
            mask_version += 1
        if observer is not None:
            observer.adjusted(t, scores, report, params, new_masks)
    new_state = GlobalState(t, params, buffers, new_masks, mask_version, start.client_versions)

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
        "lr": task.plan.lr,
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
        "bytes_down": start.bytes_down,
        "bytes_up": int(up),
        "extrusion": task.plan.marked is not None,
        "max_lr": max(u.max_lr for u in updates),
        "marked_count": sum(int(m.size) for m in marked) if marked is not None else None,
        "marked_norm_before": bae.marked_norm(received, marked) if marked else None,
        "marked_norm_after": norm_after,
        "adjustment": start.adjusting,
        "alpha": alpha_at(cfg, t) if start.adjusting else None,
        "pruned": _per_layer(prunable, report.pruned) if report else None,
        "grown": _per_layer(prunable, report.grown) if report else None,
    }
    if cfg.run.eval_around_adjustment:  # the aggregated model just before and after PG
        record["adjustment_eval"] = {"before": before, "after": after} if around else None
    return new_state, record


def run_round(cfg: Config, model: models.Model, state: GlobalState, data: FedData,
              t: int, observer: Observer | None = None,
              clients: ClientExecutor | None = None) -> tuple[GlobalState, dict]:
    """Round t on ``state`` (the state after round t − 1); ``state`` itself is not modified.

    ``clients`` computes the clients' updates (default :class:`LocalClients`: this process).
    ``observer`` (:class:`refimpl.fl.observe.Observer`) is told what the round computes, step
    by step, without changing it (the conformance kit records golden vectors this way); the
    per-step hooks come from the clients, so only :class:`LocalClients` with the same observer
    calls them."""
    start = server_begin(cfg, model, state, t)
    if observer is not None:
        plan = start.task.plan
        observer.round_start(t, np.asarray(start.task.clients, dtype=np.int64), plan,
                             alpha_at(cfg, t) if start.adjusting else None)
    if clients is None:
        clients = LocalClients(model, data, cfg, observer)
    updates = clients.train(start.task)
    return server_end(cfg, model, state, data, start, updates, observer)
