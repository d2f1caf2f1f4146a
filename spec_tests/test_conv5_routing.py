# covers: CONV-5, SAP-4
"""CONV-5 stated directly, as properties on inputs full of the cases the rule is about.

- ReLU'(0) = 0: for inputs with exact zeros and -0.0, the vjp of relu is g ⊙ (x > 0); a ones
  cotangent gives exactly the indicator (x > 0). (The older test at zero routed its gradient
  through a max-pool, which sent it elsewhere.)
- Max-pool routes the gradient to the FIRST maximum in row-major window order: on ties-heavy
  inputs (small integers, +0.0 and -0.0, which compare equal), every implementation's output
  and gradient equal a brute-force oracle that lists each window's in-bounds positions and
  picks the lowest window position holding the maximum.
"""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refimpl
from refimpl import functional as F
from refimpl.kernels import pool as PK
from refimpl.ops import pool as P

from .strategies import pool_case

dtypes = st.sampled_from([np.float32, np.float64])
kinks = st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 1e-30, -1e-30])


@given(dtypes, hnp.array_shapes(min_dims=1, max_dims=4, max_side=5), st.data())
def test_relu_gradient_is_the_indicator_of_positive_input(dtype, shape, data):
    x = data.draw(hnp.arrays(dtype, shape, elements=kinks))
    out, vjp_fn = refimpl.vjp(F.relu, x)
    (dx,) = vjp_fn(np.ones_like(out))
    assert dx.dtype == dtype
    assert np.array_equal(dx, (x > 0).astype(dtype))  # ReLU'(0) = ReLU'(-0.0) = 0
    g = data.draw(hnp.arrays(dtype, shape, elements=st.integers(-3, 3).map(float)))
    (dx,) = refimpl.vjp(F.relu, x)[1](g)
    assert np.array_equal(dx, np.where(x > 0, g, dtype(0)))
    assert np.array_equal(out, np.where(x > 0, x, dtype(0)))


def test_relu_gradient_at_zero_by_hand():
    (dx,) = refimpl.vjp(F.relu, np.array([-1.0, -0.0, 0.0, 1e-300, 2.0]))[1](np.ones(5))
    assert dx.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]


def first_max_oracle(x, kernel, stride, padding, dilation, g):
    """Brute force: per window, the in-bounds positions in row-major window order; y = their
    max; the gradient goes to the lowest window position holding it (accumulated)."""
    n_, c_, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    y = np.empty((n_, c_, oh, ow), dtype=x.dtype)
    dx = np.zeros(x.shape, dtype=np.float64)
    for n in range(n_):
        for c in range(c_):
            for i in range(oh):
                for j in range(ow):
                    cells = [(a * dh + i * sh - ph, b * dw + j * sw - pw)
                             for a in range(kh) for b in range(kw)]
                    cells = [(r, s) for r, s in cells if 0 <= r < h and 0 <= s < w]
                    vals = [x[n, c, r, s] for r, s in cells]
                    top = max(vals)
                    r, s = cells[vals.index(top)]  # list.index: the first equal value
                    y[n, c, i, j] = top
                    dx[n, c, r, s] += g[n, c, i, j]
    return y, dx


@given(pool_case(True), dtypes, st.integers(0, 2**32 - 1))
def test_max_pool_routes_ties_to_the_first_maximum(cfg, dtype, seed):
    rng = np.random.default_rng(seed)
    shape = cfg["shape"]
    # Ties everywhere: values in {-1, 0, 1} with half of the zeros negative (-0.0 == +0.0).
    x = rng.integers(-1, 2, shape).astype(dtype)
    x[(x == 0) & (rng.random(shape) < 0.5)] = -0.0
    p = P.PoolParams(cfg["kernel_size"], cfg["stride"], cfg["padding"], cfg["dilation"])
    oh, ow = P.pool_output_hw("max_pool2d", shape[2], shape[3], p)
    g = rng.integers(-4, 5, (shape[0], shape[1], oh, ow)).astype(dtype)  # exact sums
    y_ref, dx_ref = first_max_oracle(x, p.kernel, p.stride, p.padding, p.dilation, g)

    kwargs = {k: cfg[k] for k in ("kernel_size", "stride", "padding", "dilation")}
    out, vjp_fn = refimpl.vjp(lambda x: F.max_pool2d(x, **kwargs), x)
    assert np.array_equal(out, y_ref)
    assert np.array_equal(vjp_fn(g)[0], dx_ref.astype(dtype))
    for impl in ("naive", "np", "jit"):
        y, arg = PK.max_pool2d_forward(x, p.kernel, p.stride, p.padding, p.dilation, oh, ow,
                                       impl=impl)
        assert np.array_equal(y, y_ref)
        dx = PK.max_pool2d_backward(g, arg, x.shape, p.kernel, p.stride, p.padding, p.dilation,
                                    impl=impl)
        assert np.array_equal(dx, dx_ref.astype(dtype))


def test_max_pool_tie_by_hand():
    """CONV-5 by hand: a 2x2 window of equal values sends the gradient to its top-left cell;
    +0.0 and -0.0 tie, so the earlier of the two wins."""
    x = np.array([[3.0, 3.0, 3.0, 3.0], [-0.0, 0.0, -1.0, 0.0]]).reshape(2, 1, 2, 2)
    dx = refimpl.vjp(lambda x: F.max_pool2d(x, 2), x)[1](np.ones((2, 1, 1, 1)))[0]
    assert dx.reshape(2, 4).tolist() == [[1, 0, 0, 0], [1, 0, 0, 0]]
