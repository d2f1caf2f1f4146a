"""Budget-aware extrusion on the client (SPEC BAE-2, BAE-4), and the compat variant that mimics
the public code (docs/DEVIATIONS.md).

The marked set (BAE-1) comes from the server: per prunable layer, sorted flat indices of the k_l
smallest |θ| among the active entries of the global model received at round start
(:func:`refimpl.sparsity.marked_set`). It is fixed for the round.

The penalty is differentiated by hand and added to the CE gradient of the tape: its gradient is
nonzero only on marked positions (BAE-2), and keeping it off the tape keeps the tape's residuals
equal to the model's activation cache, the quantity MEM-2 measures.

Variants (``bae.variant``):

- ``l2sq`` (SPEC default): λ·Σ_l Σ_{i∈Low_l} θ_i², gradient 2λθ_i.
- ``l2`` (SPEC variant): λ·Σ_l ‖θ_Low_l‖₂, gradient λθ_i/‖θ_Low_l‖₂ (0 for an all-zero layer).
- ``authors`` (compat, *not* SPEC): the reading of SPEC's one-line description of the public
  code: the non-squared ``l2`` form with λ ramped up by :data:`AUTHORS_LAMBDA_RAMP` per local
  iteration, λ_τ = λ + 1e-4·(τ + 1), and the budget-aware learning rate without its sigmoid
  factor, β_τ = p(τ)·η0. Measured against the code it is wrong in both (docs/DEVIATIONS.md);
  kept as it was, the measured behaviour is the switches below with ``l2``.

Per-step compat switches measured against the authors' code (docs/DEVIATIONS.md E2-E4, F3),
applied by :class:`RoundRule`, the per-step state of one client's extrusion round:

- λ ramp ``authors``: λ_τ = min(λ_{τ−1} + δ, λ), λ_{−1} = 0, a running float sum restarted
  every round (:func:`authors_lambda`).
- learning rate ``authors``: μ_τ = max(η_t, β, η_min), β = (2 − 2p)/(2 − p) · clamp(P_τ, η_min,
  10) · η0 with P_τ = Σ_l ‖θ_Low_l‖₂ (unweighted) and p their round phase (0 with their default
  transfer_epochs = 0); when P_τ = 0 the previous step's rate stays (:func:`authors_lr`).
- marked set ``authors``: before every step the ⌊k_l/2⌋ smallest |θ| among the active entries of
  the current local weights; ``fedpruning_dynamic``: every entry with |θ| ≤ the (k_l+1)-th
  smallest |θ| of the current local weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..sparsity import at_most_kth, marked_set

__all__ = ["VARIANTS", "AUTHORS_LAMBDA_RAMP", "marked_norm", "penalty", "lambda_at",
           "penalty_grads", "add_penalty_grad", "budget_lr", "progress_factor",
           "LAMBDA_RAMPS", "LR_RULES", "MARKED_SETS", "authors_lambda", "authors_phase",
           "authors_lr", "StepPlan", "RoundRule"]

VARIANTS = ("l2sq", "l2", "authors")
LAMBDA_RAMPS = ("none", "authors")
LR_RULES = ("spec", "authors")
MARKED_SETS = ("fixed", "authors", "fedpruning", "fedpruning_dynamic")

#: λ increment per local iteration of the public code (compat variant ``authors``).
AUTHORS_LAMBDA_RAMP = 1e-4


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown BaE variant {variant!r}; valid: {', '.join(VARIANTS)}")


def marked_norm(weights: list[np.ndarray], marked: list[np.ndarray]) -> float:
    """‖θ_Low‖₂ over all marked entries of all layers, accumulated in float64 (BAE-4)."""
    total = 0.0
    for w, idx in zip(weights, marked, strict=True):
        v = w.reshape(-1)[idx].astype(np.float64)
        total += float(np.dot(v, v))
    return math.sqrt(total)


def lambda_at(lam: float, variant: str, tau: int) -> float:
    """λ of local iteration τ: λ itself (BAE-2), or for the compat variant ``authors`` the
    public code's ramp λ_τ = λ + 1e-4·(τ + 1) (the increment precedes the step that uses it;
    the ramp restarts every round because clients are stateless)."""
    _check_variant(variant)
    if variant == "authors":
        return lam + AUTHORS_LAMBDA_RAMP * (tau + 1)
    return lam


def penalty(weights, marked, lam: float, variant: str) -> float:
    """BAE-2 value: ``l2sq`` λ·Σ_l Σ_{i∈Low_l} θ_i²; ``l2`` and ``authors`` λ·Σ_l ‖θ_Low_l‖₂
    (float64). ``lam`` is λ of the iteration (:func:`lambda_at`)."""
    _check_variant(variant)
    out = 0.0
    for w, idx in zip(weights, marked, strict=True):
        v = w.reshape(-1)[idx].astype(np.float64)
        ss = float(np.dot(v, v))
        out += ss if variant == "l2sq" else math.sqrt(ss)
    return lam * out


def penalty_grads(weights, marked, lam: float, variant: str) -> list[np.ndarray]:
    """Per layer, the BAE-2 penalty gradient on the marked positions, in the marked set's order
    (the weights' dtype): 2λθ_i (``l2sq``) or λθ_i/‖θ_Low_l‖₂ (``l2``, ``authors``; 0 for a
    layer whose marked entries are all 0). Zero everywhere else (BAE-2)."""
    _check_variant(variant)
    out = []
    for w, idx in zip(weights, marked, strict=True):
        v = w.reshape(-1)[idx]
        if idx.size == 0:
            out.append(np.zeros(0, dtype=w.dtype))
            continue
        if variant == "l2sq":
            out.append(w.dtype.type(2.0 * lam) * v)
            continue
        norm = math.sqrt(float(np.dot(v.astype(np.float64), v.astype(np.float64))))
        out.append(np.zeros_like(v) if norm == 0.0 else w.dtype.type(lam / norm) * v)
    return out


def add_penalty_grad(grads: list[np.ndarray], weights, marked, lam: float,
                     variant: str) -> list[np.ndarray]:
    """Add the BAE-2 penalty gradient (:func:`penalty_grads`) in place on the marked positions
    of ``grads``; return the per-layer terms added."""
    steps = penalty_grads(weights, marked, lam, variant)
    for g, idx, step in zip(grads, marked, steps, strict=True):
        # a layer whose marked entries are all 0 has no l2 gradient: leave g untouched (adding
        # +0.0 would turn a -0.0 gradient entry into +0.0)
        if idx.size and (variant == "l2sq" or np.any(step)):
            g.reshape(-1)[idx] += step
    return steps


def progress_factor(tau: int, iterations: int) -> float:
    """BAE-4: p(τ) = (2T − 2τ)/(2T − τ); p(0) = 1, decreasing, p(T) = 0."""
    return (2 * iterations - 2 * tau) / (2 * iterations - tau)


def budget_lr(lr_t: float, lr0: float, low_norm: float, tau: int, iterations: int,
              sigmoid: bool = True) -> float:
    """BAE-4: μ_τ = max(η_t, β_τ), β_τ = p(τ)·(2σ(‖θ_Low‖₂) − 1)·η0 with σ the logistic
    function; ``low_norm`` is ‖θ_Low‖₂ of the current local weights before step τ.
    ``sigmoid=False`` (compat variant ``authors``) drops the factor (2σ(‖θ_Low‖₂) − 1):
    β_τ = p(τ)·η0."""
    factor = 1.0
    if sigmoid:
        factor = 2.0 * (1.0 / (1.0 + math.exp(-low_norm))) - 1.0
    beta = progress_factor(tau, iterations) * factor * lr0
    return max(lr_t, beta)


# ---- compat rules measured against the public code (docs/DEVIATIONS.md) ----------------------
def authors_lambda(prev: float, cap: float, delta: float) -> float:
    """The authors' λ of a step (compat E2): min(λ_prev + δ, cap), λ_prev = 0 before the first
    step of a round; a running float sum (0.009999999999999995 after 100 steps of 1e-4)."""
    return min(prev + delta, cap)


def authors_phase(round_idx: int, delta_epochs: int, transfer_epochs: int = 0) -> float:
    """The authors' phase p of the budget rate (compat E3), a function of the round, not of τ:
    ((round_idx + transfer_epochs) mod ΔT)/ΔT with their 0-based round, and 0 whenever
    transfer_epochs = 0 (their default), as measured (fixture bae_schedule.npz)."""
    if transfer_epochs == 0:
        return 0.0
    return ((round_idx + transfer_epochs) % delta_epochs) / delta_epochs


def authors_lr(lr_t: float, lr0: float, lr_min: float, penalty_sum: float,
               phase: float) -> float | None:
    """The authors' budget-aware rate (compat E3): max(max(η_t, β), η_min) with
    β = (2 − 2p)/(2 − p) · max(η_min, min(P, 10)) · η0 and P = Σ_l ‖θ_Low_l‖₂ (unweighted).
    None when P = 0: their branch does not run and the optimizer keeps its previous rate."""
    if penalty_sum == 0:
        return None
    rate = max(lr_min, min(penalty_sum, 10.0))
    beta = (2 - 2 * phase) / (2 - phase) * rate * lr0
    return max(max(lr_t, beta), lr_min)


@dataclass(frozen=True)
class StepPlan:
    """What BaE uses at one local step: the marked set (per layer, sorted flat indices), λ_τ,
    the step size μ_τ and ‖θ_Low‖₂ of the weights before the step (recorded, BAE-4)."""

    marked: list
    lam: float
    lr: float
    low_norm: float


class RoundRule:
    """BaE's per-step quantities in one client's extrusion round (BAE-1, BAE-2, BAE-4 and the
    compat switches of the module docstring). Created per client round (clients are stateless,
    LT-1), so the authors' λ ramp and kept learning rate restart every round, as their client
    manager sets λ = 0 when an extrusion round starts.

    ``server_marked``: the round's marked set from the server (its sizes are k_l); ``masks``:
    the layers' masks in the same order. ``round_idx``: the authors' 0-based round (t − 1),
    ``delta_epochs``: ΔT, for their phase p.
    """

    def __init__(self, server_marked: list, masks: list, *, lam: float, variant: str = "l2sq",
                 budget_lr: bool = True, lr_t: float, lr0: float, lr_min: float,
                 iterations: int, lambda_ramp: str = "none", lambda_delta: float = 1e-4,
                 lr_rule: str = "spec", marked_set: str = "fixed", round_idx: int = 0,
                 delta_epochs: int = 1, transfer_epochs: int = 0):
        _check_variant(variant)
        for name, v, valid in (("lambda_ramp", lambda_ramp, LAMBDA_RAMPS),
                               ("lr_rule", lr_rule, LR_RULES),
                               ("marked_set", marked_set, MARKED_SETS)):
            if v not in valid:
                raise ValueError(f"RoundRule: unknown {name} {v!r}; valid: {', '.join(valid)}")
        self.server_marked, self.masks = server_marked, masks
        self.lam, self.variant, self.budget = lam, variant, budget_lr
        self.lr_t, self.lr0, self.lr_min, self.iterations = lr_t, lr0, lr_min, iterations
        self.ramp, self.delta, self.lr_rule, self.marked_rule = (lambda_ramp, lambda_delta,
                                                                 lr_rule, marked_set)
        self.phase = authors_phase(round_idx, delta_epochs, transfer_epochs)
        self._lam, self._lr = 0.0, lr_t

    def _marked(self, weights: list) -> list:
        if self.marked_rule == "authors":
            return marked_set(weights, self.masks, [m.size // 2 for m in self.server_marked])
        if self.marked_rule == "fedpruning_dynamic":
            return at_most_kth(weights, [m.size for m in self.server_marked])
        return self.server_marked

    def step(self, weights: list, tau: int) -> StepPlan:
        """The plan of local step τ, from the current local weights (before the step)."""
        marked = self._marked(weights)
        if self.ramp == "authors":
            self._lam = authors_lambda(self._lam, self.lam, self.delta)
            lam = self._lam
        else:
            lam = lambda_at(self.lam, self.variant, tau)
        low_norm = marked_norm(weights, marked)
        lr = self.lr_t
        if self.budget and self.lr_rule == "authors":
            new = authors_lr(self.lr_t, self.lr0, self.lr_min, penalty(weights, marked, 1.0, "l2"),
                             self.phase)
            self._lr = self._lr if new is None else new
            lr = self._lr
        elif self.budget:  # BAE-4, with ‖θ_Low‖ of the weights before this step
            lr = budget_lr(self.lr_t, self.lr0, low_norm, tau, self.iterations,
                           sigmoid=self.variant != "authors")
        return StepPlan(marked, lam, lr, low_norm)
