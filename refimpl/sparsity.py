"""Masks, layer densities and prune-and-grow as pure functions on arrays (SPEC §2, §8, BAE-1).

Conventions: lists are in layer order (the model's prunable tensors, MASK-1); masks are boolean
arrays of the weight's shape; flat indices are C-order positions (CONV-3); every "k largest /
smallest" selection breaks ties by ascending flat index (CONV-4) and never depends on the sort
stability of a library. Counts from a configured fraction use exact rationals (CONV-6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

__all__ = [
    "exact_fraction",
    "layer_densities",
    "layer_counts",
    "random_masks",
    "density",
    "alpha_schedule",
    "AuthorsRates",
    "authors_rates",
    "fedpruning_count",
    "adjust_counts",
    "k_smallest",
    "k_largest",
    "marked_set",
    "at_most_kth",
    "adjust",
    "AdjustReport",
    "as_mask",
]

KINDS = ("erk", "er", "uniform")


def exact_fraction(p, name: str = "density") -> Fraction:
    """The decimal as written, as an exact rational (CONV-6): ``Fraction(str(p))``."""
    if isinstance(p, Fraction):
        return p
    if isinstance(p, bool) or not isinstance(p, (int, float, str, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, received {p!r}")
    try:
        f = Fraction(str(p))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{name} must be a finite number, received {p!r}") from None
    return f


def _check_density(d: Fraction) -> None:
    if not 0 < d <= 1:
        raise ValueError(f"density must lie in (0, 1], received {float(d)!r}; 1 means dense")


def _score(shape: tuple[int, ...], kind: str) -> Fraction:
    """ERK-1 raw score: sum(shape)/prod(shape); `er` drops the kernel dims of convs."""
    n = math.prod(shape)
    if kind == "er" and len(shape) == 4:
        return Fraction(shape[0] + shape[1], n)
    return Fraction(sum(shape), n)


def layer_densities(shapes, density, kind: str = "erk") -> tuple[list[Fraction], set[int]]:
    """Exact per-layer densities d_l and the set D of layers made dense (ERK-1).

    ``kind`` is ``erk`` (RigL's Erdős–Rényi-Kernel), ``er`` or ``uniform`` (d_l = d).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown density kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    shapes = [tuple(int(s) for s in sh) for sh in shapes]
    if not shapes:
        raise ValueError("layer_densities: no prunable layers given")
    d = exact_fraction(density)
    _check_density(d)
    sizes = [math.prod(sh) for sh in shapes]
    if kind == "uniform":
        return [d] * len(shapes), set()
    scores = [_score(sh, kind) for sh in shapes]
    total = d * sum(sizes)
    dense: set[int] = set()
    while True:
        denom = sum(scores[i] * sizes[i] for i in range(len(shapes)) if i not in dense)
        eps = (total - sum(sizes[i] for i in dense)) / denom
        over = [i for i in range(len(shapes)) if i not in dense and eps * scores[i] > 1]
        if not over:
            break
        # the layer with the largest raw score (first in layer order on a tie) becomes dense
        dense.add(max(over, key=lambda i: (scores[i], -i)))
    return [Fraction(1) if i in dense else eps * scores[i] for i in range(len(shapes))], dense


def layer_counts(shapes, density, kind: str = "erk") -> list[int]:
    """Exact integer nonzero counts per layer (ERK-2); they sum to floor(d·N + 1/2).

    Raises ``ValueError`` when a layer would keep no weight.
    """
    shapes = [tuple(int(s) for s in sh) for sh in shapes]
    dens, dense = layer_densities(shapes, density, kind)
    sizes = [math.prod(sh) for sh in shapes]
    d = exact_fraction(density)
    target = math.floor(d * sum(sizes) + Fraction(1, 2))
    exact = [dl * n for dl, n in zip(dens, sizes)]
    counts = [math.floor(e) for e in exact]
    remainder = target - sum(counts)
    order = sorted(
        (i for i in range(len(shapes)) if i not in dense and counts[i] < sizes[i]),
        key=lambda i: (-(exact[i] - counts[i]), i),
    )
    if remainder > len(order):  # cannot happen: the fractional parts sum to at least this
        raise AssertionError("ERK-2 remainder exceeds the eligible layers")
    for i in order[:remainder]:
        counts[i] += 1
    empty = [i for i, c in enumerate(counts) if c < 1]
    if empty:
        raise ValueError(
            f"density {density} is too small for {kind}: layer(s) {empty} (shapes "
            f"{[shapes[i] for i in empty]}) would keep no weight; every layer needs at least one "
            f"(ERK-2). Use a larger density."
        )
    return counts


def random_masks(shapes, counts, rngs) -> list[np.ndarray]:
    """ERK-3: layer l keeps ``counts[l]`` positions drawn uniformly without replacement from its
    own generator ``rngs[l]`` (stream MASK_INIT, extra = l)."""
    masks = []
    for sh, n, rng in zip(shapes, counts, rngs):
        size = math.prod(sh)
        m = np.zeros(size, dtype=bool)
        m[rng.choice(size, size=n, replace=False, shuffle=False)] = True
        masks.append(m.reshape(sh))
    return masks


def density(masks) -> float:
    """MASK-2: total nonzeros of the masks over the total size of the prunable tensors."""
    return float(sum(int(m.sum()) for m in masks) / sum(m.size for m in masks))


def alpha_schedule(alpha: float, t: int, t_end: int) -> float:
    """PG-2: α_t = α/2 · (1 + cos(π t / T_end)) in float64."""
    return float(np.float64(alpha) / 2.0 * (1.0 + math.cos(math.pi * t / t_end)))


def as_mask(name: str, mask, shape=None) -> np.ndarray:
    """``mask`` as a bool array, checked: bool, or numbers that are exactly 0 or 1 (anything else,
    0.5, -1, NaN, 2 or text, is a ``ValueError``: no silent ``astype(bool)``), of ``shape`` when
    given. ``name`` prefixes the message (the caller's function)."""
    m = np.asarray(mask)
    if shape is not None and m.shape != tuple(shape):
        raise ValueError(f"{name}: expected mask of the weight's shape {tuple(shape)}, received "
                         f"{m.shape}")
    if m.dtype == bool:
        return m
    if m.dtype.kind not in "iuf":
        raise ValueError(f"{name}: a mask must be bool or 0/1 numbers, received dtype {m.dtype}")
    bad = ~((m == 0) | (m == 1))
    if bad.any():
        v = m.reshape(-1)[int(np.flatnonzero(bad.reshape(-1))[0])].item()
        raise ValueError(f"{name}: a mask must be bool or exactly 0/1, found {v!r} at "
                         f"{int(bad.sum())} position(s); use mask != 0 or mask > 0.5 to choose "
                         f"what it means")
    return m.astype(bool)


def _check_alpha(alpha_t) -> float:
    if isinstance(alpha_t, bool) or not isinstance(alpha_t, (int, float, np.integer,
                                                             np.floating)):
        raise ValueError(f"alpha_t must be a number in [0, 1], received {alpha_t!r}")
    a = float(alpha_t)
    if not (math.isfinite(a) and 0 <= a <= 1):
        raise ValueError(f"alpha_t must be a finite number in [0, 1] (the PG-2 fraction), "
                         f"received {alpha_t!r}")
    return a


@dataclass(frozen=True)
class AuthorsRates:
    """The authors' prune rates at their adjustments j = 0, 1, ... (compat, docs/DEVIATIONS.md
    P1, P2). ``grow`` is the rate before the adjustment's ``CosineDecay`` step (their grow count
    uses it), ``prune`` the rate after it (their prune count); ``decay_arg`` the argument of that
    step, ``mask_step`` the cumulative step counter after the adjustment. Lists of equal length.
    """

    grow: list[float]
    prune: list[float]
    decay_arg: list[int]
    mask_step: list[int]


def authors_rates(alpha: float, t_end: int, epochs: int, prepared) -> AuthorsRates:
    """The authors' cumulative cosine schedule (compat, not PG-2), for adjustments prepared in
    their 0-based rounds ``prepared`` (ascending).

    Their cosine decays over ``t_end·epochs`` steps and is stepped at each adjustment with the
    cumulative counter mask_step, which grows by epochs·(r + 2) at the adjustment prepared in
    round r. Rate after adjustment j: α/2·(1 + cos(π·a_j/(t_end·epochs))) with a_j the counter
    *before* it, as long as the previous argument was below t_end·epochs; afterwards the rate
    freezes. So it overshoots (a_j passes t_end·epochs, the cosine comes back up) and stays there.
    """
    horizon = t_end * epochs
    grow, prune, args, steps = [], [], [], []
    rate, counter, last_arg = float(alpha), 0, None
    for r in prepared:
        grow.append(rate)
        args.append(counter)
        if last_arg is None or last_arg < horizon:
            rate = float(alpha) * (1.0 + math.cos(math.pi * counter / horizon)) / 2.0
            last_arg = counter
        prune.append(rate)
        counter += epochs * (int(r) + 2)
        steps.append(counter)
    return AuthorsRates(grow, prune, args, steps)


def fedpruning_count(nnz: int, t: int, gamma: float, t_end: int) -> int:
    """The FedPruning re-implementation's marked count (compat, docs/DEVIATIONS.md F2):
    int(γ/2·(1 + cos(π·t/T_end)) · nnz) in float64, with γ their SAP ratio reused as the decay's
    α and t their 0-based round."""
    return int(float(gamma) / 2 * (1 + math.cos(math.pi * t / t_end)) * nnz)


def adjust_counts(masks, alpha_t: float) -> list[int]:
    """PG-3: k_l = min(ceil(α_t · nnz_l), nnz_l, N_l − nnz_l); α_t finite in [0, 1], masks
    bool or 0/1 (:func:`as_mask`)."""
    alpha_t = _check_alpha(alpha_t)
    out = []
    for i, m in enumerate(masks):
        m = as_mask(f"adjust_counts: layer {i}", m)
        nnz = int(m.sum())
        out.append(min(math.ceil(alpha_t * nnz), nnz, m.size - nnz))
    return out


def _check_scores(name: str, s: np.ndarray) -> None:
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{name}: scores must be finite (received NaN or inf)")


def k_smallest(candidates: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` candidates of smallest score, ties by ascending flat index (CONV-4); returned
    sorted ascending. ``candidates`` are flat indices, ``scores`` their scores."""
    _check_scores("k_smallest", scores)
    order = np.lexsort((candidates, scores))  # primary key last: score asc, then index asc
    return np.sort(candidates[order[:k]])


def k_largest(candidates: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` candidates of largest score, ties by ascending flat index (CONV-4); returned
    sorted ascending."""
    _check_scores("k_largest", scores)
    order = np.lexsort((candidates, -scores))
    return np.sort(candidates[order[:k]])


def marked_set(weights, masks, counts, among: str = "active") -> list[np.ndarray]:
    """BAE-1 / PG-4: per layer, the ``counts[l]`` active entries of smallest |θ| (sorted flat
    indices, int64).

    ``among="all"`` (compat, the FedPruning re-implementation, docs/DEVIATIONS.md F2) selects
    among *all* entries, so already-pruned zeros come first; ties by ascending flat index
    (CONV-4), where their unstable sort picks its own zeros."""
    if among not in ("active", "all"):
        raise ValueError(f"marked_set: among must be 'active' or 'all', received {among!r}")
    out = []
    for w, m, k in zip(weights, masks, counts):
        pool = np.flatnonzero(m) if among == "active" else np.arange(m.size)
        if not 0 <= k <= pool.size:
            raise ValueError(f"marked_set: count {k} outside [0, {pool.size}] "
                             f"{'active ' if among == 'active' else ''}entries")
        out.append(k_smallest(pool, np.abs(w.reshape(-1)[pool]), k).astype(np.int64))
    return out


def at_most_kth(weights, counts) -> list[np.ndarray]:
    """The FedPruning re-implementation's dynamic marked set (compat, docs/DEVIATIONS.md F3):
    per layer every entry (active or not) with |θ| ≤ the (k+1)-th smallest |θ| of the layer, so
    at least k + 1 entries and all tied ones (sorted flat indices, int64; no tie rule needed)."""
    out = []
    for w, k in zip(weights, counts):
        a = np.abs(w.reshape(-1))
        if not 0 <= k < a.size:
            raise ValueError(f"at_most_kth: count {k} outside [0, {a.size - 1}]")
        _check_scores("at_most_kth", a)
        out.append(np.flatnonzero(a <= np.partition(a, k)[k]).astype(np.int64))
    return out


@dataclass
class AdjustReport:
    """What one prune-and-grow did, per layer (sorted flat indices)."""

    counts: list[int]
    pruned: list[np.ndarray]
    grown: list[np.ndarray]


def adjust(weights, masks, scores, alpha_t: float, prune: str = "magnitude", marked=None,
           grow_alpha: float | None = None):
    """PG-3..PG-7 on every layer: prune ``k_l`` active weights, grow ``k_l`` of the positions that
    were inactive before pruning, zero the grown weights; every layer keeps its nnz.

    ``scores`` are dense growth scores (the averaged ḡ, PG-5) of each weight's shape.
    ``prune="magnitude"`` prunes the k_l smallest |θ| among active entries (PG-4);
    ``prune="marked"`` prunes ``marked[l]`` (the BaE marked set, which must hold k_l entries).
    Masks are bool or exactly 0/1 (:func:`as_mask`); α_t is finite in [0, 1] (PG-2).


    ``grow_alpha`` (compat, docs/DEVIATIONS.md P2): the grow count is PG-3's count at this rate
    instead of ``alpha_t`` (the authors grow with the rate before their schedule step and prune
    with the rate after it), so nnz drifts; ``report.counts`` are then the prune counts.
    Returns new lists ``(weights, masks, report)``; the inputs are not modified.
    """
    if prune not in ("magnitude", "marked"):
        raise ValueError(f"adjust: prune must be 'magnitude' or 'marked', received {prune!r}")
    if prune == "marked" and marked is None:
        raise ValueError("adjust: prune='marked' needs the marked set")
    if not (len(weights) == len(masks) == len(scores)):
        raise ValueError("adjust: weights, masks and scores must list the same layers")
    masks = [as_mask(f"adjust: layer {i}", m) for i, m in enumerate(masks)]
    counts = adjust_counts(masks, alpha_t)
    grow_counts = counts if grow_alpha is None else adjust_counts(masks, grow_alpha)
    new_w, new_m, pruned, grown = [], [], [], []
    for li, (w, m, s, k, kg) in enumerate(zip(weights, masks, scores, counts, grow_counts)):
        if w.shape != m.shape or s.shape != m.shape:
            raise ValueError(f"adjust: layer {li} has weight {w.shape}, mask {m.shape}, score "
                             f"{s.shape}; expected one shape")
        flat_m = m.reshape(-1)
        if prune == "marked":
            p = np.asarray(marked[li], dtype=np.int64)
            if p.size != k or not flat_m[p].all():
                raise ValueError(f"adjust: marked set of layer {li} must be {k} active entries")
        else:
            active = np.flatnonzero(flat_m)
            p = k_smallest(active, np.abs(w.reshape(-1)[active]), k)
        inactive = np.flatnonzero(~flat_m)  # before pruning (PG-6)
        q = k_largest(inactive, np.abs(s.reshape(-1)[inactive]), kg)
        mm = flat_m.copy()
        mm[p] = False
        mm[q] = True
        ww = w.reshape(-1).copy()
        ww[q] = 0
        ww *= mm
        new_w.append(ww.reshape(w.shape))
        new_m.append(mm.reshape(m.shape))
        pruned.append(p.astype(np.int64))
        grown.append(q.astype(np.int64))
    return new_w, new_m, AdjustReport(counts, pruned, grown)
