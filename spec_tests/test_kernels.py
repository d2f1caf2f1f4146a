# covers: CONV-1, CONV-2, CONV-5, MASK-3, PG-5
"""The conv kernels agree with each other: for the dense kernels, the naive loop oracle, NumPy
(im2col + BLAS) and Numba; for the masked kernels (which visit only active weights), their naive
twin, their Numba version (both the generic and the stride-1 "wide rows" path) and the dense
kernels on W ⊙ M. Also with Numba disabled and with numba not installed at all."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from refimpl import functional as F
from refimpl.core import _jit
from refimpl.kernels import conv as K
from refimpl.kernels import masked_conv as MK

from .strategies import conv_case, pool_case, seeds
from .tolerances import tol

dtypes = st.sampled_from([np.float32, np.float64])


def _geom(cfg):
    return (cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"])


def _arrays(cfg, seed, dtype, density=None):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((cfg["n"], cfg["c"], cfg["h"], cfg["w"])).astype(dtype)
    wshape = (cfg["o"], cfg["c"] // cfg["groups"], cfg["kh"], cfg["kw"])
    w = rng.standard_normal(wshape).astype(dtype)
    mask = None
    if density is not None:
        mask = rng.random(wshape) < density
        w = w * mask
    oshape = K.conv2d_output_shape(x.shape, wshape, *_geom(cfg))
    g = rng.standard_normal(oshape).astype(dtype)
    return x, w, mask, g


def _dense_all(x, w, g, geom, impl):
    return (K.conv2d_forward(x, w, *geom, impl=impl),
            K.conv2d_grad_input(g, w, x.shape, *geom, impl=impl),
            K.conv2d_grad_weight(x, g, w.shape, *geom, impl=impl))


@given(conv_case(), seeds, dtypes)
def test_dense_kernels_agree(cfg, seed, dtype):
    x, w, _, g = _arrays(cfg, seed, dtype)
    geom = _geom(cfg)
    oracle = _dense_all(x, w, g, geom, "naive")
    rtol, atol = tol(dtype)
    for impl in ("np", "jit"):
        for got, want in zip(_dense_all(x, w, g, geom, impl), oracle):
            assert got.dtype == dtype and got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


@given(conv_case(), seeds, dtypes)
def test_dense_data_moves_are_bit_identical_twins(cfg, seed, dtype):
    """The moves around the dense GEMM (pad, im2col, col2im, unpad and the two transposes to
    and from the channel-major layout, with its bias and ReLU epilogue) copy and add in the same
    order in all three twins, so the compiled loops the default path uses give exactly NumPy's
    bytes (the ReLU: np.maximum's, +0.0 for −0.0 and NaN kept with its bits)."""
    x, w, _, g = _arrays(cfg, seed, dtype)
    (sh, sw), (ph, pw), (dh, dw) = cfg["stride"], cfg["padding"], cfg["dilation"]
    kh, kw = cfg["kh"], cfg["kw"]
    n, c, h, wd = x.shape
    o, oh, ow = g.shape[1:]
    rng = np.random.default_rng(seed)
    dcols = rng.standard_normal((c * kh * kw, n * oh * ow)).astype(dtype)
    bias = rng.standard_normal(o).astype(dtype)
    y2 = rng.standard_normal((o, n * oh * ow)).astype(dtype)
    pick = rng.random(y2.shape) < 0.3
    y2[pick] = np.array(_SPECIALS, dtype=dtype)[rng.integers(0, len(_SPECIALS), pick.sum())]
    got = {}
    for impl in ("naive", "np", "jit"):
        m = K._MOVES
        xp = m["pad"][impl](x, ph, pw, np.empty((n, c, h + 2 * ph, wd + 2 * pw), dtype))
        cols = m["im2col"][impl](xp, kh, kw, sh, sw, dh, dw, oh, ow,
                                 np.empty((c * kh * kw, n * oh * ow), dtype))
        dxp = m["col2im"][impl](dcols, kh, kw, sh, sw, dh, dw, oh, ow, np.empty_like(xp))
        dx = m["unpad"][impl](dxp, ph, pw, np.empty_like(x))
        with np.errstate(invalid="ignore"):  # inf + -inf
            ys = [m["from_channel_major"][impl](y2, bias, has, relu, dtype(0),
                                                np.empty((n, o, oh * ow), dtype))
                  for has in (False, True) for relu in (False, True)]
        gcm = m["to_channel_major"][impl](g.reshape(n, o, -1), np.empty((o, n * oh * ow), dtype))
        got[impl] = [a.tobytes() for a in (xp, cols, dxp, dx, *ys, gcm)]
    assert got["naive"] == got["np"] == got["jit"]


@st.composite
def _same_width_case(draw):
    """A geometry of the shift moves: stride 1, no dilation, 2·pw = KW − 1 (so OW = W), any ph
    (so OH may differ from H)."""
    kh, kw = draw(st.integers(1, 5)), draw(st.sampled_from([1, 3, 5]))
    ph = draw(st.integers(0, 3))
    return dict(n=draw(st.integers(1, 3)), c=draw(st.integers(1, 3)),
                h=max(1, kh - 2 * ph) + draw(st.integers(0, 4)), w=draw(st.integers(1, 7)),
                kh=kh, kw=kw, ph=ph, pw=(kw - 1) // 2)


@given(_same_width_case(), seeds, dtypes)
def test_shift_moves_give_the_padded_moves_bytes(case, seed, dtype):
    """With stride 1, no dilation and OW = W the default path moves columns as shifted copies
    of whole input planes (kernels/conv.py, the shift moves). Their columns and their input
    gradient are byte for byte those of pad + im2col and col2im + unpad, in all three twins:
    special inputs are copied with their bits, and the sums take the same terms in the same
    order (the cotangent holds ±0 and ±inf, so sums meet −0 terms and make NaNs)."""
    n, c, h, wd = case["n"], case["c"], case["h"], case["w"]
    kh, kw, ph, pw = case["kh"], case["kw"], case["ph"], case["pw"]
    oh = h + 2 * ph - kh + 1
    assert K._shifts((n, c, h, wd), (1, 1), (1, 1), wd)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, wd)).astype(dtype)
    pick = rng.random(x.shape) < 0.3
    x[pick] = np.array(_SPECIALS, dtype=dtype)[rng.integers(0, len(_SPECIALS), pick.sum())]
    dcols = rng.standard_normal((c * kh * kw, n * oh * wd)).astype(dtype)
    finite_specials = np.array([0.0, -0.0, np.inf, -np.inf, 1e-40, -1e-40], dtype=dtype)
    pick = rng.random(dcols.shape) < 0.3
    dcols[pick] = finite_specials[rng.integers(0, len(finite_specials), pick.sum())]
    m = K._MOVES
    xp = m["pad"]["naive"](x, ph, pw, np.empty((n, c, h + 2 * ph, wd + 2 * pw), dtype))
    want_cols = m["im2col"]["naive"](xp, kh, kw, 1, 1, 1, 1, oh, wd,
                                     np.empty(dcols.shape, dtype)).tobytes()
    with np.errstate(invalid="ignore"):  # inf + -inf
        dxp = m["col2im"]["naive"](dcols, kh, kw, 1, 1, 1, 1, oh, wd, np.empty_like(xp))
    want_dx = m["unpad"]["naive"](dxp, ph, pw, np.empty_like(x)).tobytes()
    valid = K._shift_valid(kw, pw, wd, oh * wd)
    for impl in ("naive", "np", "jit"):
        cols = m["im2col_shift"][impl](x, kh, kw, ph, pw, oh * wd, valid, dtype(0),
                                       np.full(dcols.shape, 7, dtype))
        with np.errstate(invalid="ignore"):
            dx = m["col2im_shift"][impl](dcols, kh, kw, ph, pw, oh * wd, valid, dtype(0),
                                         np.full(x.shape, 7, dtype))
        assert cols.tobytes() == want_cols, impl
        assert dx.tobytes() == want_dx, impl


