# covers: SAP-1, SAP-2, SAP-3, SAP-4, TAPE-3, CACHE-2
"""SAP as a residual policy of conv2d (every kind, NSConv included) and linear: the forward and
grad_input are untouched, grad_weight is the dense gradient on the pruned cache x̂, grad_bias is
exact; a block's first conv and its projection shortcut share one cache, encoded once."""

import gc
import weakref

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refimpl
import refimpl.ops.conv as conv_ops
from refimpl import functional as F
from refimpl import models
from refimpl import sap as S
from refimpl.core.tape import Tape

GAMMAS = ("0.0", "0.3", "0.5", "0.7", "0.9")

# (name, C_in, C_out, kernel, stride, padding, dilation, groups, masked, nsconv)
CONVS = [
    ("plain 3x3", 4, 6, 3, 1, 1, 1, 1, False, False),
    ("strided", 4, 6, 3, 2, 1, 1, 1, False, False),
    ("1x1 projection", 4, 8, 1, 2, 0, 1, 1, False, False),
    ("dilated", 3, 5, 3, 1, 2, 2, 1, False, False),
    ("grouped", 4, 6, 3, 1, 1, 1, 2, False, False),
    ("depthwise", 6, 6, 3, 1, 1, 1, 6, False, False),
    ("masked", 4, 6, 3, 1, 1, 1, 1, True, False),
    ("masked depthwise", 6, 6, 3, 2, 1, 1, 6, True, False),
    ("nsconv", 4, 6, 3, 1, 1, 1, 1, True, True),
    ("nsconv depthwise", 6, 6, 3, 1, 1, 1, 6, True, True),
]


