# covers: NSC-1, NSC-2, NSC-3
"""NSConv's standardisation at every weight scale, in both stats modes: where ε sits.

NSC-1 clamps the variance term *inside* the square root: r_o = sqrt(max(s²_o·F, ε)), ε = 1e-4.
Standard-normal weights never reach the clamp (s²·F ≈ F ≫ ε), so tests at that scale cannot
tell sqrt(max(v, ε)) from max(sqrt(v), ε) or from a different ε. Weights of scale 1e-2..1e-4
put s²·F on both sides of ε; the kernel must equal the literal formula at every scale, through
the primitive and through ``F.nsconv2d`` with its default ε, and its gradient must stay right in
the clamped region (where r no longer depends on W).
"""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refimpl
from refimpl import functional as F
from refimpl.core.tape import apply
from refimpl.kernels.masked_conv import WeightMask
from refimpl.ops import nsconv as NS

from .gradcheck import check_vjp
from .test_nsconv import standardize_reference
from .tolerances import CENTRAL_DIFF

SPEC_EPS = 1e-4  # NSC-1
SCALES = (1.0, 1e-2, 1e-3, 1e-4)
seeds = st.integers(0, 2**32 - 1)


@st.composite
def kernel_case(draw):
    """A weight shape (C_out, C_in, kh, kw) with fan_in from 1 to 18 and a raw mask."""
    o = draw(st.integers(1, 4))
    c = draw(st.integers(1, 2))
    kh, kw = draw(st.sampled_from([(1, 1), (1, 3), (3, 3)]))
    mask = draw(hnp.arrays(bool, (o, c, kh, kw)))
    return mask, draw(st.sampled_from(NS.STATS)), draw(st.sampled_from(SCALES)), draw(seeds)


def _arrays(mask, scale, seed):
    rng = np.random.default_rng(seed)
    w = scale * rng.standard_normal(mask.shape) * mask
    g = rng.standard_normal(mask.shape[0]) + 2.0
    return w, g


@given(kernel_case())
def test_standardised_kernel_follows_the_formula_at_every_scale(case):
    """NSC-1 / NSC-2: Ŵ equals g·(W − μ)/sqrt(max(s²·F, ε)) ⊙ M to 1e-12 relative, for weights of
    scale 1, 1e-2, 1e-3 and 1e-4 (clamped and unclamped channels alike)."""
    mask, stats, scale, seed = case
    w, g = _arrays(mask, scale, seed)
    what, _ = NS.standardize_fwd((w, g), NS.StandardizeParams(WeightMask(mask), stats, SPEC_EPS),
                                 (False, False))
    ref = standardize_reference(w, mask, g, stats, SPEC_EPS)
    # atol: μ is summed in another order than the reference's, which moves W − μ by ~1e-16·|W|
    np.testing.assert_allclose(what, ref, rtol=1e-12, atol=1e-13 * float(np.max(np.abs(ref),
                                                                                initial=0)))
    assert np.all(what[~mask] == 0)


@given(st.sampled_from(NS.STATS), st.sampled_from(SCALES), seeds)
def test_nsconv2d_default_eps_is_the_spec_eps(stats, scale, seed):
    """NSC-1 through the public API: ``F.nsconv2d`` with its default ε equals conv2d with the
    literal kernel built with ε = 1e-4."""
    rng = np.random.default_rng(seed)
    mask = rng.random((3, 2, 3, 3)) < 0.6
    w, g = _arrays(mask, scale, seed)
    x = rng.standard_normal((2, 2, 5, 5))
    y = F.nsconv2d(x, w, mask, g, padding=1, stats=stats)
    expect = F.conv2d(x, standardize_reference(w, mask, g, stats, SPEC_EPS), padding=1)
    np.testing.assert_allclose(y, expect, rtol=1e-12, atol=1e-14 * float(np.max(np.abs(expect))))


def test_the_clamp_is_reached_exactly_where_the_formula_says():
    """NSC-1 by hand: one channel with s²·F below ε, one above; the clamped channel divides by
    sqrt(ε) = 1e-2, not by ε and not by sqrt(s²·F)."""
    w = np.zeros((2, 1, 1, 4))
    w[0, 0, 0] = [1e-3, -1e-3, 1e-3, -1e-3]  # μ = 0, s² = 4e-6/3, s²·F = 16e-6/3 < 1e-4
    w[1, 0, 0] = [1.0, -1.0, 1.0, -1.0]  # s²·F = 16/3
    m = np.ones(w.shape, dtype=bool)
    g = np.ones(2)
    what, _ = NS.standardize_fwd((w, g), NS.StandardizeParams(WeightMask(m), "dense", SPEC_EPS),
                                 (False, False))
    np.testing.assert_allclose(what[0, 0, 0], w[0, 0, 0] / 1e-2, rtol=1e-15)
    np.testing.assert_allclose(what[1, 0, 0], w[1, 0, 0] / np.sqrt(16 / 3), rtol=1e-15)


@given(kernel_case())
def test_standardisation_gradient_in_and_out_of_the_clamp(case):
    """NSC-3: the vjp to W and g matches central differences for weights of scale 1 (unclamped)
    and 1e-4 (clamped: r = sqrt(ε) is constant, no gradient flows through s²)."""
    mask, stats, scale, seed = case
    scale = 1.0 if scale >= 1e-2 else 1e-4  # stay clear of the clamp's kink
    w, g = _arrays(mask, scale, seed)
    p = NS.StandardizeParams(WeightMask(mask), stats, SPEC_EPS)
    err = check_vjp(lambda w, g: apply(NS.STANDARDIZE, (w, g), p), [w, g], seed,
                    h=1e-6 * scale)
    assert err < CENTRAL_DIFF[0]
    out, _ = refimpl.vjp(lambda w, g: apply(NS.STANDARDIZE, (w, g), p), w, g)
    assert np.all(out[~mask] == 0)  # NSC-3: Ŵ keeps the mask's sparsity
