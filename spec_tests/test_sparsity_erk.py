# covers: ERK-1, ERK-2, ERK-3, MASK-1, MASK-2, CONV-6
"""Layer densities and exact integer counts (ERK), initial random masks, and density."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refimpl import models
from refimpl import sparsity as S

conv_shape = st.tuples(st.integers(1, 64), st.integers(1, 32), st.sampled_from([1, 3, 5]),
                       st.sampled_from([1, 3, 5])).map(lambda t: (t[0], t[1], t[2], t[2]))
lin_shape = st.tuples(st.integers(1, 100), st.integers(1, 200))
shapes_st = st.lists(st.one_of(conv_shape, lin_shape), min_size=1, max_size=8)
densities = st.sampled_from(["0.01", "0.05", "0.1", "0.2", "0.3", "0.5", "0.7", "0.9", "1"])
kinds = st.sampled_from(S.KINDS)


@given(shapes_st, densities, kinds)
def test_counts_exact_total_bounds_and_at_least_one(shapes, d, kind):
    """ERK-2: Σ n_l = floor(d·N + 1/2) exactly, 1 <= n_l <= N_l, or a clear error."""
    sizes = [math.prod(s) for s in shapes]
    target = math.floor(Fraction(d) * sum(sizes) + Fraction(1, 2))
    try:
        counts = S.layer_counts(shapes, d, kind)
    except ValueError as e:
        assert "would keep no weight" in str(e)
        return
    assert sum(counts) == target
    assert all(1 <= c <= n for c, n in zip(counts, sizes))


@given(shapes_st, densities, kinds)
def test_counts_follow_exact_densities(shapes, d, kind):
    """ERK-1/ERK-2: dense layers keep everything; other layers are within one of d_l·N_l; the
    remainder goes to the largest fractional parts."""
    dens, dense = S.layer_densities(shapes, d, kind)
    try:
        counts = S.layer_counts(shapes, d, kind)
    except ValueError:
        return
    sizes = [math.prod(s) for s in shapes]
    assert sum(dl * n for dl, n in zip(dens, sizes)) == Fraction(d) * sum(sizes)
    for i, (dl, n, c) in enumerate(zip(dens, sizes, counts)):
        assert 0 < dl <= 1
        if i in dense:
            assert c == n and dl == 1
        else:
            assert math.floor(dl * n) <= c <= math.floor(dl * n) + 1
    bumped = [i for i in range(len(shapes))
              if i not in dense and counts[i] > math.floor(dens[i] * sizes[i])]
    kept = [i for i in range(len(shapes)) if i not in dense and i not in bumped
            and counts[i] < sizes[i]]
    for b in bumped:  # every bumped layer's fraction is >= every eligible non-bumped one's
        fb = dens[b] * sizes[b] - math.floor(dens[b] * sizes[b])
        for k in kept:
            fk = dens[k] * sizes[k] - math.floor(dens[k] * sizes[k])
            assert fb > fk or (fb == fk and b < k)


@given(shapes_st, densities)
def test_erk_densities_proportional_to_score(shapes, d):
    """ERK-1: outside D, d_l = ε·s_l with one ε, ε·s_l <= 1, and the layers in D were the ones
    with the largest scores."""
    dens, dense = S.layer_densities(shapes, d, "erk")
    scores = [Fraction(sum(s), math.prod(s)) for s in shapes]
    free = [i for i in range(len(shapes)) if i not in dense]
    eps = {dens[i] / scores[i] for i in free}
    assert len(eps) <= 1
    for i in free:
        assert dens[i] <= 1
    if dense and free:
        # ε·s_l > 1 is monotone in s_l, so the layer moved into D is always the free layer with
        # the largest score: D holds the top scores.
        assert min(scores[i] for i in dense) >= max(scores[i] for i in free)


def test_uniform_and_er_variants():
    shapes = [(16, 1, 3, 3), (32, 16, 3, 3), (10, 32)]
    dens, dense = S.layer_densities(shapes, "0.1", "uniform")
    assert dens == [Fraction(1, 10)] * 3 and not dense
    dens_er, _ = S.layer_densities(shapes, "0.1", "er")
    dens_erk, _ = S.layer_densities(shapes, "0.1", "erk")
    assert dens_er != dens_erk  # the er score omits kh + kw for convs


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan"), float("inf")])
def test_density_outside_unit_interval_is_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"density must|finite"):
        S.layer_counts([(4, 4)], bad)


def test_impossible_density_is_a_clear_error():
    with pytest.raises(ValueError, match="would keep no weight"):
        S.layer_counts([(1000, 1000), (2, 2)], "0.000001", "uniform")


def test_unknown_kind_lists_valid():
    with pytest.raises(ValueError, match="erk, er, uniform"):
        S.layer_counts([(4, 4)], 0.5, "rigl")


def test_exact_rational_of_the_decimal_as_written():
    """CONV-6: 0.1 is 1/10, not the binary float; d·N = 0.1·30 = 3 exactly."""
    assert S.exact_fraction(0.1) == Fraction(1, 10)
    assert S.layer_counts([(30,)], 0.1, "uniform") == [3]


@given(shapes_st, densities, st.integers(0, 2**32 - 1))
def test_random_masks_exact_counts_and_seeded(shapes, d, seed):
    """ERK-3 / MASK-2: the initial masks hold exactly n_l positions; same streams, same masks."""
    try:
        counts = S.layer_counts(shapes, d)
    except ValueError:
        return
    rngs = lambda: [np.random.default_rng([seed, i]) for i in range(len(shapes))]  # noqa: E731
    masks = S.random_masks(shapes, counts, rngs())
    assert [int(m.sum()) for m in masks] == counts
    assert all(m.shape == tuple(s) and m.dtype == bool for m, s in zip(masks, shapes))
    again = S.random_masks(shapes, counts, rngs())
    assert all(np.array_equal(a, b) for a, b in zip(masks, again))
    total = sum(math.prod(s) for s in shapes)
    assert S.density(masks) == sum(counts) / total


def test_prunable_tensors_are_conv_and_linear_weights():
    """MASK-1: biases, gains and norm parameters are never prunable."""
    for name in models.names():
        for norm in models.NORMS:
            m = models.build(name, 3, 10, norm=norm, width=0.25)
            assert all(p.endswith(".weight") and ".bn." not in p for p in m.prunable)
            assert all(m.params[p].ndim in (2, 4) for p in m.prunable)