def same_bits(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def pruned(x, gamma):
    """x̂ by the CONV-4 definition (SAP-2), independently of the kernels: sort-based."""
    k = S.keep_count(x.size, gamma)
    a = np.abs(x.reshape(-1)).astype(np.float64)
    keep = np.zeros(x.size, dtype=bool)
    keep[np.lexsort((np.arange(x.size), -a))[:k]] = True
    return np.where(keep.reshape(x.shape), x, x.dtype.type(0))


def conv_layer(cfg, rng, dtype):
    _, cin, cout, k, stride, pad, dil, groups, masked, nsconv = cfg
    w = rng.standard_normal((cout, cin // groups, k, k)).astype(dtype)
    mask = rng.random(w.shape) < 0.6 if masked else None
    if mask is not None:
        mask.reshape(cout, -1)[:, 0] = True
        w = w * mask
    b = rng.standard_normal(cout).astype(dtype)
    gain = (1 + 0.1 * rng.standard_normal(cout)).astype(dtype)

    def f(x, w, b, gain, **sap):
        if nsconv:  # (no dilation argument: NSConv layers of the zoo are undilated)
            return F.nsconv2d(x, w, mask, gain, b, stride=stride, padding=pad, groups=groups,
                              **sap)
        return F.conv2d(x, w, b, stride=stride, padding=pad, dilation=dil, groups=groups,
                        mask=mask, **sap)

    return f, (w, b, gain)


@given(st.sampled_from(CONVS), st.sampled_from(GAMMAS), st.sampled_from(S.POLICIES),
       st.sampled_from([np.float32, np.float64]), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_conv_sap_gradients(cfg, gamma, policy, dtype, n, seed):
    """SAP-1, SAP-3 for every conv kind: output and grad_input bit-identical to no SAP;
    grad_weight (and NSConv gain) bit-identical to the no-SAP gradient computed on x̂;
    grad_bias exact. The input is a ReLU output, so it is full of exact-zero ties."""
    rng = np.random.default_rng(seed)
    f, (w, b, gain) = conv_layer(cfg, rng, dtype)
    x = np.maximum(rng.standard_normal((n, cfg[1], 7, 7)), 0).astype(dtype)
    sap = {"sap": S.SapPolicy.make(float(gamma), policy)}
    out_s, vjp_s = refimpl.vjp(lambda x, w, b, g: f(x, w, b, g, **sap), x, w, b, gain)
    out_0, vjp_0 = refimpl.vjp(lambda x, w, b, g: f(x, w, b, g), x, w, b, gain)
    xhat = pruned(x, gamma)
    out_h, vjp_h = refimpl.vjp(lambda x, w, b, g: f(x, w, b, g), xhat, w, b, gain)
    assert same_bits(out_s, out_0)  # the forward uses the exact input (SAP-1)
    g = rng.standard_normal(out_s.shape).astype(dtype)
    dx_s, dw_s, db_s, dg_s = vjp_s(g)
    dx_0, dw_0, db_0, _ = vjp_0(g)
    _, dw_h, _, dg_h = vjp_h(g)
    assert same_bits(dx_s, dx_0)
    assert same_bits(db_s, db_0)
    assert same_bits(dw_s, dw_h)
    assert same_bits(dg_s, dg_h)
    if gamma == "0.0":
        assert same_bits(dw_s, dw_0)


@given(st.sampled_from(GAMMAS), st.sampled_from(S.POLICIES), st.integers(1, 4),
       st.sampled_from([(7,), (2, 7)]), st.integers(0, 2**31 - 1))
def test_linear_sap_gradients(gamma, policy, n, extra, seed):
    """SAP-2, SAP-3 for linear, over the whole (*, in) input tensor."""
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.standard_normal((n,) + extra), 0)
    w, b = rng.standard_normal((5, extra[-1])), rng.standard_normal(5)
    sap = {"sap": S.SapPolicy.make(float(gamma), policy)}
    out_s, vjp_s = refimpl.vjp(lambda x, w, b: F.linear(x, w, b, **sap), x, w, b)
    out_0, vjp_0 = refimpl.vjp(F.linear, x, w, b)
    _, vjp_h = refimpl.vjp(F.linear, pruned(x, gamma), w, b)
    assert same_bits(out_s, out_0)
    g = rng.standard_normal(out_s.shape)
    (dx_s, dw_s, db_s), (dx_0, _, db_0), (_, dw_h, _) = vjp_s(g), vjp_0(g), vjp_h(g)
    assert same_bits(dx_s, dx_0) and same_bits(db_s, db_0) and same_bits(dw_s, dw_h)


@pytest.mark.parametrize("policy", S.POLICIES)
def test_residual_record_holds_the_encoded_cache(policy):
    """SAP-2, TAPE-3: the conv record keeps an ActivationCache (not x) whose buffers the tape
    counts; γ = 0.7 of 2·3·5·5 = 150 entries keeps 45."""
    rng = np.random.default_rng(0)
    tape = Tape()
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    w = tape.leaf(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    F.conv2d(x, w, padding=1, sap=S.SapPolicy.make(0.7, policy))
    res = tape.nodes[0].res
    assert res.x is None and isinstance(res.cache, S.ActivationCache)
    assert res.cache.n_keep == 45
    fmt = S.choose_format(policy, 150, 45, 4)
    assert res.cache.fmt == fmt
    assert tape.residual_nbytes() == S.format_nbytes(fmt, 150, 45, 4)


def _projection_pairs(tape):
    caches = [n.res.cache for n in tape.nodes if n.prim.name in ("conv2d", "linear")]
    return caches, len(caches) - len({id(c) for c in caches})


@pytest.mark.parametrize("norm", models.NORMS)
def test_block_conv_and_projection_share_one_cache_encoded_once(norm, monkeypatch):
    """SAP-1: in every block with a projection shortcut, the body's first conv and the
    shortcut hold the same cache record, encoded once; it is freed after backward."""
    model = models.build("resnet8", 3, 10, norm=norm, width=0.25)
    calls = []
    real = S.prune_and_encode

    def counting(x, policy, impl=None):
        calls.append(x.shape)
        return real(x, policy, impl)

    monkeypatch.setattr(S, "prune_and_encode", counting)
    monkeypatch.setattr(conv_ops, "prune_and_encode", counting)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 12, 12)).astype(np.float32)
    tape = Tape()
    params = {k: tape.leaf(v) for k, v in model.params.items()}
    out = models.forward(model, params, x, True, models.RunOptions(
        sap=S.SapPolicy.make(0.7, "bitmap")))
    loss = F.cross_entropy(out, np.array([1, 2]))
    layers = [lay for lay in models.iter_layers(model.layers)
              if isinstance(lay, (models.Conv, models.Linear))]
    shortcuts = [lay for lay in layers if lay.name.endswith("shortcut")]
    caches, shared = _projection_pairs(tape)
    assert len(shortcuts) == shared == 2  # resnet8: two stages change shape
    assert len(calls) == len(layers) - len(shortcuts)
    ref = weakref.ref(next(c for c in caches if caches.count(c) == 2))
    del caches
    tape.backward(loss, np.ones((), dtype=np.float32))
    gc.collect()
    assert tape.residual_nbytes() == 0 and ref() is None


def test_shared_cache_refuses_a_different_input():
    slot = S.SharedCache()
    pol = S.SapPolicy.make(0.5, "bitmap")
    a, b = np.ones((2, 3), dtype=np.float32), np.ones((2, 3), dtype=np.float32)
    c1 = slot.get(a, pol)
    assert slot.get(a, pol) is c1
    with pytest.raises(ValueError, match="one SharedCache per shared input"):
        slot.get(b, pol)


@pytest.mark.parametrize("norm", ["none", "nsconv"])
def test_model_bias_gradients_are_exact_under_sap(norm):
    """SAP-3 through a whole network: every input gradient is exact, so the bias gradients
    (which need no cached input) are bit-identical with and without SAP, while the weight
    gradients differ."""
    model = models.build("resnet8", 3, 10, norm=norm, width=0.25, dtype=np.float64)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 3, 10, 10))
    y = np.array([0, 4, 9])

    def grads(opts):
        def loss(p):
            return F.cross_entropy(models.forward(model, p, x, True, opts), y)
        return refimpl.grad(loss)(model.params)

    g0 = grads(models.RunOptions(sap=None))
    g1 = grads(models.RunOptions(sap=S.SapPolicy.make(0.9, "auto")))
    gz = grads(models.RunOptions(sap=S.SapPolicy.make(0.0, "index")))
    biases = [k for k in g0 if k.endswith(".bias")]
    assert biases
    for k in biases:
        assert same_bits(g0[k], g1[k]), k
    assert not same_bits(g0["layer1.0.conv2.weight"], g1["layer1.0.conv2.weight"])
    for k in g0:  # γ = 0 with any format is lossless
        assert same_bits(g0[k], gz[k]), k


