# covers: PG-5, PG-6, NSC-3
"""Compat G1 (docs/DEVIATIONS.md) against ``grow_scores.npz``: the authors score growth on an
NSConv layer with ``weight.grad``, dL/dW through the standardisation, where PG-5 takes dL/dŴ.
``sparse.growth_score = "weight"`` pulls the effective-kernel gradient back through the
standardisation (:func:`refimpl.ops.nsconv.pullback`, used by the client); both it and the
gradient of the whole model reproduce their score, which is constant over each channel's
inactive positions, so growth takes whole channels (the chosen positions inside a channel are
tie-dependent, README §7)."""

import numpy as np
import pytest

import refimpl
from refimpl import functional as F
from refimpl.core.tape import apply
from refimpl.ops import nsconv as N
from refimpl.sparsity import k_largest

from .authors_fixtures import cases, close, equal, load, same_set_up_to_ties

FIXTURE = "grow_scores.npz"
Z = load(FIXTURE)
CASES = cases(Z)


def _head(h, c):
    return F.cross_entropy(F.linear(F.reshape(h, (h.shape[0], -1)), c["fc_W"], c["fc_b"]),
                           c["labels"])


def scores(c: dict):
    """(dL/dW of the whole model, the client's pullback of dL/dŴ, dL/dŴ itself)."""
    model_grad = refimpl.grad(lambda w: _head(F.nsconv2d(c["x"], w, c["M"], c["gain"], padding=1,
                                                         stats="authors"), c))(c["W"])
    p = N.StandardizeParams.make(c["M"], c["W"], "authors", 1e-4)
    what = apply(N.STANDARDIZE, (c["W"], c["gain"]), p)
    kernel_grad = refimpl.grad(lambda k: _head(F.conv2d(c["x"], k, padding=1), c))(what)
    return model_grad, N.pullback(c["W"], c["gain"], p, kernel_grad)[0], kernel_grad


@pytest.mark.parametrize("name, c", CASES, ids=[n for n, _ in CASES])
def test_weight_score_and_grown_channels(name, c):
    model_grad, pulled, kernel_grad = scores(c)
    close(FIXTURE, f"{name} score (model)", model_grad, c["score"])
    close(FIXTURE, f"{name} score (pullback)", pulled, c["score"])
    inactive = ~c["M"]
    for o in range(c["W"].shape[0]):
        vals = pulled[o][inactive[o]]
        close(FIXTURE, f"{name} channel {o} inactive value", vals,
              np.full(vals.shape, c["channel_inactive_value"][o]))
    equal(FIXTURE, f"{name} distinct per channel",
          [np.unique(model_grad[o][inactive[o]]).size for o in range(c["W"].shape[0])],
          c["channel_inactive_distinct"])
    flat = np.flatnonzero(inactive.reshape(-1))
    k = int(c["k"])
    ours = k_largest(flat, np.abs(pulled.reshape(-1)[flat]), k)
    same_set_up_to_ties(FIXTURE, f"{name} grown", ours, c["grown_idx"],
                        np.abs(c["score"]), largest=True)
    close(FIXTURE, f"{name} grown values", np.sort(pulled.reshape(-1)[ours]),
          np.sort(c["grown_val_order"]))
    assert np.array_equal(np.sort(c["grown_idx_order"]), c["grown_idx"])
    # PG-5's effective-kernel score differs per position: within channels it is not constant
    spread = [np.unique(kernel_grad[o][inactive[o]]).size for o in range(c["W"].shape[0])]
    assert max(spread) > 1
