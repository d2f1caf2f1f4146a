# covers: CONV-5, SAP-4, MASK-3
"""The ReLU fused into a convolution (``conv2d(..., relu=True)``, what the models run after
every conv not followed by BatchNorm) is the ReLU of CONV-5 and SAP-4, not an approximation.

On integer-valued inputs, weights and biases in {-1, 0, 1}, the convolution's output is an
integer with many exact zeros *after* the bias (the case ReLU'(0) = 0 is about), and every sum
is exact. There the fused node must equal ``relu(conv2d(...))`` bit for bit, in value and in
every input gradient, on the dense kernels, the masked kernels and the masked layer's dense
fallback (what runs without Numba); a ones cotangent gives a bias gradient that counts, per
channel, the outputs whose conv + bias is > 0 (not >= 0, and not the conv before its bias).
Its residual is the packed bitmap of (y > 0), ceil(numel/8) bytes (SAP-4). NSConv's fused path
(packed Ŵ into the masked kernels) equals its unfused twin bit for bit too.
"""

import contextlib

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

import refimpl
from refimpl import functional as F
from refimpl.core.tape import Tape, value_of
from refimpl.ops import conv as C

from .strategies import conv_case, conv_kwargs, seeds

trits = (-1.0, 0.0, 1.0)


@contextlib.contextmanager
def jit_enabled(on: bool):
    """Run the masked layer on its compiled kernels (True) or on the dense fallback (False)."""
    saved = C.JIT_ENABLED
    C.JIT_ENABLED = on
    try:
        yield
    finally:
        C.JIT_ENABLED = saved