@pytest.mark.parametrize("impl", K.IMPLS)
def test_dense_gradients_of_an_empty_batch(impl):
    """N = 0 (the shift moves take the batch's column count from the geometry, not from a
    division by N): an empty input gradient and a zero weight gradient."""
    x = np.zeros((0, 2, 5, 5), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    g = np.zeros((0, 3, 5, 5), np.float32)
    geom = ((1, 1), (1, 1), (1, 1), 1)
    assert K.conv2d_grad_input(g, w, x.shape, *geom, impl=impl).shape == x.shape
    dw = K.conv2d_grad_weight(x, g, w.shape, *geom, impl=impl)
    assert dw.shape == w.shape and not dw.any()


@given(conv_case(), seeds, dtypes, st.sampled_from([0.0, 0.1, 0.5, 1.0]))
def test_masked_kernels_agree_with_dense_on_masked_weight(cfg, seed, dtype, density):
    x, w, mask, g = _arrays(cfg, seed, dtype, density)
    geom = _geom(cfg)
    oshape = g.shape
    dense = _dense_all(x, w, g, geom, "naive")
    rtol, atol = tol(dtype)
    index = MK.build_index(mask)
    val = MK.gather(w, index)
    assert np.array_equal(val, w[mask])  # index order is C order of (o, c, i, j)
    b = np.random.default_rng(seed).standard_normal(cfg["o"]).astype(dtype)
    for impl in MK.IMPLS:
        y = MK.masked_conv2d_forward(x, index, val, b, *geom, oshape, impl=impl)
        dx = np.zeros(x.shape, dtype)
        dval = np.zeros(index.nnz, dtype)
        db = np.zeros(cfg["o"], dtype)
        MK.masked_conv2d_backward(g, x, index, val, *geom, dx=dx, dval=dval, db=db, impl=impl)
        dw = MK.scatter(dval, index)
        np.testing.assert_allclose(y, dense[0] + b.reshape(1, -1, 1, 1), rtol=rtol, atol=atol)
        np.testing.assert_allclose(db, g.sum(axis=(0, 2, 3)), rtol=rtol, atol=atol)
        np.testing.assert_allclose(dx, dense[1], rtol=rtol, atol=atol)
        np.testing.assert_allclose(dw, dense[2] * mask, rtol=rtol, atol=atol)
        assert np.all(dw[~mask] == 0)  # MASK-3: exactly zero, not merely small
        assert y.dtype == dx.dtype == dw.dtype == dtype


@given(conv_case(max_batch=9, stride1=True), seeds, dtypes, st.sampled_from([0.1, 0.5, 1.0]))
def test_wide_rows_kernels_are_the_loops_bit_for_bit(cfg, seed, dtype, density):
    """The stride-1 "wide rows" kernels (eight or four terms per pass, samples stacked end to
    end, a transposed index for the input gradient) add every output's terms in the order of the
    general loops: the forward and the input gradient are bit-identical to the naive general
    loops, and every wide kernel's naive twin (interpreted) is bit-identical to its compiled
    version; the forward's ReLU epilogue gives np.maximum's bytes; the weight gradient agrees
    with the dense oracle on W ⊙ M."""
    x, w, mask, g = _arrays(cfg, seed, dtype, density)
    geom = _geom(cfg)
    index = MK.build_index(mask)
    val = MK.gather(w, index)
    b = np.random.default_rng(seed).standard_normal(cfg["o"]).astype(dtype)
    y_loops = MK.masked_conv2d_forward(x, index, val, b, *geom, g.shape, impl="naive")
    dx_loops = np.zeros(x.shape, dtype)
    MK.masked_conv2d_backward(g, x, index, val, *geom, dx=dx_loops, impl="naive")
    pad, dil, groups = cfg["padding"], cfg["dilation"], cfg["groups"]
    got = {}
    for impl in ("naive", "jit"):
        y = MK._wide_forward(x, index, val, b, pad, dil, groups, g.shape, False, impl)
        y_relu = MK._wide_forward(x, index, val, b, pad, dil, groups, g.shape, True, impl)
        assert y_relu.tobytes() == np.maximum(y_loops, dtype(0)).tobytes()  # the epilogue
        dx, dval = np.zeros(x.shape, dtype), np.zeros(index.nnz, dtype)
        MK._wide_backward(g, x, index, val, pad, dil, groups, dx, dval, impl)
        assert y.tobytes() == y_loops.tobytes() and dx.tobytes() == dx_loops.tobytes()
        got[impl] = dval
    assert got["naive"].tobytes() == got["jit"].tobytes()
    dense_dw = K.conv2d_grad_weight(x, g, w.shape, *geom, impl="naive")
    np.testing.assert_allclose(MK.scatter(got["jit"], index), dense_dw * mask, *tol(dtype))


@given(conv_case(), seeds, st.sampled_from([0.1, 0.5]))
def test_functional_masked_conv_weight_grad_modes(cfg, seed, density):
    """conv2d(mask=M): the ordinary step's weight gradient is zero off the mask; the growth-score
    mode (weight_grad="dense", PG-5) returns the full dense gradient."""
    import refimpl

    x, w, mask, g = _arrays(cfg, seed, np.float64, density)
    kw = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"],
              groups=cfg["groups"])
    _, vjp_m = refimpl.vjp(lambda w: F.conv2d(x, w, mask=mask, **kw), w)
    _, vjp_d = refimpl.vjp(lambda w: F.conv2d(x, w, mask=mask, weight_grad="dense", **kw), w)
    _, vjp_plain = refimpl.vjp(lambda w: F.conv2d(x, w, **kw), w)
    full = vjp_plain(g)[0]
    np.testing.assert_allclose(vjp_m(g)[0], full * mask, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(vjp_d(g)[0], full, rtol=1e-10, atol=1e-12)


def test_unknown_impl_is_a_clear_error():
    x, w = np.zeros((1, 1, 3, 3)), np.zeros((1, 1, 3, 3))
    with pytest.raises(ValueError, match="unknown kernel impl 'cuda' for forward; valid: naive, "
                                         "np, jit"):
        K.conv2d_forward(x, w, (1, 1), (0, 0), (1, 1), 1, impl="cuda")
    index = MK.build_index(np.ones(w.shape, bool))
    with pytest.raises(ValueError, match="unknown kernel impl 'np' for forward; valid: naive, "
                                         "jit"):
        MK.masked_conv2d_forward(x, index, MK.gather(w, index), None, (1, 1), (0, 0), (1, 1), 1,
                                 (1, 1, 1, 1), impl="np")
    from refimpl.kernels import pool as PK

    with pytest.raises(ValueError, match="unknown kernel impl 'gpu' for forward"):
        PK.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0), (1, 1), 1, 1, impl="gpu")


