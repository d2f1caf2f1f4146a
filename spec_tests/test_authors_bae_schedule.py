# covers: BAE-2, BAE-4, LT-1
"""Compat E2, E3 (docs/DEVIATIONS.md) against ``bae_schedule.npz``: the λ ramp ``authors``
(min(λ_prev + δ, λ) from 0, a running float sum), the budget-aware rate ``authors`` (the round
phase p, the clamped sum of per-layer norms, η_min as a floor, the previous rate kept when the
penalty is 0) on the 96-cell grid, η_t of LT-1, and two whole client rounds of their trainer
(λ, rate and penalty of every step) driven through :class:`refimpl.fl.bae.RoundRule`."""

import math

import numpy as np
import pytest

import refimpl
from refimpl import functional as F
from refimpl.core.optim import SGD
from refimpl.fl import bae
from refimpl.fl.config import load_config
from refimpl.fl.schedule import learning_rate
from refimpl.sparsity import adjust_counts, marked_set

from .authors_fixtures import close, equal, load

FIXTURE = "bae_schedule.npz"
Z = load(FIXTURE)


def test_lambda_ramp_is_capped_running_sum():
    for row, (cap, delta) in enumerate(zip(Z["lam_cap"].tolist(), Z["lam_delta"].tolist())):
        lam, ours = 0.0, []
        for _ in Z["lam_tau"]:
            lam = bae.authors_lambda(lam, cap, delta)
            ours.append(lam)
        close(FIXTURE, f"lam cap {cap} delta {delta}", ours, Z["lam_per_step"][row])
    assert Z["lam_per_step"][0][99] == 0.009999999999999995 and Z["lam_per_step"][0][100] == 0.01


def test_budget_rate_grid():
    for i in range(Z["lr_round_idx"].size):
        r, te, d = (int(Z[f"lr_{k}"][i]) for k in ("round_idx", "transfer_epochs",
                                                  "delta_epochs"))
        eta_t, lr0, lr_min = (float(Z[k][i]) for k in ("lr_out_eta_t", "lr_lr0", "lr_min_lr"))
        pen = float(Z["lr_penalty"][i])
        phase = bae.authors_phase(r, d, te)
        ours = bae.authors_lr(eta_t, lr0, lr_min, pen, phase)
        equal(FIXTURE, f"lr cell {i} applied", ours is not None, Z["lr_out_applied"][i])
        if ours is None:  # branch skipped: the optimizer keeps η_t (the first step's rate)
            rule = bae.RoundRule([np.zeros(0, np.int64)], [np.zeros(3, bool)], lam=0.01,
                                 variant="l2", lr_t=eta_t, lr0=lr0, lr_min=lr_min,
                                 iterations=int(Z["lr_T"][i]), lr_rule="authors",
                                 round_idx=r, delta_epochs=d, transfer_epochs=te)
            ours = rule.step([np.zeros(3)], int(Z["lr_tau"][i])).lr
        else:
            close(FIXTURE, f"lr cell {i} p", phase, Z["lr_out_p"][i])
        close(FIXTURE, f"lr cell {i} lr", ours, Z["lr_out_lr"][i])


def test_eta_t_is_lt1():
    """Their η_t = lr·exp(r/R·log(min_lr/lr)) is LT-1's η_t at t = r + 1, to rounding."""
    for i in range(Z["lr_round_idx"].size):
        cfg = load_config("smoke", sets=[f"train.lr={float(Z['lr_lr0'][i])!r}",
                                         f"train.lr_min={float(Z['lr_min_lr'][i])!r}",
                                         f"run.rounds={int(Z['lr_comm_round'][i])}"])
        close(FIXTURE, f"eta_t cell {i}", learning_rate(cfg, int(Z["lr_round_idx"][i]) + 1),
              Z["lr_out_eta_t"][i])


def _loss(x, y, w0, w1, m0):
    h = F.relu(F.conv2d(x, w0, mask=m0))
    return F.cross_entropy(F.linear(F.reshape(h, (x.shape[0], -1)), w1), y)


@pytest.mark.parametrize("te", [0, 3])
def test_client_round_trace(te):
    """A whole round of their client (conv 4->8 3x3, ReLU, linear 32->10, SGD, batches of 2):
    every step's λ, rate and logged penalty Σ_l‖θ_Low_l‖₂, with the marked set re-picked per
    step (E4), λ ramped (E2) and the rate of E3; the steps are the project's SGD and the l2
    penalty gradient (BAE-2 variant l2)."""
    p = f"trace_te{te}_"
    w = [Z[p + "in_L0_W"].copy(), Z[p + "in_L1_W"].copy()]
    m = [Z[p + "in_L0_M"], Z[p + "in_L1_M"]]
    xs, ys = Z[p + "in_data_x"], Z[p + "in_data_y"]
    r = int(Z[p + "arg_round_idx"])
    assert int(Z[p + "arg_transfer_epochs"]) == te
    eta_t = 0.1 * math.exp(r / 100 * math.log(0.01 / 0.1))
    close(FIXTURE, f"te{te} eta_t", eta_t, Z[p + "eta_t"])
    server = marked_set(w, m, adjust_counts(m, 0.3))  # their num_growth: ceil(0.3·nnz)
    rule = bae.RoundRule(server, m, lam=0.01, variant="l2", lr_t=eta_t, lr0=0.1, lr_min=0.01,
                         iterations=len(xs), lambda_ramp="authors", lambda_delta=1e-4,
                         lr_rule="authors", marked_set="authors", round_idx=r, delta_epochs=10,
                         transfer_epochs=te)
    grad = refimpl.grad(lambda w0, w1, x, y: _loss(x, y, w0, w1, m[0]), argnums=(0, 1))
    params, masks, opt = {"a": w[0], "b": w[1]}, {"a": m[0], "b": m[1]}, SGD(eta_t)
    lams, lrs, pens = [], [], []
    for tau in range(len(xs)):
        weights = [params["a"], params["b"]]
        sp = rule.step(weights, tau)
        pens.append(bae.penalty(weights, sp.marked, 1.0, "l2"))
        grads = list(grad(params["a"], params["b"], xs[tau], ys[tau]))
        bae.add_penalty_grad(grads, weights, sp.marked, sp.lam, "l2")
        opt.step(params, {"a": grads[0], "b": grads[1]}, masks, lr=sp.lr)
        lams.append(sp.lam)
        lrs.append(sp.lr)
    close(FIXTURE, f"te{te} lam", lams, Z[p + "lam"])
    close(FIXTURE, f"te{te} lr", lrs, Z[p + "lr"])
    close(FIXTURE, f"te{te} penalty", pens, Z[p + "penalty"])
