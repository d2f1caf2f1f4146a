# covers: BAE-2, BAE-3, BAE-4
"""The compat switch `bae.variant = "authors"` (docs/DEVIATIONS.md): the public code's
non-squared penalty with λ ramped up by 1e-4 per local iteration and the budget-aware learning
rate without its sigmoid factor; the spec variants are unchanged; the documented recipes load;
the PyTorch twin reproduces dumps of both compat switches (`authors`, `sap.cache_policy =
"int32"`)."""

import math
import re
from pathlib import Path

import numpy as np
import pytest

from refimpl.conformance.check import check_dumps
from refimpl.conformance.dump import Dump
from refimpl.fl import bae
from refimpl.fl.client import RoundPlan, local_train
from refimpl.fl.config import ConfigError, load_config
from refimpl.fl.data import load_fed_data
from refimpl.fl.observe import Observer
from refimpl.fl.state import build_model, init_state
from refimpl.sparsity import marked_set

from .conformance_dump import exported, load_step, reference
from .torch_oracle import torch_or_skip
from .twin_torch import run_twin

ROOT = Path(__file__).resolve().parents[1]


def test_config_accepts_the_compat_variant():
    assert load_config("smoke", sets=["bae.variant=authors"]).bae.variant == "authors"
    with pytest.raises(ConfigError, match=r"bae\.variant must be one of 'l2sq', 'l2', "
                                          r"'authors'; received 'paper'"):
        load_config("smoke", sets=["bae.variant=paper"])


def test_lambda_ramps_only_in_the_compat_variant():
    assert [bae.lambda_at(0.5, v, 7) for v in ("l2sq", "l2")] == [0.5, 0.5]
    assert bae.lambda_at(0.0, "authors", 0) == 1e-4
    assert bae.lambda_at(0.5, "authors", 9) == 0.5 + 1e-4 * 10
    with pytest.raises(ValueError, match="unknown BaE variant 'l3'; valid: l2sq, l2, authors"):
        bae.lambda_at(1.0, "l3", 0)


def test_authors_penalty_is_the_non_squared_norm_with_its_gradient():
    """λ·Σ_l ‖θ_Low_l‖₂ and its gradient λθ/‖θ_Low_l‖₂ on the marked entries only, checked by
    central differences; an all-zero marked layer has gradient 0."""
    rng = np.random.default_rng(3)
    w = [rng.standard_normal((4, 3)), rng.standard_normal(7), np.zeros(5)]
    marked = [np.array([0, 5, 11]), np.array([2, 3]), np.array([1, 4])]
    lam = 0.37
    grads = bae.penalty_grads(w, marked, lam, "authors")
    expect = lam * sum(math.sqrt(float((x.reshape(-1)[m] ** 2).sum())) for x, m in zip(w, marked))
    assert bae.penalty(w, marked, lam, "authors") == pytest.approx(expect, rel=1e-15)
    h = 1e-6
    for li, m in enumerate(marked[:2]):
        for j, i in enumerate(m):
            plus = [a.copy() for a in w]
            minus = [a.copy() for a in w]
            plus[li].reshape(-1)[i] += h
            minus[li].reshape(-1)[i] -= h
            fd = (bae.penalty(plus, marked, lam, "authors")
                  - bae.penalty(minus, marked, lam, "authors")) / (2 * h)
            assert grads[li][j] == pytest.approx(fd, rel=1e-7)
    assert not np.any(grads[2])
    g = [np.full_like(x, -0.0) for x in w]
    bae.add_penalty_grad(g, w, marked, lam, "authors")
    assert np.signbit(g[2]).all()  # untouched: the zero layer adds nothing, not even +0.0


