# covers: NSC-1, NSC-2, NSC-3, NSC-4, MASK-3
"""NSConv: the standardised kernel keeps the mask's sparsity, follows both stats formulas,
and its gradients (through the mean and variance) match central differences and a PyTorch
twin written here, independently of refimpl."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refimpl
from refimpl import functional as F
from refimpl import models
from refimpl.kernels.masked_conv import WeightMask
from refimpl.ops import nsconv as NS

from .gradcheck import check_vjp
from .inputs import smooth
from .tolerances import CENTRAL_DIFF, TORCH_F64_RTOL, max_rel_err
from .torch_oracle import torch_or_skip

seeds = st.integers(0, 2**32 - 1)


@st.composite
def ns_case(draw):
    groups = draw(st.sampled_from([1, 2]))
    c = groups * draw(st.integers(1, 3))
    o = groups * draw(st.integers(1, 3))
    k = draw(st.sampled_from([1, 3]))
    return dict(n=draw(st.integers(1, 2)), c=c, o=o, k=k, groups=groups,
                hw=draw(st.integers(k, 5)), stats=draw(st.sampled_from(NS.STATS)),
                bias=draw(st.booleans()))


def _draw_arrays(cfg, seed, density=0.5):
    rng = np.random.default_rng(seed)
    x = smooth(rng, (cfg["n"], cfg["c"], cfg["hw"], cfg["hw"]))
    wshape = (cfg["o"], cfg["c"] // cfg["groups"], cfg["k"], cfg["k"])
    m = rng.random(wshape) < density
    m.reshape(cfg["o"], -1)[:, 0] = True  # at least one active entry per channel here
    w = smooth(rng, wshape) * m
    g = smooth(rng, (cfg["o"],)) + 2.0
    b = smooth(rng, (cfg["o"],))
    return x, w, m, g, b


def standardize_reference(w, m, g, stats, eps):
    """NSC-1 / NSC-2 written out literally, channel by channel, in float64."""
    out = np.zeros_like(w, dtype=np.float64)
    for o in range(w.shape[0]):
        wo, mo = w[o].astype(np.float64).ravel(), m[o].ravel()
        sel = np.ones_like(mo) if stats == "dense" else mo
        f = int(sel.sum())
        if f == 0:
            continue
        mu = wo[sel].mean()
        s2 = ((wo[sel] - mu) ** 2).sum() / max(f - 1, 1)
        out[o] = (g[o] * (wo - mu) / np.sqrt(max(s2 * f, eps)) * mo).reshape(w[o].shape)
    return out


@given(st.sampled_from(NS.STATS), st.integers(1, 4), st.integers(1, 6),
       hnp.arrays(bool, st.integers(1, 9)), seeds)
def test_standardised_kernel_formula_and_sparsity(stats, o, _unused, mrow, seed):
    """NSC-1/2/3: Ŵ equals the literal formula and is nonzero only where M is (raw masks,
    including all-inactive channels)."""
    rng = np.random.default_rng(seed)
    m = np.stack([rng.permutation(mrow) for _ in range(o)]).reshape(o, 1, 1, -1)
    w = rng.standard_normal(m.shape) * m
    g = rng.standard_normal(o)
    what, _ = NS.standardize_fwd((w, g), NS.StandardizeParams(WeightMask(m), stats, 1e-4),
                                 (False, False))
    assert np.array_equal(what != 0, m & (what != 0))  # zero wherever M is zero
    assert np.all(what[~m] == 0)
    np.testing.assert_allclose(what, standardize_reference(w, m, g, stats, 1e-4), rtol=1e-12,
                               atol=1e-14)


@given(ns_case(), seeds)
def test_nsconv_gradients_central_differences(cfg, seed):
    """NSC-3: gradients reach W, g (and x, b) through μ and s²."""
    x, w, m, g, b = _draw_arrays(cfg, seed)
    kw = dict(padding=cfg["k"] // 2, groups=cfg["groups"], stats=cfg["stats"])
    if cfg["bias"]:
        err = check_vjp(lambda x, w, g, b: F.nsconv2d(x, w, m, g, b, **kw), [x, w, g, b], seed)
    else:
        err = check_vjp(lambda x, w, g: F.nsconv2d(x, w, m, g, **kw), [x, w, g], seed)
    assert err < CENTRAL_DIFF[0]


def torch_nsconv(torch, x, w, m, g, b, stats, padding, groups, eps=1e-4):
    """An independent PyTorch twin of NSConv (SPEC §3), autograd does the gradients."""
    o = w.shape[0]
    w2 = w.reshape(o, -1)
    mf = m.reshape(o, -1).to(w.dtype)
    a = torch.ones_like(mf) if stats == "dense" else mf
    f = a.sum(1)
    mu = (w2 * a).sum(1) / f.clamp(min=1)
    c = (w2 - mu[:, None]) * a
    var = (c * c).sum(1) / (f - 1).clamp(min=1)
    r = torch.sqrt(torch.clamp(var * f, min=eps))
    what = (g[:, None] * c / r[:, None] * mf).reshape(w.shape)
    return torch.nn.functional.conv2d(x, what, b, 1, padding, 1, groups)


@given(ns_case(), seeds)
def test_nsconv_matches_torch_twin_f64(cfg, seed):
    torch = torch_or_skip()
    x, w, m, g, b = _draw_arrays(cfg, seed)
    kw = dict(padding=cfg["k"] // 2, groups=cfg["groups"], stats=cfg["stats"])
    bias = b if cfg["bias"] else None
    args = [x, w, g] + ([b] if cfg["bias"] else [])
    out, vjp_fn = refimpl.vjp(
        lambda x, w, g, *b: F.nsconv2d(x, w, m, g, b[0] if b else None, **kw), *args)
    u = np.random.default_rng([seed, 7]).standard_normal(out.shape)
    cts = vjp_fn(u)
    ts = [torch.tensor(a, requires_grad=True) for a in args]
    y = torch_nsconv(torch, ts[0], ts[1], torch.tensor(m), ts[2], ts[3] if bias is not None
                     else None, cfg["stats"], cfg["k"] // 2, cfg["groups"])
    y.backward(torch.tensor(u))
    assert max_rel_err(out, y.detach().numpy()) <= TORCH_F64_RTOL
    # Scale-invariance makes some weight cotangents analytically zero (rounding noise in both
    # implementations): measure every cotangent against the largest one.
    floor = max([1e-300] + [float(np.max(np.abs(t.grad.numpy()))) for t in ts])
    for c, t in zip(cts, ts):
        assert max_rel_err(c, t.grad.numpy(), floor=floor) <= TORCH_F64_RTOL


def test_empty_channel_gives_zero_kernel_in_masked_mode():
    """NSC-2: a channel with no active entry has Ŵ_o = 0 and zero gradients."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((2, 1, 3, 3))
    m = np.ones_like(w, dtype=bool)
    m[1] = False
    w = w * m
    g = np.ones(2)
    x = rng.standard_normal((1, 1, 5, 5))
    out, vjp_fn = refimpl.vjp(lambda w, g: F.nsconv2d(x, w, m, g, stats="masked"), w, g)
    assert np.all(out[:, 1] == 0)
    dw, dg = vjp_fn(np.ones_like(out))
    assert np.all(dw[1] == 0) and dg[1] == 0


