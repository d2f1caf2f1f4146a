# covers: TAPE-1, TAPE-2, CONV-1, CONV-2, CONV-5
"""Per-primitive gradient checks: every cotangent of every differentiable input against central
differences in float64, with a random cotangent (STYLE 6). Hypothesis draws shapes and seeds;
values come from spec_tests/inputs.py, away from kinks and ties."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from refimpl import functional as F

from .gradcheck import check_vjp
from .inputs import away_from_zero, distinct, smooth
from .strategies import broadcast_pair, conv_case, pool_case, seeds
from .tolerances import CENTRAL_DIFF

RTOL = CENTRAL_DIFF[0]


@given(conv_case(), seeds)
def test_conv2d_grad(cfg, seed):
    rng = np.random.default_rng(seed)
    x = smooth(rng, (cfg["n"], cfg["c"], cfg["h"], cfg["w"]))
    w = smooth(rng, (cfg["o"], cfg["c"] // cfg["groups"], cfg["kh"], cfg["kw"]))
    b = smooth(rng, (cfg["o"],))
    kw = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"],
              groups=cfg["groups"])
    if cfg["bias"]:
        err = check_vjp(lambda x, w, b: F.conv2d(x, w, b, **kw), [x, w, b], seed)
    else:
        err = check_vjp(lambda x, w: F.conv2d(x, w, **kw), [x, w], seed)
    assert err < RTOL


@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 4), st.booleans(), seeds)
def test_linear_grad(n, i, o, bias, seed):
    rng = np.random.default_rng(seed)
    x, w, b = smooth(rng, (n, i)), smooth(rng, (o, i)), smooth(rng, (o,))
    if bias:
        err = check_vjp(lambda x, w, b: F.linear(x, w, b), [x, w, b], seed)
    else:
        err = check_vjp(lambda x, w: F.linear(x, w), [x, w], seed)
    assert err < RTOL


@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), seeds)
def test_relu_grad(shape, seed):
    x = away_from_zero(np.random.default_rng(seed), tuple(shape))
    assert check_vjp(F.relu, [x], seed) < RTOL


@given(pool_case(True), seeds)
def test_max_pool2d_grad(cfg, seed):
    x = distinct(np.random.default_rng(seed), cfg.pop("shape"))
    assert check_vjp(lambda x: F.max_pool2d(x, **cfg), [x], seed) < RTOL


@given(pool_case(False), st.booleans(), st.sampled_from([None, 1, 5]), seeds)
def test_avg_pool2d_grad(cfg, include_pad, divisor, seed):
    x = smooth(np.random.default_rng(seed), cfg.pop("shape"))
    cfg.pop("dilation")
    f = lambda x: F.avg_pool2d(x, count_include_pad=include_pad, divisor_override=divisor, **cfg)  # noqa: E731
    assert check_vjp(f, [x], seed) < RTOL


@given(st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)), seeds)
def test_global_avg_pool2d_grad(shape, seed):
    x = smooth(np.random.default_rng(seed), shape)
    assert check_vjp(F.global_avg_pool2d, [x], seed) < RTOL


@given(broadcast_pair(), seeds)
def test_add_mul_grad_with_broadcasting(shapes, seed):
    rng = np.random.default_rng(seed)
    a, b = smooth(rng, shapes[0]), smooth(rng, shapes[1])
    assert check_vjp(F.add, [a, b], seed) < RTOL
    assert check_vjp(F.mul, [a, b], seed) < RTOL


@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), st.data(), seeds)
def test_sum_mean_reshape_flatten_grad(shape, data, seed):
    x = smooth(np.random.default_rng(seed), tuple(shape))
    nd = len(shape)
    dims = data.draw(st.one_of(st.none(), st.lists(st.integers(-nd, nd - 1), min_size=1,
                                                   max_size=nd, unique_by=lambda d: d % nd)))
    keep = data.draw(st.booleans())
    assert check_vjp(lambda x: F.sum(x, dims, keep), [x], seed) < RTOL
    assert check_vjp(lambda x: F.mean(x, dims, keep), [x], seed) < RTOL
    assert check_vjp(lambda x: F.reshape(x, (-1,)), [x], seed) < RTOL
    start = data.draw(st.integers(0, nd - 1))
    assert check_vjp(lambda x: F.flatten(x, start), [x], seed) < RTOL


@given(st.integers(1, 5), st.integers(2, 6), st.sampled_from(["mean", "sum"]), seeds)
def test_cross_entropy_grad(n, c, reduction, seed):
    rng = np.random.default_rng(seed)
    x = smooth(rng, (n, c), scale=3.0)
    t = rng.integers(0, c, n)
    assert check_vjp(lambda x: F.cross_entropy(x, t, reduction), [x], seed) < RTOL


# hw >= 2: with only two values per channel the normalised output is ±1 whatever x is, and
# its tiny gradient (∝ eps) is ill-conditioned for central differences.
@given(st.integers(2, 3), st.integers(1, 3), st.integers(2, 3), st.booleans(), st.booleans(),
       seeds)
def test_batch_norm_grad(n, c, hw, training, affine, seed):
    rng = np.random.default_rng(seed)
    x = smooth(rng, (n, c, hw, hw))
    w, b = smooth(rng, (c,)), smooth(rng, (c,))
    rm, rv = smooth(rng, (c,)), 0.5 + rng.random(c)

    def f(x, *wb):
        # fresh copies: training updates running stats in place, which must not leak into
        # the finite-difference evaluations
        return F.batch_norm2d(x, rm.copy(), rv.copy(), *wb, training=training)

    err = check_vjp(f, [x, w, b] if affine else [x], seed)
    assert err < RTOL
