# covers: BAE-1, BAE-2
"""Compat F1-F3 (docs/DEVIATIONS.md) against ``fedpruning_bae_loss.npz``: the FedPruning
re-implementation adds Σ_l ‖θ_marked,l‖₂ with weight 1 whatever its ``lambda_l2`` (BAE-2 variant
``l2`` with ``bae.lambda = 1``, not ``bae.lambda = 0``); its marked count is
int(γ/2·(1 + cos(π·r/T_end))·nnz_l) with the SAP ratio γ; its set is the k smallest |θ| over
*all* entries (``bae.marked_set = "fedpruning"``; ties among pruned zeros are theirs), or in its
dynamic mode every entry with |θ| ≤ the (k+1)-th smallest (``fedpruning_dynamic``)."""

import numpy as np
import pytest

from refimpl.fl import bae
from refimpl.fl.config import load_config
from refimpl.sparsity import at_most_kth, fedpruning_count, marked_set

from .authors_fixtures import cases, close, equal, load, same_set_up_to_ties

FIXTURE = "fedpruning_bae_loss.npz"
Z = load(FIXTURE)
CASES = cases(Z)


@pytest.mark.parametrize("name, c", CASES, ids=[n for n, _ in CASES])
def test_fedpruning_penalty_and_marked_set(name, c):
    w, m = [c["L0_W"], c["L1_W"]], [c["L0_M"], c["L1_M"]]
    k = [fedpruning_count(int(mm.sum()), int(c["round_idx"]), float(c["gamma"]), int(c["T_end"]))
         for mm in m]
    equal(FIXTURE, f"{name} k", k, [c["L0_k"], c["L1_k"]])
    if int(c["dynamic"]):
        marked = at_most_kth(w, k)
        for li in range(2):
            assert c[f"L{li}_idx"].size == 0  # their dynamic mode stores no index
            assert marked[li].size >= k[li] + 1
    else:
        marked = marked_set(w, m, k, among="all")
        for li in range(2):
            same_set_up_to_ties(FIXTURE, f"{name} L{li} idx", marked[li], c[f"L{li}_idx"],
                                np.abs(w[li]), largest=False)
    total = float(c["init_loss"]) + bae.penalty(w, marked, 1.0, "l2")
    l1 = sum(float(np.abs(x.reshape(-1)[i]).sum()) for x, i in zip(w, marked))
    dtype = w[0].dtype  # a f32_ case computed in float32 (its scalars stored as float64)
    for lam in ("0", "0.5"):  # lambda_l2 is stored, never read: weight 1 in both
        close(FIXTURE, f"{name} total lambda {lam}", total, c[f"total_lambda{lam}"], dtype)
        close(FIXTURE, f"{name} l1 lambda {lam}", l1, c[f"l1_lambda{lam}"], dtype)


def test_marked_zeros_give_no_penalty():
    """Density 0.5 with k below the number of pruned zeros: every marked entry is a pruned zero,
    the penalty is 0 and the loss is the CE alone (the register's old reading, "λ never applied",
    predicted that for every case)."""
    c = dict(CASES)["d0.5_r0_g0.5_zero_penalty"]
    w, m = [c["L0_W"], c["L1_W"]], [c["L0_M"], c["L1_M"]]
    k = [int(c["L0_k"]), int(c["L1_k"])]
    marked = marked_set(w, m, k, among="all")
    assert all(not mm.reshape(-1)[i].any() for mm, i in zip(m, marked))
    assert bae.penalty(w, marked, 1.0, "l2") == 0.0 == c["total_lambda0"] - c["init_loss"]


def test_preset_has_weight_one():
    cfg = load_config("fedpruning")
    assert (cfg.bae.lam, cfg.bae.variant, cfg.bae.marked_set) == (1.0, "l2", "fedpruning")