@pytest.mark.parametrize("name", models.names())
def test_nsconv_models_have_no_batchnorm(name):
    """NSC-4: models built with NSConv contain no BatchNorm parameters or buffers."""
    m = models.build(name, 3, 10, norm="nsconv", width=0.25)
    assert not m.buffers
    assert not any(".bn." in k for k in m.params)
    assert all(f"{p[:-len('.weight')]}.gain" in m.params for p in m.prunable
               if m.params[p].ndim == 4)


def test_bad_mask_or_gain_shape_is_a_clear_error():
    x, w = np.zeros((1, 2, 4, 4)), np.zeros((3, 2, 3, 3))
    with pytest.raises(ValueError, match=r"nsconv2d: expected mask of the weight's shape"):
        F.nsconv2d(x, w, np.ones((3, 2, 3)), np.ones(3))
    with pytest.raises(ValueError, match=r"nsconv2d: expected gain of shape \(3,\)"):
        F.nsconv2d(x, w, np.ones(w.shape), np.ones(2))
    with pytest.raises(ValueError, match="stats must be one of"):
        F.nsconv2d(x, w, np.ones(w.shape), np.ones(3), stats="batch")


_SPECIALS = (0.0, -0.0, np.inf, -np.inf, 1e-40, -1e-40, 1e30, -1e30)