_AGREEMENT_SCRIPT = textwrap.dedent("""
    import sys
    {prelude}
    import numpy as np
    from refimpl.core import _jit
    from refimpl.kernels import conv as K, masked_conv as MK
    print("JIT_ENABLED", _jit.JIT_ENABLED, "HAVE_NUMBA", _jit.HAVE_NUMBA)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 6, 5)); w = rng.standard_normal((6, 2, 3, 2))
    m = rng.random(w.shape) < 0.5; w = w * m
    geom = ((1, 2), (1, 0), (2, 1), 2)
    y0 = K.conv2d_forward(x, w, *geom, impl="naive")
    g = rng.standard_normal(y0.shape)
    for impl in ("np", "jit"):
        assert np.allclose(K.conv2d_forward(x, w, *geom, impl=impl), y0)
        assert np.allclose(K.conv2d_grad_input(g, w, x.shape, *geom, impl=impl),
                           K.conv2d_grad_input(g, w, x.shape, *geom, impl="naive"))
        assert np.allclose(K.conv2d_grad_weight(x, g, w.shape, *geom, impl=impl),
                           K.conv2d_grad_weight(x, g, w.shape, *geom, impl="naive"))
    idx = MK.build_index(m)
    assert np.allclose(MK.masked_conv2d_forward(x, idx, MK.gather(w, idx), None, *geom,
                                                y0.shape, impl="jit"), y0)
    print("AGREE")
""")


