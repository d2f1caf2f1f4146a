# covers: PG-7, MASK-3, PG-6
"""PG-7 on weights the caller did not premask: prune-and-grow sets every grown weight to +0.0
(no sign bit) and leaves W == W ⊙ M_new, whatever the input held at inactive positions.

The older invariant tests feed masked weights, where a grown position already holds ±0, so a
prune-and-grow that forgot to zero the grown weights would pass them (and ``== 0`` accepts
-0.0). Here inactive positions hold stale nonzero values, or -0.0, on purpose.
"""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refimpl import sparsity as S

shape_st = st.one_of(hnp.array_shapes(min_dims=2, max_dims=2, max_side=6),
                     hnp.array_shapes(min_dims=4, max_dims=4, max_side=3))
# Active values: small integers (ties); stale values: nonzero of either sign, or -0.0.
active_vals = st.integers(-3, 3).map(float)
stale_vals = st.sampled_from([-2.5, -1.0, -0.0, 0.5, 3.0, -1e-30, 1e30])


@st.composite
def stale_layer(draw):
    shape = draw(shape_st)
    m = draw(hnp.arrays(bool, shape))
    w_active = draw(hnp.arrays(np.float64, shape, elements=active_vals))
    w_stale = draw(hnp.arrays(np.float64, shape, elements=stale_vals))
    s = draw(hnp.arrays(np.float64, shape, elements=st.integers(-3, 3).map(float)))
    return np.where(m, w_active, w_stale), m, s


@given(st.lists(stale_layer(), min_size=1, max_size=3), st.floats(0.01, 1))
def test_grown_weights_are_positive_zero_on_unmasked_input(ls, alpha_t):
    """PG-7: θ[Q] = +0.0 exactly, θ ← θ ⊙ M_new, and kept weights keep their values, with
    stale nonzero values and -0.0 at the positions inactive before the adjustment."""
    ws, ms, ss = map(list, zip(*ls))
    before = [w.copy() for w in ws]
    new_w, new_m, rep = S.adjust(ws, ms, ss, alpha_t)
    for w, m, nw, nm, q in zip(ws, ms, new_w, new_m, rep.grown, strict=True):
        grown = nw.reshape(-1)[q]
        assert np.all(grown == 0) and not np.any(np.signbit(grown)), grown
        assert np.array_equal(nw, nw * nm)  # MASK-3 after prune-and-grow
        assert np.all(nw[~nm] == 0)
        keep = m & nm
        assert np.array_equal(nw[keep], w[keep])
    assert all(np.array_equal(a, b) for a, b in zip(ws, before, strict=True))  # inputs untouched


def test_grown_weight_is_zeroed_when_it_held_a_stale_value():
    """PG-7 by hand: the inactive position with the largest score held 5.0; after growing it
    the weight is +0.0, and the pruned position is 0."""
    w = np.array([[1.0, -0.25, 5.0, -0.0]])
    m = np.array([[True, True, False, False]])
    s = np.array([[0.0, 0.0, 2.0, 1.0]])
    nw, nm, rep = S.adjust([w], [m], [s], 0.5)
    assert rep.pruned[0].tolist() == [1] and rep.grown[0].tolist() == [2]
    assert nm[0].tolist() == [[True, False, True, False]]
    assert nw[0][0, 2] == 0 and not np.signbit(nw[0][0, 2])
    assert nw[0][0, 0] == 1.0 and nw[0][0, 1] == 0 and nw[0][0, 3] == 0
