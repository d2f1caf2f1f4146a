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
- ``authors`` (compat, *not* SPEC): what the authors' public code does, where it is cheap to
  mimic: the non-squared ``l2`` form with λ ramped up by :data:`AUTHORS_LAMBDA_RAMP` per local
  iteration, λ_τ = λ + 1e-4·(τ + 1), and the budget-aware learning rate without its sigmoid
  factor, β_τ = p(τ)·η0 (their code comments the sigmoid term out).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["VARIANTS", "AUTHORS_LAMBDA_RAMP", "marked_norm", "penalty", "lambda_at",
           "penalty_grads", "add_penalty_grad", "budget_lr", "progress_factor"]

VARIANTS = ("l2sq", "l2", "authors")

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
