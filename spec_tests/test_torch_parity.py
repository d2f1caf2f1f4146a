# covers: CONV-1, CONV-2, CONV-5, TAPE-1, LT-1, LT-2
"""PyTorch parity in float64: every primitive's forward and every cotangent against
``torch.nn.functional`` (relative error <= 1e-10), and one full training step of a 3-layer CNN
(loss, every gradient, and the SGD update). PyTorch is only the oracle here."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refimpl
from refimpl import functional as F
from refimpl.core.optim import SGD

from .inputs import away_from_zero, distinct, smooth
from .strategies import broadcast_pair, conv_case, conv_kwargs, pool_case, seeds
from .tolerances import TORCH_F64_RTOL, max_rel_err
from .torch_oracle import torch_or_skip


def _parity(ours, theirs, primals, seed, consts=()):
    """Run ``ours`` (refimpl) and ``theirs`` (torch) on the same float64 primals with the same
    random cotangent; assert forward and every cotangent within TORCH_F64_RTOL."""
    torch = torch_or_skip()
    out, vjp_fn = refimpl.vjp(ours, *primals)
    u = np.random.default_rng([seed, 11]).standard_normal(np.shape(out))
    cts = vjp_fn(np.asarray(u, dtype=out.dtype))
    ts = [torch.tensor(p, requires_grad=True) for p in primals]
    y = theirs(torch, *ts)
    y.backward(torch.tensor(u))
    assert out.shape == tuple(y.shape)
    assert max_rel_err(out, y.detach().numpy()) <= TORCH_F64_RTOL
    for i, (c, t) in enumerate(zip(cts, ts)):
        want = t.grad.numpy() if t.grad is not None else np.zeros_like(primals[i])
        assert max_rel_err(c, want) <= TORCH_F64_RTOL, f"cotangent {i}"


@given(conv_case(max_batch=3), seeds)
def test_conv2d(cfg, seed):
    rng = np.random.default_rng(seed)
    x = smooth(rng, (cfg["n"], cfg["c"], cfg["h"], cfg["w"]))
    w = smooth(rng, (cfg["o"], cfg["c"] // cfg["groups"], cfg["kh"], cfg["kw"]))
    kw = conv_kwargs(cfg)
    if cfg["bias"]:
        b = smooth(rng, (cfg["o"],))
        _parity(lambda x, w, b: F.conv2d(x, w, b, **kw),
                lambda t, x, w, b: t.nn.functional.conv2d(x, w, b, **kw), [x, w, b], seed)
    else:
        _parity(lambda x, w: F.conv2d(x, w, **kw),
                lambda t, x, w: t.nn.functional.conv2d(x, w, **kw), [x, w], seed)


@given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 5), seeds)
def test_linear(n, i, o, seed):
    rng = np.random.default_rng(seed)
    x, w, b = smooth(rng, (n, i)), smooth(rng, (o, i)), smooth(rng, (o,))
    _parity(F.linear, lambda t, x, w, b: t.nn.functional.linear(x, w, b), [x, w, b], seed)


@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), seeds)
def test_relu(shape, seed):
    x = away_from_zero(np.random.default_rng(seed), tuple(shape))
    _parity(F.relu, lambda t, x: t.nn.functional.relu(x), [x], seed)


def test_relu_at_zero_and_maxpool_ties_follow_conv5():
    """CONV-5 where PyTorch agrees: ReLU'(0) = 0; max-pool's first maximum gets the gradient."""
    torch = torch_or_skip()
    x = np.array([[[[0.0, 1.0], [1.0, 1.0]]]])
    _, vjp_fn = refimpl.vjp(lambda x: F.max_pool2d(F.relu(x), 2), x)
    (dx,) = vjp_fn(np.ones((1, 1, 1, 1)))
    np.testing.assert_array_equal(dx, [[[[0.0, 1.0], [0.0, 0.0]]]])
    t = torch.tensor(x, requires_grad=True)
    torch.nn.functional.max_pool2d(torch.nn.functional.relu(t), 2).sum().backward()
    np.testing.assert_array_equal(dx, t.grad.numpy())


@given(pool_case(True), seeds)
def test_max_pool2d(cfg, seed):
    x = distinct(np.random.default_rng(seed), cfg.pop("shape"))
    _parity(lambda x: F.max_pool2d(x, **cfg),
            lambda t, x: t.nn.functional.max_pool2d(x, **cfg), [x], seed)


@given(pool_case(False), st.booleans(), st.sampled_from([None, 1, 5]), seeds)
def test_avg_pool2d(cfg, include_pad, divisor, seed):
    x = smooth(np.random.default_rng(seed), cfg.pop("shape"))
    cfg.pop("dilation")
    kw = dict(count_include_pad=include_pad, divisor_override=divisor, **cfg)
    _parity(lambda x: F.avg_pool2d(x, **kw),
            lambda t, x: t.nn.functional.avg_pool2d(x, **kw), [x], seed)


@given(st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)),
       seeds)
def test_global_avg_pool2d(shape, seed):
    x = smooth(np.random.default_rng(seed), shape)
    _parity(F.global_avg_pool2d,
            lambda t, x: t.flatten(t.nn.functional.adaptive_avg_pool2d(x, 1), 1), [x], seed)


@given(broadcast_pair(), seeds)
def test_add_mul(shapes, seed):
    rng = np.random.default_rng(seed)
    a, b = smooth(rng, shapes[0]), smooth(rng, shapes[1])
    _parity(F.add, lambda t, a, b: a + b, [a, b], seed)
    _parity(F.mul, lambda t, a, b: a * b, [a, b], seed)


@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), st.data(), seeds)
def test_sum_mean_reshape_flatten(shape, data, seed):
    x = smooth(np.random.default_rng(seed), tuple(shape))
    nd = len(shape)
    dims = data.draw(st.lists(st.integers(0, nd - 1), min_size=1, max_size=nd, unique=True))
    keep = data.draw(st.booleans())
    _parity(lambda x: F.sum(x, dims, keep), lambda t, x: t.sum(x, dims, keep), [x], seed)
    _parity(lambda x: F.mean(x, dims, keep), lambda t, x: t.mean(x, dims, keep), [x], seed)
    _parity(lambda x: F.reshape(x, (-1,)), lambda t, x: t.reshape(x, (-1,)), [x], seed)
    start = data.draw(st.integers(0, nd - 1))
    _parity(lambda x: F.flatten(x, start), lambda t, x: t.flatten(x, start), [x], seed)


@given(st.integers(1, 6), st.integers(2, 7), st.sampled_from(["mean", "sum"]), seeds)
def test_cross_entropy(n, c, reduction, seed):
    rng = np.random.default_rng(seed)
    x = smooth(rng, (n, c), scale=5.0)
    target = rng.integers(0, c, n)
    _parity(lambda x: F.cross_entropy(x, target, reduction=reduction),
            lambda t, x: t.nn.functional.cross_entropy(x, t.tensor(target), reduction=reduction),
            [x], seed)


@given(st.integers(2, 4), st.integers(1, 3), st.integers(2, 4), st.booleans(), seeds)
def test_batch_norm_and_running_stats(n, c, hw, training, seed):
    torch = torch_or_skip()
    rng = np.random.default_rng(seed)
    x = smooth(rng, (n, c, hw, hw))
    w, b = smooth(rng, (c,)), smooth(rng, (c,))
    rm0, rv0 = smooth(rng, (c,)), 0.5 + rng.random(c)
    ours_rm, ours_rv = rm0.copy(), rv0.copy()
    _parity(lambda x, w, b: F.batch_norm2d(x, ours_rm, ours_rv, w, b, training=training,
                                           momentum=0.1),
            lambda t, x, w, b: t.nn.functional.batch_norm(
                x, t.tensor(rm0), t.tensor(rv0), w, b, training=training, momentum=0.1),
            [x, w, b], seed)
    # running statistics after one training update (PyTorch: unbiased variance, momentum 0.1)
    trm, trv = torch.tensor(rm0.copy()), torch.tensor(rv0.copy())
    torch.nn.functional.batch_norm(torch.tensor(x), trm, trv, training=training, momentum=0.1)
    # our lambda ran once in the forward of refimpl.vjp: one update, like torch's single call
    assert max_rel_err(ours_rm, trm.numpy()) <= TORCH_F64_RTOL
    assert max_rel_err(ours_rv, trv.numpy()) <= TORCH_F64_RTOL


@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.9, 5e-4)])
def test_full_training_step_of_a_three_layer_cnn(momentum, weight_decay):
    """conv-relu-maxpool, conv-relu, global pool, linear, cross-entropy: loss, every gradient,
    and the parameters after two SGD steps equal PyTorch's (LT-1 update rule)."""
    torch = torch_or_skip()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 2, 10, 10))
    y = rng.integers(0, 5, 8)
    params = {"c1.w": rng.standard_normal((6, 2, 3, 3)) * 0.4, "c1.b": rng.standard_normal(6) * .1,
              "c2.w": rng.standard_normal((8, 6, 3, 3)) * 0.2, "c2.b": rng.standard_normal(8) * .1,
              "fc.w": rng.standard_normal((5, 8)) * 0.3, "fc.b": rng.standard_normal(5) * .1}

    def ours(p, x):
        h = F.max_pool2d(F.relu(F.conv2d(x, p["c1.w"], p["c1.b"], padding=1)), 2)
        h = F.relu(F.conv2d(h, p["c2.w"], p["c2.b"], padding=1, stride=2))
        return F.cross_entropy(F.linear(F.global_avg_pool2d(h), p["fc.w"], p["fc.b"]), y)

    def theirs(p, x):
        fn = torch.nn.functional
        h = fn.max_pool2d(fn.relu(fn.conv2d(x, p["c1.w"], p["c1.b"], padding=1)), 2)
        h = fn.relu(fn.conv2d(h, p["c2.w"], p["c2.b"], padding=1, stride=2))
        return fn.cross_entropy(fn.linear(h.mean((2, 3)), p["fc.w"], p["fc.b"]), torch.tensor(y))

    tp = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    topt = torch.optim.SGD(list(tp.values()), lr=0.1, momentum=momentum,
                           weight_decay=weight_decay)
    opt = SGD(0.1, momentum=momentum, weight_decay=weight_decay)
    step = refimpl.value_and_grad(ours)
    for _ in range(2):
        loss, grads = step(params, x)
        topt.zero_grad()
        tloss = theirs(tp, torch.tensor(x))
        tloss.backward()
        assert max_rel_err(loss, tloss.detach().numpy()) <= TORCH_F64_RTOL
        for k in params:
            assert max_rel_err(grads[k], tp[k].grad.numpy()) <= TORCH_F64_RTOL, k
        opt.step(params, grads)
        topt.step()
        for k in params:
            assert max_rel_err(params[k], tp[k].detach().numpy()) <= TORCH_F64_RTOL, k
