"""Which round does what: learning rate (LT-1), adjustment rounds (PG-1, PG-2), extrusion rounds
(BAE-5) and the counts k_l of the coming adjustment (PG-3, BAE-1).

Rounds are t = 1..R (CONV-7). All functions are pure in the configuration and t.
"""

from __future__ import annotations

from ..sparsity import adjust_counts, alpha_schedule
from .config import Config

__all__ = ["learning_rate", "is_adjustment", "adjustment_target", "is_extrusion", "alpha_at",
           "coming_counts"]


def learning_rate(cfg: Config, t: int) -> float:
    """LT-1: η_t = η0 · (η_min/η0)^((t − 1)/R) in float64, or η0 with the constant schedule."""
    tr = cfg.train
    if tr.lr_schedule == "constant":
        return float(tr.lr)
    return float(tr.lr * (tr.lr_min / tr.lr) ** ((t - 1) / cfg.run.rounds))


def is_adjustment(cfg: Config, t: int) -> bool:
    """PG-1: a dynamic method adjusts the mask at t with t mod ΔT = 0 and t ≤ T_end."""
    return cfg.dynamic and t % cfg.sparse.delta_t == 0 and t <= cfg.t_end


def adjustment_target(cfg: Config, t: int) -> int | None:
    """The adjustment round whose marked set round t works on (BAE-1, BAE-5), or None.

    With ``bae.rounds = 0`` the adjustment round itself (its clients extrude during local
    training, then compute growth scores); with ``bae.rounds = E_b >= 1`` each of the E_b rounds
    before an adjustment round (and not the adjustment round). Defined for every dynamic run, so
    runs without BaE record the same marked set's norm for comparison; the penalty applies only
    when ``bae.enabled`` (see :func:`is_extrusion`).
    """
    if not cfg.dynamic:
        return None
    eb = cfg.bae.rounds
    if eb == 0:
        return t if is_adjustment(cfg, t) else None
    for t_adj in range(t + 1, t + eb + 1):
        if is_adjustment(cfg, t_adj):
            return t_adj
    return None


def is_extrusion(cfg: Config, t: int) -> bool:
    """Whether the clients of round t train with the BaE penalty and learning rate (BAE-5)."""
    return bool(cfg.bae.enabled) and adjustment_target(cfg, t) is not None


def alpha_at(cfg: Config, t: int) -> float:
    """PG-2: α_t = α/2 · (1 + cos(π t / T_end)) in float64."""
    return alpha_schedule(cfg.sparse.alpha, t, cfg.t_end)


def coming_counts(cfg: Config, masks: list, t_adj: int) -> list[int]:
    """PG-3 counts k_l of the adjustment at round ``t_adj`` for the current masks. Masks change
    only at adjustments, so the counts an extrusion round sees equal the adjustment's own."""
    return adjust_counts(masks, alpha_at(cfg, t_adj))