@pytest.mark.parametrize("mode", ["disabled", "absent"])
def test_kernels_run_without_numba(mode):
    """The same kernel functions run interpreted with NUMBA_DISABLE_JIT=1 and with numba not
    installed at all (simulated by blocking its import)."""
    env = dict(os.environ)
    prelude = ""
    if mode == "disabled":
        env["NUMBA_DISABLE_JIT"] = "1"
    else:
        env.pop("NUMBA_DISABLE_JIT", None)
        prelude = "sys.modules['numba'] = None  # import numba now raises ImportError"
    out = subprocess.run([sys.executable, "-c", _AGREEMENT_SCRIPT.format(prelude=prelude)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "AGREE" in out.stdout
    assert "JIT_ENABLED False" in out.stdout
    assert ("HAVE_NUMBA False" in out.stdout) == (mode == "absent")


def test_this_process_compiles_kernels():
    """The suite itself runs the compiled kernels (so the agreement tests above test Numba)."""
    assert _jit.HAVE_NUMBA and _jit.JIT_ENABLED


@given(pool_case(True), seeds, dtypes, st.booleans())
def test_max_pool_kernels_agree_with_numpy_twin(cfg, seed, dtype, ties):
    """CONV-5: the compiled max-pool loops and the vectorised NumPy code pick the same first
    maximum (raw values with many exact ties when ``ties``) and route the same gradient."""
    from refimpl.kernels import pool as PK
    from refimpl.ops import pool as P

    rng = np.random.default_rng(seed)
    shape = cfg["shape"]
    x = (rng.integers(-2, 3, shape) if ties else rng.standard_normal(shape)).astype(dtype)
    p = P.PoolParams(cfg["kernel_size"], cfg["stride"], cfg["padding"], cfg["dilation"])
    oh, ow = P.pool_output_hw("max_pool2d", shape[2], shape[3], p)
    y_np, arg_np = PK.max_pool2d_forward(x, p.kernel, p.stride, p.padding, p.dilation, oh, ow,
                                         impl="np")
    g = rng.standard_normal(y_np.shape).astype(dtype)
    dx_np = PK.max_pool2d_backward(g, arg_np, x.shape, p.kernel, p.stride, p.padding, p.dilation,
                                   impl="np")
    for impl in ("naive", "jit"):
        y, arg = PK.max_pool2d_forward(x, p.kernel, p.stride, p.padding, p.dilation, oh, ow,
                                       impl=impl)
        assert np.array_equal(y, y_np) and np.array_equal(arg, arg_np)
        dx = PK.max_pool2d_backward(g, arg, x.shape, p.kernel, p.stride, p.padding, p.dilation,
                                    impl=impl)
        np.testing.assert_allclose(dx, dx_np, rtol=tol(dtype)[0], atol=tol(dtype)[1])


@given(st.integers(1, 2), st.integers(1, 3), st.integers(2, 7), st.integers(2, 7), seeds, dtypes,
       st.booleans())
def test_max_pool_2x2_kernel_is_the_general_loops(n, c, h, w, seed, dtype, ties):
    """CONV-5: the 2x2/stride-2 forward (the model zoo's pool, compiled and as its interpreted
    twin) picks the same first maximum and value as the general loops, bit for bit, with exact
    ties, NaN (never selected), -inf and odd sizes (a last row or column no window covers); its
    backward routes the cotangent (with −0.0, NaN and inf) to the same positions with the same
    bits as the general loops."""
    from refimpl.kernels import pool as PK

    rng = np.random.default_rng(seed)
    x = (rng.integers(-2, 3, (n, c, h, w)) if ties else rng.standard_normal((n, c, h, w)))
    x = x.astype(dtype)
    x.flat[rng.integers(0, x.size, 3)] = [np.nan, -np.inf, -0.0]
    oh, ow = h // 2, w // 2
    y0, a0 = PK.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0), (1, 1), oh, ow, impl="naive")
    for impl in ("naive", "jit"):
        y = np.empty_like(y0)
        a = np.empty_like(a0)
        PK._KERNELS["forward_2x2"][impl](x, x.dtype.type(-np.inf), y, a)
        assert y.tobytes() == y0.tobytes() and np.array_equal(a, a0)
    y, a = PK.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0), (1, 1), oh, ow, impl="jit")
    assert y.tobytes() == y0.tobytes() and np.array_equal(a, a0)
    g = rng.standard_normal(y0.shape).astype(dtype)
    g.flat[rng.integers(0, g.size, 3)] = [-0.0, np.nan, np.inf]
    dx0 = PK.max_pool2d_backward(g, a0, x.shape, (2, 2), (2, 2), (0, 0), (1, 1), impl="naive")
    for impl in ("naive", "jit"):
        dx = PK._KERNELS["backward_2x2"][impl](g, a0, dtype(0), np.empty_like(x))
        assert dx.tobytes() == dx0.tobytes(), impl
    dx = PK.max_pool2d_backward(g, a0, x.shape, (2, 2), (2, 2), (0, 0), (1, 1), impl="jit")
    assert dx.tobytes() == dx0.tobytes()


