"""Which round does what: learning rate (LT-1), adjustment rounds (PG-1, PG-2), extrusion rounds
(BAE-5) and the counts k_l of the coming adjustment (PG-3, BAE-1).

Rounds are t = 1..R (CONV-7). All functions are pure in the configuration and t.

Compat (docs/DEVIATIONS.md P1, P2): ``sparse.schedule = "authors"`` adjusts where the authors'
server does (their 0-based round r = t − 1 prepares with r mod ΔT = 0, r ≤ T_end) with their
cumulative cosine (:func:`refimpl.sparsity.authors_rates`); ``sparse.counts = "drift"`` grows with
the rate before the adjustment (:func:`grow_alpha_at`) and prunes with the rate after it.
"""

from __future__ import annotations

from ..sparsity import adjust_counts, alpha_schedule, authors_rates
from .config import Config

__all__ = ["learning_rate", "is_adjustment", "adjustment_target", "is_extrusion", "alpha_at",
           "grow_alpha_at", "coming_counts"]


def learning_rate(cfg: Config, t: int) -> float:
    """LT-1: η_t = η0 · (η_min/η0)^((t − 1)/R) in float64, or η0 with the constant schedule."""
    tr = cfg.train
    if tr.lr_schedule == "constant":
        return float(tr.lr)
    return float(tr.lr * (tr.lr_min / tr.lr) ** ((t - 1) / cfg.run.rounds))


def is_adjustment(cfg: Config, t: int) -> bool:
    """PG-1: a dynamic method adjusts the mask at t with t mod ΔT = 0 and t ≤ T_end (compat
    schedule ``authors``: at t with (t − 1) mod ΔT = 0 and t − 1 ≤ T_end)."""
    if cfg.sparse.schedule == "authors":
        return cfg.dynamic and (t - 1) % cfg.sparse.delta_t == 0 and t - 1 <= cfg.t_end
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


def _authors_rates(cfg: Config, t: int):
    """The authors' rates of the adjustments up to round t (their 0-based rounds t_i − 1)."""
    prepared = [u - 1 for u in range(1, t + 1) if is_adjustment(cfg, u)]
    return authors_rates(cfg.sparse.alpha, cfg.t_end, cfg.train.local_epochs, prepared)


def alpha_at(cfg: Config, t: int) -> float:
    """PG-2: α_t = α/2 · (1 + cos(π t / T_end)) in float64. Compat schedule ``authors``: the
    rate after their schedule step at the adjustment of round t (their prune rate)."""
    if cfg.sparse.schedule == "authors":
        return _authors_rates(cfg, t).prune[-1]
    return alpha_schedule(cfg.sparse.alpha, t, cfg.t_end)


def grow_alpha_at(cfg: Config, t: int) -> float:
    """The rate of the grow count (and of the marked set's k_l) of the adjustment at round t:
    α_t itself (PG-3), or with ``sparse.counts = "drift"`` the rate before this adjustment's
    schedule step: the previous adjustment's rate, α before the first (compat P2)."""
    if cfg.sparse.counts == "same":
        return alpha_at(cfg, t)
    if cfg.sparse.schedule == "authors":
        return _authors_rates(cfg, t).grow[-1]
    before = [u for u in range(1, t) if is_adjustment(cfg, u)]
    return alpha_at(cfg, before[-1]) if before else float(cfg.sparse.alpha)


def coming_counts(cfg: Config, masks: list, t_adj: int) -> list[int]:
    """PG-3 counts k_l of the adjustment at round ``t_adj`` for the current masks. Masks change
    only at adjustments, so the counts an extrusion round sees equal the adjustment's own
    (with ``sparse.counts = "drift"``: its grow counts, as the authors' num_growth)."""
    return adjust_counts(masks, grow_alpha_at(cfg, t_adj))
