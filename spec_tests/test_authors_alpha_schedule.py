# covers: PG-1, PG-2, PG-3, PG-7
"""Compat P1, P2 (docs/DEVIATIONS.md) against ``alpha_schedule.npz`` (301 rounds of the authors'
FedDual server): ``sparse.schedule = "authors"`` adjusts in their rounds with their cumulative
cosine (which overshoots T_max·E at round 91, comes back to 0.0473 and freezes), and
``sparse.counts = "drift"`` grows with the rate before the step and prunes with the rate after
it, so nnz drifts from (86, 96) to (112, 122) exactly as theirs."""

import math

import numpy as np

from refimpl.fl.config import load_config
from refimpl.fl.schedule import alpha_at, grow_alpha_at, is_adjustment
from refimpl.sparsity import adjust, adjust_counts, alpha_schedule, authors_rates

from .authors_fixtures import close, equal, load

FIXTURE = "alpha_schedule.npz"
Z = load(FIXTURE)


def test_rates_of_the_cumulative_cosine():
    r = authors_rates(float(Z["in_alpha"]), int(Z["in_T_max"]), int(Z["in_E"]), Z["prepared_at"])
    close(FIXTURE, "grow_rate", r.grow, Z["grow_rate"])
    close(FIXTURE, "prune_rate", r.prune, Z["prune_rate"])
    equal(FIXTURE, "decay_step_arg", r.decay_arg, Z["decay_step_arg"])
    equal(FIXTURE, "mask_step_after", r.mask_step, Z["mask_step_after"])
    # one rate for every layer in their run (adjust_prune_rate changes only layers denser than
    # 0.8, none here), so the per-layer rates are the global ones
    assert np.all(Z["grow_layer_rate"] == Z["grow_rate"][:, None])
    assert np.all(Z["prune_layer_rate"] == Z["prune_rate"][:, None])


def _cfg():
    return load_config("smoke", sets=[
        "sparse.schedule=authors", "sparse.counts=drift", f"sparse.alpha={float(Z['in_alpha'])}",
        f"sparse.delta_t={int(Z['in_delta'])}", f"sparse.t_end={int(Z['in_T_max'])}",
        f"train.local_epochs={int(Z['in_E'])}", f"run.rounds={int(Z['in_last_round'])}"])


def test_engine_schedule_is_theirs_round_by_round():
    """The configured schedule: adjustment rounds (their r + 1 with r mod ΔT = 0; our t), the
    grow and prune rates there, and the server's rate after every one of the 301 rounds."""
    cfg = _cfg()
    rounds = Z["rounds"].tolist()
    adj = [t for t in rounds if is_adjustment(cfg, t)]
    equal(FIXTURE, "adjustment rounds", adj, Z["adj_round"])
    close(FIXTURE, "prune rate (engine)", [alpha_at(cfg, t) for t in adj], Z["prune_rate"])
    close(FIXTURE, "grow rate (engine)", [grow_alpha_at(cfg, t) for t in adj], Z["grow_rate"])
    rate_after = {t: alpha_at(cfg, t) for t in adj}
    per_round = [rate_after[max(u for u in adj if u <= t)] for t in rounds]
    close(FIXTURE, "prune_rate_per_round", per_round, Z["prune_rate_per_round"])


def test_counts_drift_as_theirs():
    """Chained through the 31 adjustments from nnz (86, 96): PG-3's count at the grow rate and at
    the prune rate, and refimpl.sparsity.adjust(grow_alpha=...) moving nnz exactly as theirs."""
    rng = np.random.default_rng(5)
    numel = Z["numel"].tolist()
    nnz = Z["in_counts"].tolist()
    for j in range(Z["adj_round"].size):
        equal(FIXTURE, f"adj {j} nnz_before", nnz, Z["nnz_before"][j])
        masks = []
        for n, size in zip(nnz, numel):
            m = np.zeros(size, bool)
            m[rng.choice(size, n, replace=False)] = True
            masks.append(m)
        weights = [rng.standard_normal(size) * m for size, m in zip(numel, masks)]
        scores = [rng.standard_normal(size) for size in numel]
        grow, prune = float(Z["grow_rate"][j]), float(Z["prune_rate"][j])
        equal(FIXTURE, f"adj {j} k_grow", adjust_counts(masks, grow), Z["k_grow"][j])
        equal(FIXTURE, f"adj {j} k_prune", adjust_counts(masks, prune), Z["k_prune"][j])
        _, new_masks, report = adjust(weights, masks, scores, prune, grow_alpha=grow)
        equal(FIXTURE, f"adj {j} pruned", [p.size for p in report.pruned], Z["k_prune"][j])
        equal(FIXTURE, f"adj {j} grown", [q.size for q in report.grown], Z["k_grown"][j])
        nnz = [int(m.sum()) for m in new_masks]
        equal(FIXTURE, f"adj {j} nnz_after", nnz, Z["nnz_after"][j])
    assert int(np.abs(Z["k_grow"] - Z["k_prune"]).sum()) == 74


def test_spec_schedule_differs():
    """PG-2 at the same rounds never overshoots: it decreases to 0 at T_end, where theirs has
    collapsed by round 81 and then bounced back."""
    t_end = int(Z["in_T_max"])
    spec = [alpha_schedule(float(Z["in_alpha"]), int(t), t_end) for t in Z["adj_round"]]
    assert all(a >= b for a, b in zip(spec, spec[1:]))
    assert math.isclose(spec[15], 0.15, rel_tol=0.1) and Z["prune_rate"][15] < 0.05
