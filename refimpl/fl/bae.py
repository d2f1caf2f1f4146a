"""Budget-aware extrusion on the client (SPEC BAE-2, BAE-4).

The marked set (BAE-1) comes from the server: per prunable layer, sorted flat indices of the k_l
smallest |θ| among the active entries of the global model received at round start
(:func:`refimpl.sparsity.marked_set`). It is fixed for the round.

The penalty is differentiated by hand and added to the CE gradient of the tape: its gradient is
nonzero only on marked positions (BAE-2), and keeping it off the tape keeps the tape's residuals
equal to the model's activation cache, the quantity MEM-2 measures.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["marked_norm", "penalty", "add_penalty_grad", "budget_lr", "progress_factor"]


def marked_norm(weights: list[np.ndarray], marked: list[np.ndarray]) -> float:
    """‖θ_Low‖₂ over all marked entries of all layers, accumulated in float64 (BAE-4)."""
    total = 0.0
    for w, idx in zip(weights, marked, strict=True):
        v = w.reshape(-1)[idx].astype(np.float64)
        total += float(np.dot(v, v))
    return math.sqrt(total)


def penalty(weights, marked, lam: float, variant: str) -> float:
    """BAE-2 value: ``l2sq`` λ·Σ_l Σ_{i∈Low_l} θ_i²; ``l2`` λ·Σ_l ‖θ_Low_l‖₂ (float64)."""
    out = 0.0
    for w, idx in zip(weights, marked, strict=True):
        v = w.reshape(-1)[idx].astype(np.float64)
        ss = float(np.dot(v, v))
        out += ss if variant == "l2sq" else math.sqrt(ss)
    return lam * out


def add_penalty_grad(grads: list[np.ndarray], weights, marked, lam: float, variant: str) -> None:
    """Add the BAE-2 penalty gradient in place: 2λθ_i (``l2sq``) or λθ_i/‖θ_Low_l‖₂ (``l2``;
    0 for a layer whose marked entries are all 0) on marked positions only."""
    for g, w, idx in zip(grads, weights, marked, strict=True):
        if idx.size == 0:
            continue
        v = w.reshape(-1)[idx]
        if variant == "l2sq":
            step = w.dtype.type(2.0 * lam) * v
        else:
            norm = math.sqrt(float(np.dot(v.astype(np.float64), v.astype(np.float64))))
            if norm == 0.0:
                continue
            step = w.dtype.type(lam / norm) * v
        g.reshape(-1)[idx] += step


def progress_factor(tau: int, iterations: int) -> float:
    """BAE-4: p(τ) = (2T − 2τ)/(2T − τ); p(0) = 1, decreasing, p(T) = 0."""
    return (2 * iterations - 2 * tau) / (2 * iterations - tau)


def budget_lr(lr_t: float, lr0: float, low_norm: float, tau: int, iterations: int) -> float:
    """BAE-4: μ_τ = max(η_t, β_τ), β_τ = p(τ)·(2σ(‖θ_Low‖₂) − 1)·η0 with σ the logistic
    function; ``low_norm`` is ‖θ_Low‖₂ of the current local weights before step τ."""
    sigma = 1.0 / (1.0 + math.exp(-low_norm))
    beta = progress_factor(tau, iterations) * (2.0 * sigma - 1.0) * lr0
    return max(lr_t, beta)