_SPECIALS = (0.0, -0.0, np.nan, -np.nan, np.inf, -np.inf, 1e-40, -1e-40, 1.0, -1.0)


@given(st.integers(1, 67), seeds, dtypes, st.floats(0.0, 0.6))
def test_relu_kernels_are_the_numpy_twin_bit_for_bit(n, seed, dtype, p_special):
    """CONV-5: the one-pass ReLU forward (max(x, 0), the packed (x > 0)) and its backward
    (g times the bit, a multiply) equal NumPy's maximum / packbits / g * uint8 mask bit for
    bit, for every twin, sizes off a multiple of 8, NaN, ±0, ±inf and subnormals (x and g)."""
    from refimpl.kernels import relu as RK

    rng = np.random.default_rng(seed)

    def draw():
        a = rng.standard_normal(n).astype(dtype)
        pick = rng.random(n) < p_special
        a[pick] = np.array(_SPECIALS, dtype=dtype)[rng.integers(0, len(_SPECIALS), pick.sum())]
        return a

    x, g = draw(), draw()
    # inf * 0 is NaN by design here (the backward multiplies)
    with np.errstate(invalid="ignore"):
        _relu_twins_match(RK, x, g, n, dtype)


def _relu_twins_match(RK, x, g, n, dtype):
    view = np.uint32 if dtype == np.float32 else np.uint64
    y_ref = np.maximum(x, dtype(0))
    bits_ref = np.packbits(x > 0, bitorder="little")
    dx_ref = g * np.unpackbits(bits_ref, count=n, bitorder="little")
    for impl in RK.IMPLS:
        y, bits = RK.relu_forward(x, impl=impl)
        assert np.array_equal(y.view(view), y_ref.view(view)), impl
        assert np.array_equal(bits, bits_ref), impl
        xc = x.copy()
        y2, _ = RK.relu_forward(xc, out=xc, impl=impl)  # in place, as the fused conv runs it
        assert y2 is xc and np.array_equal(xc.view(view), y_ref.view(view)), impl
        dx = RK.relu_backward(g, bits, impl=impl)
        assert np.array_equal(dx.view(view), dx_ref.view(view)), impl


