# covers: FL-1, RNG-1
"""FL-1 client sampling as a property over many seeds, rounds and sizes: C distinct clients of
K, sorted ascending, int64, a function of (seed, round) only; and uniform (every client is
sampled about C/K of the time)."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from refimpl.fl.server import sample_clients


@st.composite
def sizes(draw):
    k = draw(st.integers(1, 300))
    return k, draw(st.integers(1, k))


@given(st.integers(0, 2**32 - 1), st.integers(1, 500), sizes())
def test_sampled_clients_are_distinct_sorted_and_reproducible(seed, t, kc):
    k, c = kc
    a = sample_clients(seed, t, k, c)
    assert a.dtype == np.int64 and a.shape == (c,)
    assert np.all(np.diff(a) > 0)  # sorted ascending and distinct
    assert a[0] >= 0 and a[-1] < k
    assert np.array_equal(a, sample_clients(seed, t, k, c))  # RNG-1: same seed, same draw
    if c == k:
        assert np.array_equal(a, np.arange(k))


@given(st.integers(0, 2**32 - 1), st.integers(2, 60))
def test_sampling_changes_with_the_round(seed, k):
    """RNG-1: each round draws from its own stream: over 64 rounds, C = K/2 of K, not every
    round samples the same set (for K = 2 a fixed stream repeats with chance 2^-63)."""
    c = k // 2
    draws = {tuple(sample_clients(seed, t, k, c).tolist()) for t in range(1, 65)}
    assert len(draws) > 1


def test_sampling_is_uniform():
    """FL-1 'uniformly': over 3000 rounds of C = 3 of K = 10, each client is sampled
    900 ± 90 times (binomial sd ≈ 25; fixed seed, so the test is deterministic)."""
    counts = np.zeros(10, dtype=np.int64)
    for t in range(1, 3001):
        counts[sample_clients(11, t, 10, 3)] += 1
    assert counts.sum() == 9000
    assert np.all(np.abs(counts - 900) < 90), counts