def _case(cfg, seed, dtype, density):
    rng = np.random.default_rng(seed)
    x = rng.choice(trits, (cfg["n"], cfg["c"], cfg["h"], cfg["w"])).astype(dtype)
    wshape = (cfg["o"], cfg["c"] // cfg["groups"], cfg["kh"], cfg["kw"])
    w = rng.choice(trits, wshape).astype(dtype)
    b = rng.choice(trits, cfg["o"]).astype(dtype)
    mask = None if density is None else rng.random(wshape) < density
    return rng, x, w, b, mask


def test_fused_relu_residual_is_the_bitmap_of_positive_outputs():
    """SAP-4: the fused node keeps (y > 0) packed 8 per byte, little bit order; an output of
    exactly 0 (conv + bias = 0) is not positive."""
    x = np.array([[[[1.0, -1.0, 0.0], [2.0, 0.5, -3.0], [0.0, 0.0, 1.0]]]])  # (1, 1, 3, 3)
    w = np.ones((2, 1, 1, 1))
    b = np.array([0.0, 1.0])  # channel 1: x + 1, zero at x = -1
    tape = Tape()
    xv, wv, bv = tape.leaf(x), tape.leaf(w), tape.leaf(b)
    F.conv2d(xv, wv, bv, relu=True)
    (node,) = tape.nodes
    pre = np.concatenate([x, x + 1.0], axis=1)
    assert np.array_equal(node.res.relu_bits,
                          np.packbits(pre.reshape(-1) > 0, bitorder="little"))
    assert node.res.relu_bits.nbytes == (pre.size + 7) // 8
    assert node.res.relu_bits.dtype == np.uint8


@given(conv_case(), seeds, st.sampled_from([np.float32, np.float64]),
       st.sampled_from([None, 0.5, 1.0]), st.booleans())
def test_fused_relu_equals_relu_of_conv_bit_for_bit(cfg, seed, dtype, density, jit):
    """CONV-5: value and gradients of x, w, b of the fused node equal those of relu(conv2d)
    exactly, with exact zeros at conv + bias; ReLU'(0) = 0 in the bias gradient's count."""
    rng, x, w, b, mask = _case(cfg, seed, dtype, density)
    kw = dict(conv_kwargs(cfg), mask=mask)
    with jit_enabled(jit):
        pre = F.conv2d(x, w, b, **kw)
        y, vjp = refimpl.vjp(lambda x, w, b: F.conv2d(x, w, b, relu=True, **kw), x, w, b)
        y0, vjp0 = refimpl.vjp(lambda x, w, b: F.relu(F.conv2d(x, w, b, **kw)), x, w, b)
        g = rng.integers(-3, 4, y.shape).astype(dtype)
        grads, grads0 = vjp(g), vjp0(g)
        (db_ones,) = refimpl.vjp(lambda b: F.conv2d(x, w, b, relu=True, **kw), b)[1](
            np.ones_like(y))
    assert np.array_equal(y, np.where(pre > 0, pre, dtype(0)))
    assert np.array_equal(y, y0)
    for got, want, name in zip(grads, grads0, ("x", "w", "b")):
        assert got.dtype == dtype and np.array_equal(got, want), name
    if mask is not None:
        assert np.all(grads[1][~mask] == 0)  # MASK-3: no gradient off the mask
    assert np.array_equal(db_ones, (pre > 0).sum(axis=(0, 2, 3)).astype(dtype))


@given(seeds, st.sampled_from([0.4, 1.0]), st.sampled_from(["dense", "masked"]))
def test_fused_relu_in_nsconv_equals_its_unfused_twin(seed, density, stats):
    """CONV-5 through NSConv's packed Ŵ (NSC-3): nsconv2d(relu=True) equals relu(nsconv2d())
    bit for bit, in value and in the gradients of x, W, gain and bias."""
    rng = np.random.default_rng(seed)
    mask = rng.random((4, 2, 3, 3)) < density
    w = rng.standard_normal(mask.shape) * mask
    gain, b = rng.standard_normal(4), rng.standard_normal(4)
    x = rng.standard_normal((2, 2, 5, 5))

    def fused(x, w, gain, b):
        return F.nsconv2d(x, w, mask, gain, b, padding=1, stats=stats, relu=True)

    def unfused(x, w, gain, b):
        return F.relu(F.nsconv2d(x, w, mask, gain, b, padding=1, stats=stats))

    y, vjp = refimpl.vjp(fused, x, w, gain, b)
    y0, vjp0 = refimpl.vjp(unfused, x, w, gain, b)
    g = rng.standard_normal(y.shape)
    assert np.array_equal(y, y0)
    # a draw whose outputs are all of one sign exercises only half of the ReLU: draw again
    assume((y == 0).any() and (y > 0).any())
    for got, want in zip(vjp(g), vjp0(g)):
        assert np.array_equal(got, want)


@given(seeds, st.sampled_from([np.float32, np.float64]), st.booleans(), st.booleans(),
       st.sampled_from([1.0, 1.7128585504496627]))
def test_fused_relu_in_batch_norm_equals_its_unfused_twin(seed, dtype, training, affine, gain):
    """CONV-5 through BatchNorm (evaluation runs them as one node, models/graph.py):
    batch_norm(relu=True, relu_gain=g) equals relu(batch_norm(), gain=g) bit for bit, in value
    and in the gradients of x, weight and bias, training and eval; its record keeps the bitmap
    of (y > 0), 8 per byte."""
    rng = np.random.default_rng(seed)
    x = rng.choice(trits, (3, 4, 2, 3)).astype(dtype)  # exact zeros after normalising
    rm, rv = np.zeros(4, dtype), np.ones(4, dtype)
    w = rng.choice(trits, 4).astype(dtype) if affine else None
    b = rng.choice(trits, 4).astype(dtype) if affine else None

    def fused(x, w, b):
        return F.batch_norm2d(x, rm.copy(), rv.copy(), w, b, training=training, relu=True,
                              relu_gain=gain)

    def unfused(x, w, b):
        return F.relu(F.batch_norm2d(x, rm.copy(), rv.copy(), w, b, training=training),
                      gain=gain)

    args = (x, w, b) if affine else (x,)
    f = fused if affine else (lambda x: fused(x, None, None))
    u = unfused if affine else (lambda x: unfused(x, None, None))
    y, vjp = refimpl.vjp(f, *args)
    y0, vjp0 = refimpl.vjp(u, *args)
    assert y.tobytes() == y0.tobytes()
    g = rng.integers(-3, 4, y.shape).astype(dtype)
    for got, want in zip(vjp(g), vjp0(g), strict=True):
        assert got.tobytes() == want.tobytes()
    tape = Tape()
    out = F.batch_norm2d(tape.leaf(x), rm.copy(), rv.copy(), training=training, relu=True)
    (node,) = tape.nodes
    assert np.array_equal(node.res.relu_bits,
                          np.packbits(value_of(out).reshape(-1) > 0, bitorder="little"))