@given(st.integers(1, 9), st.integers(1, 5), st.integers(1, 9), st.integers(1, 9), seeds, dtypes,
       st.booleans(), st.booleans(), st.booleans(), st.floats(0.0, 0.4), st.booleans())
def test_batch_norm_kernels_are_the_numpy_expressions_bit_for_bit(n, c, h, w, seed, dtype,
                                                                  training, affine, with_bias,
                                                                  p_special, relu):
    """The one-pass batch-norm kernels (refimpl/kernels/norm.py: x̂ and y, with or without the
    fused ReLU; dx), naive and compiled, give the bits of the NumPy expressions of ops/norm.py,
    with and without weight and bias, training and eval, and with ±0, ±inf, NaN and subnormals
    in x and g (a NaN result is NaN in both, its payload may differ)."""
    from refimpl.kernels import norm as NK
    from refimpl.ops import norm as N

    rng = np.random.default_rng(seed)

    def draw(*shape):
        a = rng.standard_normal(shape).astype(dtype)
        pick = rng.random(shape) < p_special
        a[pick] = np.array(_SPECIALS, dtype=dtype)[rng.integers(0, len(_SPECIALS), pick.sum())]
        return a

    x, g = draw(n, c, h, w), draw(n, c, h, w)
    wt = rng.standard_normal(c).astype(dtype) if affine else None
    b = rng.standard_normal(c).astype(dtype) if with_bias else None
    m, v = rng.standard_normal(c).astype(dtype), rng.random(c).astype(dtype)
    p = N.BatchNormParams(m, v, 1e-5, training, relu)
    needs = (True, affine, with_bias)
    view = np.uint32 if dtype == np.float32 else np.uint64
    results = {}
    with np.errstate(invalid="ignore", over="ignore"):
        for impl in ("numpy", "naive", "jit"):
            kernels = impl != "numpy"
            if kernels:  # the kernel functions with this twin
                fwd, gin = NK.bn_forward, NK.bn_grad_input
                NK.bn_forward = lambda *a, _f=fwd, _i=impl, **k: _f(*a, impl=_i, **k)
                NK.bn_grad_input = lambda *a, _f=gin, _i=impl, **k: _f(*a, impl=_i, **k)
            before = N.KERNELS
            N.KERNELS = kernels
            try:
                y, res = N.batch_norm_fwd((x, wt, b), p, needs)
                grads = N.batch_norm_vjp(res, g, p, needs)
            finally:
                N.KERNELS = before
                if kernels:
                    NK.bn_forward, NK.bn_grad_input = fwd, gin
            results[impl] = [y, res.xhat] + [a for a in grads if a is not None]
    for impl in ("naive", "jit"):
        for got, ref, twin in zip(results[impl], results["numpy"], results["naive"], strict=True):
            if ref is None:
                assert got is None and twin is None
                continue
            assert got.shape == ref.shape and got.dtype == ref.dtype, impl
            assert np.array_equal(got.view(view), twin.view(view)), impl  # the loops: exact
            # NumPy: exact except which NaN a NaN-and-NaN operation returns (its vector loops may
            # swap the operands of a product with a broadcast scalar)
            nan = np.isnan(ref)
            assert np.array_equal(np.isnan(got), nan), impl
            assert np.array_equal(got.view(view)[~nan], ref.view(view)[~nan]), impl