@given(st.integers(1, 5), st.integers(1, 40), st.sampled_from([1, 3, 5]), seeds,
       st.sampled_from([np.float32, np.float64]), st.sampled_from(NS.STATS), st.booleans(),
       st.floats(0.0, 1.0), st.floats(0.0, 0.3), st.sampled_from([1e-5, 1e-4, 1.0]))
@settings(deadline=None)
def test_nsconv_kernels_are_the_numpy_expressions_bit_for_bit(o, c, k, seed, dtype, stats,
                                                              packed, density, p_special, eps):
    """NSC-1..3: the channel-by-channel kernels (refimpl/kernels/nsconv.py), naive and compiled,
    give the bits of ops/nsconv.py's NumPy expressions: Ŵ (dense and packed), r, the clamp
    flags, ∂W and ∂g, in both stats modes, with empty channels, rows longer than NumPy's
    pairwise block (fan_in up to 1000), ±0, ±inf, overflow and subnormals (a NaN result is NaN
    in both, its payload may differ)."""
    from refimpl.kernels import nsconv as NK

    rng = np.random.default_rng(seed)
    shape = (o, c, k, k)
    w = rng.standard_normal(shape).astype(dtype) * dtype(10.0 ** rng.integers(-3, 3))
    pick = rng.random(shape) < p_special
    w[pick] = np.array(_SPECIALS, dtype=dtype)[rng.integers(0, len(_SPECIALS), pick.sum())]
    m = rng.random(shape) < density
    m[rng.integers(0, o)] = rng.random() < 0.5  # a channel all active or empty
    gain = rng.standard_normal(o).astype(dtype)
    p = NS.StandardizeParams.make(WeightMask(m), w, stats, eps, packed)
    g = rng.standard_normal(m.sum() if packed else shape).astype(dtype)
    view = np.uint32 if dtype == np.float32 else np.uint64
    results = {}
    with np.errstate(all="ignore"):
        for impl in ("numpy", "naive", "jit"):
            fwd, vjp, before = NK.standardize, NK.standardize_grad, NS.KERNELS
            NS.KERNELS = impl != "numpy"
            if NS.KERNELS:  # the kernel functions with this twin
                NK.standardize = lambda *a, _f=fwd, _i=impl, **kw: _f(*a, impl=_i, **kw)
                NK.standardize_grad = lambda *a, _f=vjp, _i=impl, **kw: _f(*a, impl=_i, **kw)
            try:
                what, res = NS.standardize_fwd((w, gain), p, (True, True))
                dw, dg = NS.standardize_vjp(res, g, p, (True, True))
            finally:
                NS.KERNELS, NK.standardize, NK.standardize_grad = before, fwd, vjp
            results[impl] = (what, res.r, res.unclamped, dw, dg)
    for impl in ("naive", "jit"):
        for got, ref in zip(results[impl], results["numpy"], strict=True):
            assert got.shape == ref.shape and got.dtype == ref.dtype, impl
            if ref.dtype == np.bool_:
                assert np.array_equal(got, ref), impl
                continue
            nan = np.isnan(ref)
            assert np.array_equal(np.isnan(got), nan), impl
            assert np.array_equal(got.view(view)[~nan], ref.view(view)[~nan]), impl


@given(st.integers(0, 1100), seeds, st.sampled_from([np.float32, np.float64]))
@settings(deadline=None)
def test_row_sum_is_numpys_sum_bit_for_bit(n, seed, dtype):
    """The kernels' row sum is np.sum's: 0 plus NumPy's pairwise order (blocks of 128, eight
    running sums, splits at multiples of 8), for lengths across every branch."""
    from refimpl.kernels import nsconv as NK

    rng = np.random.default_rng(seed)
    a = (rng.standard_normal(n) * 10.0 ** rng.integers(-6, 7, n)).astype(dtype)
    ref = np.sum(a.reshape(1, -1), axis=1)[0]
    for impl in NK.IMPLS:
        assert NK.row_sum(a, impl).tobytes() == ref.tobytes(), impl
