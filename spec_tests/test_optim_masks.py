# covers: MASK-3, LT-1, LT-3
"""The optimizer keeps MASK-3 after every step: W == W ⊙ M exactly, and the gradient applied
and the momentum state are 0 on masked positions, over many random steps (with mask changes
in between, as prune-and-grow makes them)."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refimpl.core.optim import SGD

shapes = hnp.array_shapes(min_dims=1, max_dims=4, max_side=4)


@given(shapes, st.floats(0, 0.99), st.floats(0, 0.1), st.integers(1, 12),
       st.integers(0, 2**32 - 1), st.sampled_from([np.float32, np.float64]))
def test_mask3_after_many_momentum_steps(shape, momentum, wd, steps, seed, dtype):
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < 0.5
    w = (rng.standard_normal(shape) * mask).astype(dtype)
    params = {"w": w}
    opt = SGD(0.1, momentum=momentum, weight_decay=wd)
    for step in range(steps):
        if step and step % 4 == 0:  # a topology change: some positions leave, others join
            flip = rng.random(shape) < 0.2
            mask = mask ^ flip
            params["w"] *= mask
        before = params["w"].copy()
        g = rng.standard_normal(shape).astype(dtype) * 10
        opt.step(params, {"w": g}, masks={"w": mask})
        assert np.array_equal(params["w"], params["w"] * mask)
        assert np.all(params["w"][~mask] == 0)
        if momentum:
            assert np.all(opt.state["w"][~mask] == 0)
        assert params["w"].dtype == dtype
        if not momentum and not wd:  # plain SGD: active positions move by exactly -lr * g
            expect = (before - dtype(0.1) * g) * mask
            np.testing.assert_array_equal(params["w"], expect)


def test_sgd_matches_update_rule():
    """LT-1: PyTorch's SGD rule with momentum and weight decay, written out."""
    w = np.array([1.0, -2.0, 3.0])
    params = {"w": w.copy()}
    opt = SGD(0.1, momentum=0.9, weight_decay=0.01)
    g1, g2 = np.array([0.5, 0.5, -1.0]), np.array([1.0, 0.0, 2.0])
    opt.step(params, {"w": g1})
    d1 = g1 + 0.01 * w
    w1 = w - 0.1 * d1
    np.testing.assert_array_equal(params["w"], w1)
    opt.step(params, {"w": g2})
    buf = 0.9 * d1 + (g2 + 0.01 * w1)
    np.testing.assert_allclose(params["w"], w1 - 0.1 * buf, rtol=0, atol=1e-15)


def test_sgd_rejects_bad_arguments():
    import pytest

    with pytest.raises(ValueError, match="lr must be > 0"):
        SGD(0)
    opt = SGD(0.1)
    with pytest.raises(ValueError, match="gradient of 'w' has shape"):
        opt.step({"w": np.zeros(3)}, {"w": np.zeros(2)})