def test_budget_lr_without_the_sigmoid():
    """β_τ = p(τ)·η0 whatever ‖θ_Low‖; μ_τ = max(η_t, β_τ) >= η_t (BAE-4's max kept)."""
    for norm in (0.0, 0.3, 5.0):
        assert bae.budget_lr(0.01, 0.1, norm, 0, 8, sigmoid=False) == 0.1
        assert bae.budget_lr(0.01, 0.1, norm, 4, 8, sigmoid=False) == pytest.approx(
            (16 - 8) / (16 - 4) * 0.1)
        assert bae.budget_lr(0.05, 0.1, norm, 7, 8, sigmoid=False) == 0.05
    assert bae.budget_lr(0.01, 0.1, 0.0, 0, 8) == 0.01  # the spec's sigmoid term is 0 at norm 0


class _Steps(Observer):
    """Keeps the scalars of every local step (the arrays of a LocalStep are live buffers)."""

    def __init__(self):
        self.steps = []

    def local_step(self, t, client, step):
        self.steps.append(step)  # only scalars and the fresh penalty_grads are read below


def test_authors_variant_through_the_client():
    """A client extruding with the compat variant: λ_τ ramps from λ by 1e-4 per iteration, the
    step size is max(η_t, p(τ)·η0), the recorded penalty is λ_τ·Σ_l‖θ_Low_l‖₂, the iteration
    count is unchanged (BAE-3), and the result differs from the spec's l2sq run."""
    results = {}
    for variant in ("authors", "l2sq"):
        cfg = load_config("smoke", sets=[f"bae.variant={variant}", "bae.lambda=0.0"])
        data = load_fed_data(cfg)
        model = build_model(cfg, data.input_shape[0], data.num_classes)
        st = init_state(cfg, model)
        names = model.prunable
        marked = marked_set([st.params[n] for n in names], [st.masks[n] for n in names],
                            [int(st.masks[n].sum()) // 4 for n in names])
        obs = _Steps()
        up = local_train(model, st.params, st.buffers, st.masks, data, 0,
                         RoundPlan(2, 0.01, marked=marked), cfg, obs)
        results[variant] = (up, obs.steps)
    up, steps = results["authors"]
    T = up.iterations
    assert len(steps) == T == results["l2sq"][0].iterations
    for s in steps:
        assert s.lam == pytest.approx(1e-4 * (s.tau + 1), rel=1e-15)
        assert s.lr == max(0.01, (2 * T - 2 * s.tau) / (2 * T - s.tau) * 0.1)
        assert s.penalty > 0
        for g in s.penalty_grads:  # non-squared norm: the gradient has norm λ_τ per layer
            assert np.linalg.norm(g) == pytest.approx(s.lam, rel=1e-6)
    assert all(s.penalty == 0.0 for s in results["l2sq"][1])  # λ = 0 and no ramp
    assert any(not np.array_equal(up.params[n], results["l2sq"][0].params[n])
               for n in up.params)


@pytest.mark.parametrize("sets", [("bae.variant=authors", "bae.lambda=0.0"),
                                  ("sap.cache_policy=int32",)], ids=["authors", "int32"])
def test_twin_reproduces_a_compat_dump(tmp_path, sets):
    """Both compat switches of docs/DEVIATIONS.md show up in conformance dumps, and the
    independent twin reproduces them (the int32 cache: format 3, int32 indices)."""
    torch = torch_or_skip()
    _, step = load_step(exported(*sets), "r1_c0_s0")
    if "sap.cache_policy=int32" in sets:
        assert step["sap/conv2/format"] == 3 and step["sap/conv2/index"].dtype == np.int32
    else:
        assert step["sap/conv2/format"] == 1  # auto: bitmap, the smallest here
    out = run_twin(torch, exported(*sets), tmp_path / "twin")
    report = check_dumps(Dump.open(out, need_manifest=False), reference(*sets))
    assert report.ok, report.format()


def test_documented_recipes_load(tmp_path):
    """Every ```toml block of docs/DEVIATIONS.md is a valid overlay of the `demo` preset."""
    text = (ROOT / "docs" / "DEVIATIONS.md").read_text("utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 3
    for i, block in enumerate(blocks):
        path = tmp_path / f"recipe{i}.toml"
        path.write_text(block)
        load_config("demo", path=path)
