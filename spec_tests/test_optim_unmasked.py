# covers: MASK-3, LT-3, LT-1
"""MASK-3 after every optimizer step, whatever the caller hands in.

The rule promises W == W ⊙ M after *every* step. Every caller in the engine already hands SGD
masked weights and gradients, so a step that forgot to re-mask would pass every test built on
them. Here the weights hold stale nonzero values at masked positions and the gradients are
dense: after each step the weights equal W ⊙ M exactly, the momentum state is 0 off the mask,
and the active positions follow LT-1's update with the gradient and decay taken on the mask.
"""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refimpl.core.optim import SGD

shapes = hnp.array_shapes(min_dims=1, max_dims=4, max_side=4)
RTOL = {np.float32: 1e-5, np.float64: 1e-12}  # same update, possibly another operation order


@given(shapes, st.sampled_from([0.0, 0.5, 0.9]) | st.floats(0, 0.99),
       st.sampled_from([0.0, 1e-2]) | st.floats(0, 0.1), st.integers(1, 6),
       st.sampled_from([np.float32, np.float64]), st.sampled_from([bool, "float"]),
       st.integers(0, 2**32 - 1))
def test_every_step_remasks_unmasked_weights_and_gradients(shape, momentum, wd, steps, dtype,
                                                            mask_kind, seed):
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < 0.5
    m = mask if mask_kind is bool else mask.astype(dtype)
    w = (rng.standard_normal(shape) * 3).astype(dtype)  # NOT premasked: stale values off M
    bias = rng.standard_normal(3).astype(dtype)  # a dense parameter beside it
    params = {"w": w, "b": bias}
    opt = SGD(0.1, momentum=momentum, weight_decay=wd)
    lr, mom, decay = dtype(0.1), dtype(momentum), dtype(wd)
    ref_w, ref_buf = w.copy(), None
    for _ in range(steps):
        g = (rng.standard_normal(shape) * 10).astype(dtype)  # dense: nonzero off M too
        gb = rng.standard_normal(3).astype(dtype)
        b_before = params["b"].copy()
        opt.step(params, {"w": g, "b": gb}, masks={"w": m})
        out = params["w"]
        assert out.dtype == dtype
        assert np.array_equal(out, out * m)  # MASK-3, exactly
        assert np.all(out[~mask] == 0)
        if momentum:
            assert np.all(opt.state["w"][~mask] == 0)
        # LT-1 on the active positions: d = (g + wd·W) ⊙ M, buf = mom·buf + d, W −= lr·buf
        d = (g + decay * ref_w) * mask
        ref_buf = d if (ref_buf is None or not momentum) else (mom * ref_buf) * mask + d
        ref_w = (ref_w - lr * ref_buf) * mask
        np.testing.assert_allclose(out[mask], ref_w[mask], rtol=RTOL[dtype],
                                   atol=RTOL[dtype] * float(np.max(np.abs(ref_w), initial=1)))
        if not momentum:  # the dense parameter: the plain rule, no mask involved
            db = gb + decay * b_before
            np.testing.assert_allclose(params["b"], b_before - lr * db, rtol=RTOL[dtype])


def test_one_plain_step_on_stale_weights_by_hand():
    """MASK-3 by hand: plain SGD, a stale 7.0 and a dense gradient at the masked position."""
    params = {"w": np.array([1.0, 7.0, -2.0])}
    SGD(0.5).step(params, {"w": np.array([2.0, 4.0, -2.0])},
                  masks={"w": np.array([True, False, True])})
    assert params["w"].tolist() == [0.0, 0.0, -1.0]
