# covers: LT-1, PG-1, PG-2, PG-3, BAE-2, BAE-4, BAE-5, FL-1, RNG-1, MEM-4
"""Pure rules of the engine: the learning-rate schedule, which rounds adjust and extrude, the BaE
penalty gradient and budget-aware learning rate, client sampling and the communication bytes."""

import math

import numpy as np
import pytest

from refimpl.fl import bae
from refimpl.fl.config import load_config
from refimpl.fl.schedule import (
    adjustment_target,
    alpha_at,
    coming_counts,
    is_adjustment,
    is_extrusion,
    learning_rate,
)
from refimpl.fl.server import sample_clients
from refimpl.sap import index_dtype


def cfg_with(*sets):
    return load_config("smoke", sets=list(sets))


def test_learning_rate_schedule():
    """LT-1: η_t = η0·(η_min/η0)^((t−1)/R); η_1 = η0, decreasing; constant option."""
    cfg = cfg_with("run.rounds=10", "train.lr=0.1", "train.lr_min=0.01")
    lrs = [learning_rate(cfg, t) for t in range(1, 11)]
    assert lrs[0] == 0.1
    for t, lr in enumerate(lrs, start=1):
        assert lr == 0.1 * (0.01 / 0.1) ** ((t - 1) / 10)
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[-1] > 0.01  # R steps of the ratio would reach η_min at t = R + 1
    const = cfg_with("train.lr_schedule=constant")
    assert {learning_rate(const, t) for t in range(1, 6)} == {const.train.lr}


def test_adjustment_rounds():
    """PG-1: t mod ΔT = 0 and t ≤ T_end, dynamic methods only."""
    cfg = cfg_with("run.rounds=30", "sparse.delta_t=5", "sparse.t_end=20", "bae.rounds=0")
    assert [t for t in range(1, 31) if is_adjustment(cfg, t)] == [5, 10, 15, 20]
    assert cfg_with("run.rounds=30", "sparse.t_end=0").t_end == 30
    for method in ("fedavg", "static"):
        c = cfg_with(f"run.method={method}", "sparse.density=auto", "bae.enabled=auto")
        assert not any(is_adjustment(c, t) for t in range(1, 6))


def test_alpha_and_counts():
    """PG-2 / PG-3 through the configuration."""
    cfg = cfg_with("run.rounds=20", "sparse.t_end=20", "sparse.alpha=0.3")
    assert alpha_at(cfg, 10) == 0.3 / 2 * (1 + math.cos(math.pi * 10 / 20))
    m = np.zeros(100, bool)
    m[:40] = True
    assert coming_counts(cfg, [m], 10) == [min(math.ceil(alpha_at(cfg, 10) * 40), 40, 60)]


def test_extrusion_rounds():
    """BAE-5: by default the adjustment round extrudes; with E_b the E_b rounds before it do
    and the adjustment round does not; without BaE no round extrudes, but the marked set of
    the coming adjustment is still defined (for the comparison metrics)."""
    base = ("run.rounds=30", "sparse.delta_t=5", "sparse.t_end=20")
    cfg = cfg_with(*base)
    assert [t for t in range(1, 31) if is_extrusion(cfg, t)] == [5, 10, 15, 20]
    eb = cfg_with(*base, "bae.rounds=2")
    assert [t for t in range(1, 31) if is_extrusion(eb, t)] == [3, 4, 8, 9, 13, 14, 18, 19]
    assert adjustment_target(eb, 4) == 5 and adjustment_target(eb, 5) is None
    off = cfg_with(*base, "bae.enabled=false")
    assert not any(is_extrusion(off, t) for t in range(1, 31))
    assert [t for t in range(1, 31) if adjustment_target(off, t)] == [5, 10, 15, 20]


def _numeric_grad(f, w, i, h=1e-6):
    wp, wm = w.copy(), w.copy()
    wp.reshape(-1)[i] += h
    wm.reshape(-1)[i] -= h
    return (f(wp) - f(wm)) / (2 * h)


@pytest.mark.parametrize("variant", ["l2sq", "l2"])
def test_penalty_gradient(variant):
    """BAE-2: the hand-written penalty gradient equals central differences of the penalty, and
    is zero off the marked set."""
    rng = np.random.default_rng(0)
    w = [rng.standard_normal((4, 3, 3, 3)), rng.standard_normal((10, 6))]
    marked = [np.array([0, 5, 17, 100]), np.array([3, 59])]
    lam = 0.7
    grads = [np.zeros_like(a) for a in w]
    bae.add_penalty_grad(grads, w, marked, lam, variant)
    for li in range(2):
        def f(x, li=li):
            ws = list(w)
            ws[li] = x
            return bae.penalty(ws, marked, lam, variant)

        for i in range(w[li].size):
            expect = _numeric_grad(f, w[li], i)
            assert grads[li].reshape(-1)[i] == pytest.approx(expect, rel=1e-6, abs=1e-8)
        off = np.ones(w[li].size, bool)
        off[marked[li]] = False
        assert np.all(grads[li].reshape(-1)[off] == 0)
    expect = lam * sum((a.reshape(-1)[m] ** 2).sum() if variant == "l2sq"
                       else np.linalg.norm(a.reshape(-1)[m])
                       for a, m in zip(w, marked, strict=True))
    assert bae.penalty(w, marked, lam, variant) == pytest.approx(expect)


def test_budget_lr():
    """BAE-4: p(0) = 1, p decreasing, p(T) = 0; μ_τ = max(η_t, β_τ) ≥ η_t; β from σ(‖θ_Low‖)."""
    T = 12
    p = [bae.progress_factor(tau, T) for tau in range(T + 1)]
    assert p[0] == 1 and p[-1] == 0
    assert all(a > b for a, b in zip(p, p[1:], strict=False))
    lr0, lr_t = 0.1, 0.02
    for norm in (0.0, 0.3, 2.0, 50.0):
        for tau in range(T):
            mu = bae.budget_lr(lr_t, lr0, norm, tau, T)
            beta = p[tau] * (2 / (1 + math.exp(-norm)) - 1) * lr0
            assert mu == max(lr_t, beta) and mu >= lr_t
    assert bae.budget_lr(lr_t, lr0, 50.0, 0, T) == pytest.approx(lr0)  # boosted to η0
    assert bae.budget_lr(lr_t, lr0, 0.0, 0, T) == lr_t  # nothing marked left: plain η_t


def test_sampling():
    """FL-1 / RNG-1: C distinct clients, sorted, a function of (seed, round) only."""
    a = sample_clients(7, 3, 100, 10)
    assert a.dtype == np.int64 and len(set(a.tolist())) == 10 and np.all(np.diff(a) > 0)
    assert np.array_equal(a, sample_clients(7, 3, 100, 10))
    assert not np.array_equal(a, sample_clients(7, 4, 100, 10))
    assert not np.array_equal(a, sample_clients(8, 3, 100, 10))
    assert np.array_equal(sample_clients(0, 1, 5, 5), np.arange(5))


def test_index_itemsize():
    """MEM-4 growth pairs use the narrowest unsigned index that holds N − 1, the one rule of
    CACHE-1 (refimpl.sap.index_dtype), which stops at uint32 with a clear error."""
    assert [index_dtype(n).itemsize for n in (1, 256, 257, 65536, 65537, 2**32)] == [
        1, 1, 2, 2, 4, 4]
    with pytest.raises(ValueError, match="beyond uint32"):
        index_dtype(2**32 + 1)
