# covers: TAPE-1, TAPE-2
"""Tests of the testers (STYLE 8): the gradient checkers must fail on planted bugs, and pass on
the same setup without the bug (so the failure is the bug's, not the setup's)."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from refimpl import functional as F
from refimpl.core.tape import Primitive, Tape, apply
from refimpl.ops import conv as conv_ops

from .gradcheck import check_vjp, dot_product_test
from .inputs import smooth
from .tolerances import CENTRAL_DIFF

RTOL = CENTRAL_DIFF[0]
seeds = st.integers(0, 2**32 - 1)


def _conv_dx_by_full_correlation(g, w, pad, flip):
    """Stride-1 input gradient as a 'full' correlation of g with the (in/out swapped) kernel;
    correct only with the spatial flip."""
    kh, kw = w.shape[2:]
    wt = np.ascontiguousarray(w.transpose(1, 0, 2, 3))
    if flip:
        wt = np.ascontiguousarray(wt[:, :, ::-1, ::-1])
    return F.conv2d(g, wt, padding=(kh - 1 - pad, kw - 1 - pad))


def _planted_conv(flip):
    def vjp(res, g, p, needs):
        dx, dw, _ = conv_ops.conv2d_vjp(res, g, p, needs)
        if needs[0]:
            dx = _conv_dx_by_full_correlation(g, res.w, p.padding[0], flip)
        return dx, dw, None

    return Primitive("conv2d_planted", conv_ops.conv2d_fwd, vjp)


def _caught(fn, primals, seed, probes=3):
    """The dot-product test's largest error over a few random probes (u, v): one probe of a
    wrong vjp can land near its null space by chance (a relative error of 1.5e-4 for one seed
    of the unflipped kernel), three independent ones do not."""
    return max(dot_product_test(fn, primals, seed + i) for i in range(probes))


def _conv_with(prim, x, w, pad):
    return apply(prim, (x, w, None), conv_ops.ConvParams((1, 1), (pad, pad), (1, 1), 1))


@given(st.integers(2, 3), st.integers(0, 1), seeds)
def test_checker_catches_unflipped_kernel(k, pad, seed):
    rng = np.random.default_rng(seed)
    x, w = smooth(rng, (1, 2, 5, 5)), smooth(rng, (3, 2, k, k))
    right, wrong = _planted_conv(True), _planted_conv(False)
    assert check_vjp(lambda x, w: _conv_with(right, x, w, pad), [x, w], seed) < RTOL
    assert check_vjp(lambda x, w: _conv_with(wrong, x, w, pad), [x, w], seed) > 1e-3
    assert _caught(lambda x, w: _conv_with(wrong, x, w, pad), [x, w], seed) > 1e-3


def _planted_linear(transpose):
    def vjp(res, g, params, needs):
        dx, dw, db = conv_ops.linear_vjp(res, g, params, needs)
        if needs[0] and transpose:
            dx = g @ res.w.T  # the planted bug: shapes agree only because w is square
        return dx, dw, db

    return Primitive("linear_planted", conv_ops.linear_fwd, vjp)


@given(st.integers(2, 5), seeds)
def test_checker_catches_transposed_weight(n, seed):
    rng = np.random.default_rng(seed)
    x, w = smooth(rng, (3, n)), smooth(rng, (n, n))
    w = w + 2.0 * np.triu(np.ones((n, n)), 1)  # far from symmetric: w.T is a different matrix
    for bug, bound in ((False, None), (True, 1e-3)):
        prim = _planted_linear(bug)
        err = check_vjp(lambda x, w, prim=prim: apply(prim, (x, w, None), None), [x, w], seed)
        assert (err < RTOL) if not bug else (err > bound)


@given(st.integers(1, 4), seeds)
def test_checker_catches_overwrite_instead_of_accumulate(n, seed):
    rng = np.random.default_rng(seed)
    x = smooth(rng, (n, 3)) + 3.0  # positive: relu is the identity here, no kink nearby
    fan_out = lambda x: F.add(F.mul(F.relu(x), x), x)  # noqa: E731 - x used three times
    assert check_vjp(fan_out, [x], seed) < RTOL

    def overwrite(cts, key, c):
        cts[key] = c

    original = Tape.__dict__["_accumulate"]  # the staticmethod object itself
    Tape._accumulate = staticmethod(overwrite)
    try:
        assert check_vjp(fan_out, [x], seed) > 1e-3
        assert _caught(fan_out, [x], seed) > 1e-3
    finally:
        Tape._accumulate = original