@given(st.integers(1, 9), st.integers(1, 5), st.integers(1, 12), st.integers(1, 12), seeds,
       dtypes, st.floats(0.0, 0.3), st.booleans(), st.booleans(), st.booleans(), st.booleans())
def test_batch_norm_sums_are_numpys_bit_for_bit(n, c, h, w, seed, dtype, p_special, affine,
                                                training, want_w, want_b):
    """The batch-norm statistics and gradient sums compiled in NumPy's order
    (refimpl/kernels/sums.py, kernels/norm.py), naive and compiled, give the bits of np.mean and
    np.sum over every axis but 1: the batch mean, the mean of np.square(x − mean), and Σgx,
    Σgx·x̂, Σg·x̂, Σg with gx = g·w; with ±0, ±inf, NaN and subnormals (a NaN sum is NaN in both).
    Where NumPy's iterator would join or split the rows (one channel, rows of one entry) the
    kernels are not used (sums_apply), and the ops path gives NumPy's bits there too."""
    from refimpl.kernels import norm as NK
    from refimpl.ops import norm as N

    rng = np.random.default_rng(seed)

    def draw(*shape):
        a = (rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 4, shape)).astype(dtype)
        pick = rng.random(shape) < p_special
        a[pick] = np.array(_SPECIALS, dtype=dtype)[rng.integers(0, len(_SPECIALS), pick.sum())]
        return a

    x, g, xhat = draw(n, c, h, w), draw(n, c, h, w), draw(n, c, h, w)
    wt = draw(c) if affine else None
    axes = (0, 2, 3)
    view = np.uint32 if dtype == np.float32 else np.uint64

    def same(got, ref):
        nan = np.isnan(ref)
        assert np.array_equal(np.isnan(got), nan)
        assert np.array_equal(got.view(view)[~nan], ref.view(view)[~nan])

    with np.errstate(all="ignore"):
        m_ref = np.mean(x, axis=axes)
        v_ref = np.mean(np.square(x - m_ref.reshape(1, c, 1, 1)), axis=axes)
        gx = g * wt.reshape(1, c, 1, 1) if affine else g
        refs = (np.mean(gx, axis=axes) if training else None,
                np.mean(gx * xhat, axis=axes) if training else None,
                np.sum(g * xhat, axis=axes) if want_w else None,
                np.sum(g, axis=axes) if want_b else None)
        for got, ref in zip(N.batch_stats(x, axes), (m_ref, v_ref), strict=True):
            same(got, ref)
        if not NK.sums_apply(x):
            assume(False)  # the kernels do not run on this shape (checked above: NumPy's path)
        for impl in ("naive", "jit"):
            m = NK.channel_means(x, impl=impl)
            same(m, m_ref)
            same(NK.channel_means(x, m_ref, impl=impl), v_ref)
            got = NK.grad_sums(g, xhat, wt, training, want_w, want_b, impl=impl)
            for a, ref in zip(got, refs, strict=True):
                assert (a is None) == (ref is None)
                if ref is not None:
                    same(a, ref)


