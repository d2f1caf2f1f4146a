# covers: BAE-2, MASK-3
"""The BaE penalty and its gradient over many λ (BAE-2), so that λ applied twice (λ² instead of
λ), or forgotten, cannot pass: at λ = 1 (the default) both are invisible.

Pure functions: the value against the literal formula, the gradient against the literal 2λθ
(``l2sq``) or λθ/‖θ_Low_l‖₂ (``l2``) and against central differences of that literal formula
(never against ``bae.penalty`` itself, which a mutation could change consistently), added onto
existing gradients, nothing off the marked set. Engine: in an extrusion round with momentum 0,
every local step applies exactly W ← (W − μ_τ·(∇CE + ∇penalty)) ⊙ M with the penalty gradient
of the weights before the step, for several λ.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refimpl.fl import bae
from refimpl.fl.client import RoundPlan, local_train
from refimpl.fl.config import load_config
from refimpl.fl.data import load_fed_data
from refimpl.fl.observe import Observer
from refimpl.fl.state import build_model, init_state
from refimpl.sparsity import marked_set

lams = st.sampled_from([0.05, 0.5, 2.0, 7.5]) | st.floats(0.01, 10.0)


def literal_penalty(ws, marked, lam, variant):
    total = 0.0
    for w, idx in zip(ws, marked, strict=True):
        v = w.reshape(-1)[idx].astype(np.float64)
        total += float(np.sum(v * v)) if variant == "l2sq" else math.sqrt(float(np.sum(v * v)))
    return lam * total


@st.composite
def marked_layers(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ws, marked = [], []
    for shape in draw(st.lists(st.sampled_from([(4, 3, 3, 3), (10, 6), (2, 5)]), min_size=1,
                               max_size=3)):
        w = rng.standard_normal(shape)
        n = draw(st.integers(0, w.size))
        ws.append(w)
        marked.append(np.sort(rng.choice(w.size, size=n, replace=False)).astype(np.int64))
    return ws, marked


@given(marked_layers(), lams, st.sampled_from(["l2sq", "l2"]))
def test_penalty_gradient_scales_with_lambda(layers, lam, variant):
    ws, marked = layers
    rng = np.random.default_rng(1)
    before = [rng.standard_normal(w.shape) for w in ws]
    grads = [g.copy() for g in before]
    bae.add_penalty_grad(grads, ws, marked, lam, variant)
    assert bae.penalty(ws, marked, lam, variant) == pytest.approx(
        literal_penalty(ws, marked, lam, variant), rel=1e-13, abs=1e-300)
    for li, (w, idx) in enumerate(zip(ws, marked, strict=True)):
        v = w.reshape(-1)[idx]
        norm = float(np.linalg.norm(v))
        if variant == "l2sq":
            expect = 2.0 * lam * v
        else:
            expect = lam * v / norm if norm > 0 else np.zeros_like(v)
        added = grads[li].reshape(-1) - before[li].reshape(-1)
        np.testing.assert_allclose(added[idx], expect, rtol=1e-12, atol=1e-15)
        off = np.ones(w.size, dtype=bool)
        off[idx] = False
        assert np.array_equal(grads[li].reshape(-1)[off], before[li].reshape(-1)[off])  # BAE-2
        for i in idx[:3]:  # central differences of the literal penalty
            h = 1e-6
            wp, wm = w.copy(), w.copy()
            wp.reshape(-1)[i] += h
            wm.reshape(-1)[i] -= h
            fd = (literal_penalty(ws[:li] + [wp] + ws[li + 1:], marked, lam, variant)
                  - literal_penalty(ws[:li] + [wm] + ws[li + 1:], marked, lam, variant)) / (2 * h)
            assert added[i] == pytest.approx(fd, rel=1e-6, abs=1e-7 * lam)


class _Steps(Observer):
    """Keeps, per local iteration, the weights before the step and the step's record."""

    def __init__(self):
        self.before, self.steps = [], []

    def local_forward(self, t, client, tau, model, params, x, options, tape):
        self.before.append({k: v.copy() for k, v in params.items()})

    def local_step(self, t, client, step):
        self.steps.append((step.lr, {k: v.copy() for k, v in step.grads.items()},
                           step.lam, {k: v.copy() for k, v in step.params.items()}))


@pytest.mark.parametrize("lam", [0.25, 3.0])
def test_each_extrusion_step_applies_lambda_once(lam):
    cfg = load_config("smoke", sets=["run.dtype=float64", "bae.enabled=true",
                                     f"bae.lambda={lam}", "train.momentum=0",
                                     "train.weight_decay=0"])
    data = load_fed_data(cfg)
    model = build_model(cfg, data.input_shape[0], data.num_classes)
    st_ = init_state(cfg, model)
    names = model.prunable
    masks = [st_.masks[n] for n in names]
    marked = marked_set([st_.params[n] for n in names], masks,
                        [max(1, int(m.sum()) // 3) for m in masks])
    obs = _Steps()
    local_train(model, st_.params, st_.buffers, st_.masks, data, 0,
                RoundPlan(2, 0.05, marked=marked), cfg, obs)
    assert len(obs.steps) == len(obs.before) > 1
    for before, (lr, ce, lam_tau, after) in zip(obs.before, obs.steps, strict=True):
        assert lam_tau == lam
        for name, idx in zip(names, marked, strict=True):
            g = ce[name].copy()
            g.reshape(-1)[idx] += 2.0 * lam * before[name].reshape(-1)[idx]  # BAE-2, l2sq
            expect = (before[name] - lr * g) * st_.masks[name]
            np.testing.assert_allclose(after[name], expect, rtol=1e-12, atol=1e-14)
