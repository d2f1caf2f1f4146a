# covers: PG-2, PG-3, PG-4, PG-5, PG-6, PG-7, BAE-1, CONV-4, MASK-3
"""Prune-and-grow and the BaE marked set as pure functions: invariants on raw Hypothesis arrays
(full of ties and zeros, on purpose) and the CONV-4 tie rule against a brute-force oracle."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refimpl import sparsity as S

shape_st = st.one_of(hnp.array_shapes(min_dims=2, max_dims=2, max_side=6),
                     hnp.array_shapes(min_dims=4, max_dims=4, max_side=3))
# Small integers as floats: lots of exact ties, zeros and negative zeros.
vals = st.integers(-3, 3).map(float) | st.just(-0.0)


@st.composite
def layers(draw, max_layers=3):
    out = []
    for _ in range(draw(st.integers(1, max_layers))):
        shape = draw(shape_st)
        m = draw(hnp.arrays(bool, shape))
        w = draw(hnp.arrays(np.float64, shape, elements=vals)) * m
        s = draw(hnp.arrays(np.float64, shape, elements=vals))
        out.append((w, m, s))
    return out


def brute_k(cands, scores, k, largest):
    key = sorted(zip(cands.tolist(), scores.tolist()),
                 key=lambda t: ((-t[1] if largest else t[1]), t[0]))
    return sorted(i for i, _ in key[:k])


@given(layers(), st.floats(0, 1))
def test_adjust_invariants(ls, alpha_t):
    ws, ms, ss = map(list, zip(*ls))
    new_w, new_m, rep = S.adjust(ws, ms, ss, alpha_t)
    for w, m, s, nw, nm, k, p, q in zip(ws, ms, ss, new_w, new_m, rep.counts, rep.pruned,
                                         rep.grown):
        nnz, n = int(m.sum()), m.size
        assert k == min(math.ceil(alpha_t * nnz), nnz, n - nnz)  # PG-3
        assert int(nm.sum()) == nnz  # every layer keeps its nnz
        flat = m.reshape(-1)
        assert p.size == k and q.size == k
        assert flat[p].all()  # prunes only active entries
        assert not flat[q].any()  # grows only entries inactive before pruning (PG-6)
        assert not set(p.tolist()) & set(q.tolist())
        expect = flat.copy()
        expect[p] = False
        expect[q] = True
        assert np.array_equal(nm.reshape(-1), expect)  # PG-7
        assert np.all(nw.reshape(-1)[q] == 0)  # grown weights start at 0
        assert np.array_equal(nw, nw * nm)  # MASK-3
        keep = flat & expect
        assert np.array_equal(nw.reshape(-1)[keep], w.reshape(-1)[keep])
        # CONV-4 tie rule against brute force
        act = np.flatnonzero(flat)
        ina = np.flatnonzero(~flat)
        assert p.tolist() == brute_k(act, np.abs(w.reshape(-1)[act]), k, largest=False)
        assert q.tolist() == brute_k(ina, np.abs(s.reshape(-1)[ina]), k, largest=True)


def test_marked_set_by_hand():
    """BAE-1 by hand: an inactive entry is never marked, even at 0; among the active entries the
    k smallest |θ|, an active exact 0 first and equal |θ| by lowest index (CONV-4)."""
    w = np.array([0.0, 0.5, -0.1, 0.0, 0.1, 3.0])
    m = np.array([False, True, True, True, True, True])
    assert S.marked_set([w], [m], [3])[0].tolist() == [2, 3, 4]


@given(layers(), st.floats(0, 1))
def test_marked_set_is_k_smallest_active(ls, alpha_t):
    """BAE-1: the k_l smallest |θ| among active entries, ties by index; prune='marked' uses it."""
    ws, ms, ss = map(list, zip(*ls))
    counts = S.adjust_counts(ms, alpha_t)
    marked = S.marked_set(ws, ms, counts)
    for w, m, k, mk in zip(ws, ms, counts, marked):
        act = np.flatnonzero(m)
        assert mk.dtype == np.int64 and np.all(np.diff(mk) > 0)
        assert mk.tolist() == brute_k(act, np.abs(w.reshape(-1)[act]), k, largest=False)
    _, _, rep = S.adjust(ws, ms, ss, alpha_t, prune="marked", marked=marked)
    assert all(np.array_equal(a, b) for a, b in zip(rep.pruned, marked))


def test_ties_go_to_the_lowest_index():
    w = np.ones((2, 4))
    m = np.array([[1, 1, 1, 1], [0, 0, 0, 0]], dtype=bool)
    s = np.zeros((2, 4))
    _, nm, rep = S.adjust([w], [m], [s], 0.5)
    assert rep.pruned[0].tolist() == [0, 1] and rep.grown[0].tolist() == [4, 5]


def test_alpha_schedule_cosine():
    """PG-2: α_t = α/2 (1 + cos(π t / T_end)); α_0 = α, α_{T_end} = 0."""
    assert S.alpha_schedule(0.3, 0, 10) == 0.3
    assert S.alpha_schedule(0.3, 10, 10) == 0.0
    assert S.alpha_schedule(0.3, 5, 10) == pytest.approx(0.15, abs=1e-15)
    assert S.alpha_schedule(0.3, 3, 10) == 0.3 / 2 * (1 + math.cos(math.pi * 3 / 10))


def test_marked_prune_requires_valid_set():
    w, m, s = np.ones((2, 2)), np.ones((2, 2), bool), np.zeros((2, 2))
    m[0, 0] = False
    with pytest.raises(ValueError, match="marked set"):
        S.adjust([w], [m], [s], 1.0, prune="marked", marked=[np.array([0])])


def test_non_finite_scores_rejected():
    w, m = np.ones((2, 2)), np.array([[1, 0], [1, 0]], bool)
    with pytest.raises(ValueError, match="finite"):
        S.adjust([w], [m], [np.full((2, 2), np.nan)], 0.5)