def _vector_sums(u, v, out):
    """out[i] = Σ_r u[r, i] · v[r, i] over rows r in order from +0.0, one vector of positions at
    a time (the pattern of the masked weight gradient: products rounded, then added per lane)."""
    lanes = _jit.vec_lanes(out)
    for k in range(0, out.shape[0], lanes):
        a = _jit.vec_zero(out)
        for r in range(u.shape[0]):
            a = _jit.vec_add(a, _jit.vec_mul(_jit.vec_load(u[r], k), _jit.vec_load(v[r], k)))
        _jit.vec_store(out, k, a)
    return out


_vector_sums_jit = _jit.njit(_vector_sums)


def _running_sums(u, counts, start, out):
    """out[j] = start + u's first counts[j] entries of vector j added one by one (vec_accumulate,
    the way the masked weight gradient continues an entry's sum over positions)."""
    lanes = _jit.vec_lanes(u)
    for j in range(out.shape[0]):
        out[j] = _jit.vec_accumulate(start, _jit.vec_load(u, j * lanes), counts[j])
    return out


_running_sums_jit = _jit.njit(_running_sums)


@given(st.integers(1, 6), seeds, dtypes)
def test_vec_accumulate_adds_lanes_in_order_compiled_and_interpreted(vectors, seed, dtype):
    """vec_accumulate(t, v, c) is ((t + v[0]) + v[1]) + ... over the first c lanes (c clipped to
    0..lanes; a whole vector's adds unrolled when compiled): the same bits compiled and
    interpreted as the scalar loop, special values included (NaN: sign and payload free)."""
    lanes = 32 // np.dtype(dtype).itemsize
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(vectors * lanes).astype(dtype)
    pick = rng.random(u.shape) < 0.2
    u[pick] = np.array(_SPECIALS, dtype=dtype)[rng.integers(0, len(_SPECIALS), pick.sum())]
    counts = rng.integers(-2, lanes + 3, vectors).astype(np.int64)
    counts[0] = lanes  # the unrolled whole vector, always
    start = dtype(rng.standard_normal())
    want = np.empty(vectors, dtype)
    with np.errstate(all="ignore"):
        for j in range(vectors):
            t = start
            for i in range(min(max(int(counts[j]), 0), lanes)):
                t = dtype(t + u[j * lanes + i])
            want[j] = t
        got = [f(u, counts, start, np.full(vectors, np.nan, dtype))
               for f in (_running_sums, _running_sums_jit)]
    nan = np.isnan(want)
    for g in got:
        assert np.array_equal(np.isnan(g), nan)
        assert g[~nan].tobytes() == want[~nan].tobytes()


@given(st.integers(1, 6), st.integers(1, 5), seeds, dtypes)
def test_vector_helpers_compiled_match_python_and_scalar_loops(rows, vectors, seed, dtype):
    """core/_jit's register vectors (8 float32 or 4 float64 lanes) compute, lane by lane, what the
    scalar loop computes: each product rounded, the sums from +0.0 in row order; compiled (LLVM
    vector IR) and interpreted (NumPy) give the same bits, special values included (a NaN is a
    NaN: which operand's NaN an add passes on is the compiler's choice, as in every kernel)."""
    lanes = 32 // np.dtype(dtype).itemsize
    assert _jit.vec_lanes(np.zeros(1, dtype)) == lanes
    rng = np.random.default_rng(seed)
    n = vectors * lanes
    u = rng.standard_normal((rows, n)).astype(dtype)
    v = rng.standard_normal((rows, n)).astype(dtype)
    for a in (u, v):
        pick = rng.random(a.shape) < 0.2
        a[pick] = np.array(_SPECIALS, dtype=dtype)[rng.integers(0, len(_SPECIALS), pick.sum())]
    scalar = np.zeros(n, dtype)
    with np.errstate(all="ignore"):
        for r in range(rows):
            scalar = scalar + u[r] * v[r]
        got = [f(u, v, np.full(n, np.nan, dtype)) for f in (_vector_sums, _vector_sums_jit)]
    nan = np.isnan(scalar)
    for g in got:  # the same bits (signed zeros included); a NaN's sign and payload are free
        assert np.array_equal(np.isnan(g), nan)
        assert g[~nan].tobytes() == scalar[~nan].tobytes()