def test_sap_policy_is_validated_once_where_it_is_made():
    """SAP-2, CONV-6: γ is validated and made exact when the policy is built; the policy is
    None when it changes nothing; keep counts are computed once per size."""
    assert S.SapPolicy.make(0.0, "dense") is None
    pol = S.SapPolicy.make("0.7", "auto")
    assert pol.gamma == S.Fraction(7, 10)
    assert pol.layout(150, 4) == (45, S.choose_format("auto", 150, 45, 4))
    assert pol.layout(150, 4) is pol.layout(150, 4)  # remembered, not recomputed
    with pytest.raises(ValueError, match="policy"):
        S.SapPolicy.make(0.5, "sparse")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        S.SapPolicy.make(1.0)
    with pytest.raises(ValueError, match="Fraction"):
        S.SapPolicy(0.5)  # a float is not exact: make() converts the decimal


def test_functional_sap_arguments_are_checked_before_recording():
    x = np.ones((1, 2, 4, 4), dtype=np.float32)
    w = np.ones((2, 2, 3, 3), dtype=np.float32)
    with pytest.raises(TypeError, match="conv2d: sap must be a refimpl.sap.SapPolicy"):
        F.conv2d(x, w, sap=0.5)
    with pytest.raises(TypeError, match="linear: sap must be"):
        F.linear(x.reshape(1, -1), np.ones((3, 32), dtype=np.float32), sap="auto")
    with pytest.raises(TypeError, match="SharedCache"):
        F.conv2d(x, w, sap=S.SapPolicy.make(0.5), shared_cache=object())
    with pytest.raises(TypeError, match="RunOptions: sap must be"):
        models.RunOptions(sap=0.7)
    tape = Tape()
    wv = tape.leaf(w)
    with pytest.raises(TypeError, match="nsconv2d: sap must be"):
        F.nsconv2d(x, wv, np.ones(w.shape, bool), np.ones(2, np.float32), sap=2.0)
    assert tape.nodes == []  # nothing recorded before the error
