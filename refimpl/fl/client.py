"""One client's work in one round: local training (SPEC LT-1..LT-3) with budget-aware extrusion
in extrusion rounds (BAE-2..BAE-4) and growth scores in adjustment rounds (PG-5).

A client is stateless between rounds: it starts from the broadcast global model and a fresh
optimizer (momentum buffers live for one round), so a round depends only on the global state
and the RNG-1 streams of (round, client).

Where the clients of a round run is a :class:`ClientExecutor`: it receives the round's
:class:`RoundTask` (what the server broadcasts) and returns one :class:`ClientUpdate` per sampled
client. :class:`LocalClients` runs them in this process, one after the other; the Flower engine
(:mod:`refimpl.fl.flower`) sends each to a SuperNode whose ClientApp runs :class:`LocalClients`
on its one client. Nothing else differs between engines (:mod:`refimpl.fl.engine`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .. import functional as F
from .. import models
from ..core.autodiff import value_and_grad
from ..core.optim import SGD
from ..core.rng import Purpose, stream
from ..sparsity import k_largest
from . import bae
from .config import Config
from .data import FedData
from .nets import effective_model, run_options, weight_scores
from .observe import LocalStep, Observer

__all__ = ["RoundPlan", "ClientUpdate", "RoundTask", "ClientExecutor", "LocalClients",
           "ClientError", "local_train", "growth_scores", "num_iterations", "Diverged"]


class Diverged(ArithmeticError):
    """``run.stop_on_divergence``: a local step's loss was not finite or exceeded
    ``run.divergence_loss``, or the step left a parameter that is not finite."""

    def __init__(self, t: int, client: int, step: int, what: str):
        super().__init__(f"round {t}, client {client}, local step {step}: {what}")
        self.round, self.client, self.step = t, client, step


@dataclass(frozen=True)
class RoundPlan:
    """What the server tells every client of round t.

    ``marked``: BAE-1 marked set (per prunable layer, sorted flat indices) when the round
    extrudes, else None. ``grow_counts``: k_l when the round adjusts (clients then upload growth
    scores, PG-5), else None.
    """

    t: int
    lr: float
    marked: list | None = None
    grow_counts: list | None = None


@dataclass
class ClientUpdate:
    """What a client uploads (and what the engine records about it)."""

    client: int
    n: int  # number of local examples n_k (aggregation weight, AGG-1)
    params: dict
    buffers: dict
    loss: float  # mean CE over the round's iterations (penalty excluded)
    iterations: int  # T = E·ceil(n_k/B) (LT-3, BAE-3)
    activation_bytes: int  # tape residual bytes after the round's first forward (MEM-2)
    max_lr: float  # largest step size used (μ_τ in extrusion rounds, else η_t)
    growth: list | None = field(default=None)  # per layer (flat indices, values) (PG-5)


@dataclass(frozen=True)
class RoundTask:
    """What the server broadcasts in round t (FL-1): one global model and one plan for every
    sampled client, and per client whether its download carries the mask bitmaps (MEM-4: a
    client that does not hold the current mask receives it).

    ``clients``: the sampled clients, ascending; ``send_mask[i]`` belongs to ``clients[i]``.
    ``mask_version`` counts the prune-and-grow steps that changed a mask (docs/federated.md).
    The arrays are the server's own (read-only for an executor).
    """

    t: int
    clients: tuple
    params: dict
    buffers: dict
    masks: dict | None
    mask_version: int
    plan: RoundPlan
    send_mask: tuple


class ClientError(RuntimeError):
    """The update of ``client`` in round ``t`` could not be obtained: its device failed, went
    offline, or answered with something that does not fit the round. The message names both;
    the run stops with its last checkpoint intact (``fedmef run --resume`` continues)."""

    user_facing = True  # `fedmef` prints the message, not a traceback

    def __init__(self, t: int, client: int, reason: str):
        super().__init__(f"round {t}: client {client}: {reason}")
        self.t, self.client, self.reason = t, client, reason


class ClientExecutor(Protocol):
    """Where the clients of a round compute their updates: the only part of a round that an
    execution engine changes (:func:`refimpl.fl.engine.run_round`)."""

    def train(self, task: RoundTask) -> list[ClientUpdate]:
        """One update per client of ``task.clients`` (any order; aggregation sorts by id,
        AGG-1). A client that cannot deliver raises :class:`ClientError`."""

    def round_report(self) -> dict | None:
        """What the transport of the last :meth:`train` carried (bytes, time), for the run's
        ``transport.jsonl``; None when nothing left this process."""


class LocalClients:
    """The clients of a round in this process, one after the other in ascending id, each with
    :func:`local_train` on the broadcast arrays (``observer`` sees every step)."""

    def __init__(self, model: models.Model, data: FedData, cfg: Config,
                 observer: Observer | None = None):
        self.model, self.data, self.cfg, self.observer = model, data, cfg, observer

    def train(self, task: RoundTask) -> list[ClientUpdate]:
        return [local_train(self.model, task.params, task.buffers, task.masks, self.data, int(k),
                            task.plan, self.cfg, self.observer) for k in task.clients]

    def round_report(self) -> dict | None:
        return None


def num_iterations(n: int, cfg: Config) -> int:
    """LT-3: T = E · ceil(n_k / B)."""
    return cfg.train.local_epochs * math.ceil(n / cfg.train.batch_size)


def _batches(cfg: Config, t: int, client: int, n: int):
    """LT-2: per epoch a permutation from stream SHUFFLE (t, client, epoch); batches of B in
    that order, the last one possibly smaller."""
    b = cfg.train.batch_size
    for epoch in range(cfg.train.local_epochs):
        order = stream(cfg.run.seed, Purpose.SHUFFLE, t, client, epoch).permutation(n)
        for s in range(0, n, b):
            yield order[s:s + b]


def local_train(model: models.Model, params: dict, buffers: dict, masks: dict | None,
                data: FedData, client: int, plan: RoundPlan, cfg: Config,
                observer: Observer | None = None) -> ClientUpdate:
    """Train a copy of the global model on client ``client``'s data for E epochs (LT-1..LT-3).

    Each step: mean cross-entropy over the batch on the tape; in an extrusion round the BAE-2
    penalty gradient (with λ_τ, :func:`bae.lambda_at`) is added on the marked positions and the
    step size is μ_τ (BAE-4, unless ``bae.budget_lr`` is false); the SGD step then re-masks
    W ← W ⊙ M (MASK-3). An extrusion round runs exactly the same T iterations as any other
    round (BAE-3). ``observer`` (:class:`refimpl.fl.observe.Observer`) sees every forward and
    step without changing them.
    """
    idx_all = data.parts[client]
    n = int(idx_all.size)
    p = {k: v.copy() for k, v in params.items()}
    local = models.Model(model.name, model.layers, p, {k: v.copy() for k, v in buffers.items()})
    opts = run_options(cfg, masks)
    prunable = model.prunable
    measured: list[int] = []

    def loss_fn(q, xb, yb):
        loss = F.cross_entropy(models.forward(local, q, xb, train=True, options=opts), yb)
        if not measured:  # MEM-2: the activation cache after the round's first forward
            measured.append(loss.tape.residual_nbytes())
        if observer is not None:  # before backward releases the residuals; τ = steps done
            observer.local_forward(plan.t, client, len(losses), local, p, xb, opts, loss.tape)
        return loss

    step = value_and_grad(loss_fn)
    tr = cfg.train
    opt = SGD(plan.lr, momentum=tr.momentum, weight_decay=tr.weight_decay)
    iterations = num_iterations(n, cfg)
    extrude = plan.marked is not None
    rule = _round_rule(cfg, plan, [masks[name] for name in prunable], iterations) if extrude \
        else None
    losses, max_lr = [], 0.0
    per_epoch = math.ceil(n / tr.batch_size)
    for tau, order in enumerate(_batches(cfg, plan.t, client, n)):
        idx = idx_all[order]
        xb, yb = data.batch(data.x_train[idx]), data.y_train[idx]
        try:
            loss, grads = step(p, xb, yb)
        except ValueError as e:  # SAP cannot rank activations that overflowed (non-finite)
            if cfg.run.stop_on_divergence and "non-finite" in str(e):
                raise Diverged(plan.t, client, tau, f"non-finite activations ({e})") from None
            raise
        losses.append(float(loss))
        if cfg.run.stop_on_divergence and not losses[-1] <= cfg.run.divergence_loss:
            raise Diverged(plan.t, client, tau, f"loss {losses[-1]} is not finite or exceeds "
                           f"run.divergence_loss = {cfg.run.divergence_loss}")
        lr = plan.lr
        ce_grads = {k: g.copy() for k, g in grads.items()} if observer is not None else None
        lam = pen = low_norm = pen_grads = None
        if extrude:
            weights = [p[name] for name in prunable]
            sp = rule.step(weights, tau)  # λ_τ, μ_τ (BAE-4) and the step's marked set
            lam, low_norm, lr = sp.lam, sp.low_norm, sp.lr
            if observer is not None:
                pen = bae.penalty(weights, sp.marked, lam, cfg.bae.variant)
            pen_grads = bae.add_penalty_grad([grads[name] for name in prunable], weights,
                                             sp.marked, lam, cfg.bae.variant)
        max_lr = max(max_lr, lr)
        opt.step(p, grads, masks, lr=lr)
        if cfg.run.stop_on_divergence:
            bad = next((k for k, v in p.items() if not np.isfinite(v).all()), None)
            if bad is not None:
                raise Diverged(plan.t, client, tau, f"the step left {bad} with a non-finite "
                               f"value")
        if observer is not None:
            observer.local_step(plan.t, client, LocalStep(
                tau, tau // per_epoch, np.asarray(order, dtype=np.int64), xb, yb, float(loss),
                lr, ce_grads, pen_grads, lam, pen, low_norm, p))
    if len(losses) != iterations:  # BAE-3 / LT-3 budget, guarded
        raise AssertionError(f"client {client} ran {len(losses)} iterations, expected "
                             f"{iterations}")
    growth = None
    if plan.grow_counts is not None:
        growth = growth_scores(local, p, masks, data, client, plan, cfg, observer)
    return ClientUpdate(client, n, p, local.buffers, float(np.mean(losses)), iterations,
                        measured[0], max_lr, growth)


def _round_rule(cfg: Config, plan: RoundPlan, masks: list, iterations: int) -> bae.RoundRule:
    """The per-step BaE rule of this round from the configuration (BAE-2, BAE-4, compat
    switches of docs/DEVIATIONS.md); the authors' round index is t − 1 (their rounds are
    0-based) and their transfer_epochs is 0 (their default)."""
    b, tr = cfg.bae, cfg.train
    return bae.RoundRule(plan.marked, masks, lam=b.lam, variant=b.variant, budget_lr=b.budget_lr,
                         lr_t=plan.lr, lr0=tr.lr, lr_min=tr.lr_min, iterations=iterations,
                         lambda_ramp=b.lambda_ramp, lambda_delta=b.lambda_delta,
                         lr_rule=b.lr_rule, marked_set=b.marked_set, round_idx=plan.t - 1,
                         delta_epochs=cfg.sparse.delta_t)


def growth_scores(model: models.Model, params: dict, masks: dict, data: FedData, client: int,
                  plan: RoundPlan, cfg: Config, observer: Observer | None = None) -> list:
    """PG-5 on the client: the dense CE gradient with respect to the effective kernel of every
    prunable layer, on the first mini-batch of stream GROW (round t, client); per layer, the
    k_l (flat index, value) pairs of largest |score| among inactive positions (CONV-4), indices
    ascending. The forward uses the training run options (SAP included: the client's memory
    budget holds here too) in train mode, on a copy of the BatchNorm buffers.

    ``sparse.growth_score = "weight"`` (compat G1): the score of an NSConv layer is dL/dW, the
    effective-kernel gradient pulled back through the standardisation (their ``weight.grad``),
    which is constant over a channel's inactive positions; other layers are unchanged.
    """
    idx_all = data.parts[client]
    order = stream(cfg.run.seed, Purpose.GROW, plan.t, client).permutation(idx_all.size)
    idx = idx_all[order[:cfg.train.batch_size]]
    xb, yb = data.batch(data.x_train[idx]), data.y_train[idx]
    eff, eff_params = effective_model(model, params, masks, cfg.model.nsconv_stats)
    prunable = model.prunable
    const = {k: v for k, v in eff_params.items() if k not in prunable}
    opts = run_options(cfg, None)  # no masks: dense weight gradients

    def loss_fn(w):
        return F.cross_entropy(models.forward(eff, {**const, **w}, xb, train=True, options=opts),
                               yb)

    _, grads = value_and_grad(loss_fn)({name: eff_params[name] for name in prunable})
    if cfg.sparse.growth_score == "weight":
        grads = weight_scores(model, params, masks, cfg.model.nsconv_stats, grads)
    out = []
    for name, k in zip(prunable, plan.grow_counts, strict=True):
        score = grads[name].reshape(-1)
        inactive = np.flatnonzero(~masks[name].reshape(-1))
        top = k_largest(inactive, np.abs(score[inactive]), k).astype(np.int64)
        out.append((top, score[top].copy()))
    if observer is not None:
        observer.growth(plan.t, client, order, grads, out)
    return out
