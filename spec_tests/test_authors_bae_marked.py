# covers: BAE-1, BAE-2, PG-3
"""Compat E4 (docs/DEVIATIONS.md) against ``bae_marked.npz``: the server's marked set of the
authors' code is BAE-1's (k_l = ceil(0.3·nnz_l) smallest active |θ| of the received weights),
but with ``bae.marked_set = "authors"`` the client re-picks, before every step, the ⌊k_l/2⌋
smallest active |θ| of its current local weights, as their trainer does; λ and the rate of those
steps, and the weights between them, follow (E2, E3, the project's SGD)."""

import math

import numpy as np
import pytest

import refimpl
from refimpl import functional as F
from refimpl.core.optim import SGD
from refimpl.fl import bae
from refimpl.sparsity import adjust_counts, marked_set

from .authors_fixtures import cases, close, equal, load

FIXTURE = "bae_marked.npz"
Z = load(FIXTURE)
CASES = cases(Z)


def _loss(x, y, w0, w1, m0):
    h = F.relu(F.conv2d(x, w0, mask=m0))
    return F.cross_entropy(F.linear(F.reshape(h, (x.shape[0], -1)), w1), y)


@pytest.mark.parametrize("name, c", CASES, ids=[n for n, _ in CASES])
def test_server_set_and_per_step_repick(name, c):
    assert list(Z["layers"]) == ["conv.weight", "fc.weight"]
    w = [c["in_L0_W"].copy(), c["in_L1_W"].copy()]
    m = [c["in_L0_M"], c["in_L1_M"]]
    k = adjust_counts(m, 0.3)  # their update_num_growth with adjust_rate 0.3
    equal(FIXTURE, f"{name} k", k, [c["L0_k"], c["L1_k"]])
    server = marked_set(w, m, k)
    for li in range(2):
        equal(FIXTURE, f"{name} L{li} server_set", server[li], c[f"L{li}_server_set"])
    eta_t = 0.1 * math.exp(11 / 100 * math.log(0.01 / 0.1))
    rule = bae.RoundRule(server, m, lam=0.01, variant="l2", lr_t=eta_t, lr0=0.1, lr_min=0.01,
                         iterations=2, lambda_ramp="authors", lambda_delta=1e-4,
                         lr_rule="authors", marked_set="authors", round_idx=11, delta_epochs=10)
    grad = refimpl.grad(lambda w0, w1, x, y: _loss(x, y, w0, w1, m[0]), argnums=(0, 1))
    params, masks, opt = {"a": w[0], "b": w[1]}, {"a": m[0], "b": m[1]}, SGD(eta_t)
    lams, lrs = [], []
    for s in range(2):
        weights = [params["a"], params["b"]]
        for li in range(2):  # the weights their re-pick saw are ours after s SGD steps
            close(FIXTURE, f"{name} L{li} step{s} W", weights[li], c[f"L{li}_step{s}_W"])
        sp = rule.step(weights, s)
        for li in range(2):
            assert sp.marked[li].size == k[li] // 2
            equal(FIXTURE, f"{name} L{li} step{s} set", sp.marked[li], c[f"L{li}_step{s}_set"])
        grads = list(grad(params["a"], params["b"], c["in_data_x"][s], c["in_data_y"][s]))
        bae.add_penalty_grad(grads, weights, sp.marked, sp.lam, "l2")
        opt.step(params, {"a": grads[0], "b": grads[1]}, masks, lr=sp.lr)
        lams.append(sp.lam)
        lrs.append(sp.lr)
    close(FIXTURE, f"{name} lam", lams, c["lam"])
    close(FIXTURE, f"{name} lr", lrs, c["lr"])


def test_the_fixed_set_is_not_theirs():
    """BAE-1 keeps the k_l server entries for the round; their step sets hold ⌊k_l/2⌋ entries
    and already differ from the server set's smallest half at step 1."""
    moved = 0
    for _, c in CASES:
        for li in range(2):
            assert c[f"L{li}_step0_set"].size == int(c[f"L{li}_k"]) // 2 < c[f"L{li}_k"]
            moved += not np.array_equal(c[f"L{li}_step1_set"], c[f"L{li}_step0_set"])
    assert moved > 0
