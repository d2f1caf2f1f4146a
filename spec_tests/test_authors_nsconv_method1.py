# covers: NSC-2, NSC-3
"""Compat N2 (docs/DEVIATIONS.md): NSConv stats mode ``authors_method1`` reproduces the authors'
commented-out "method 1" on every case of ``nsconv_method1.npz``, NaN included: mean and
variance over the nonzero entries, divisor nnz − 1 unguarded, but the scale with fan_in, not
nnz as NSC-2 (``masked``) has it, and the mean's gradient reaching every entry of W."""

import numpy as np
import pytest

import refimpl
from refimpl import functional as F
from refimpl.core.tape import apply
from refimpl.ops import nsconv as N

from .authors_fixtures import cases, close, equal, load

FIXTURE = "nsconv_method1.npz"
Z = load(FIXTURE)
CASES = cases(Z)


def run(c: dict, stats: str):
    s, p, g = int(c["stride"]), int(c["padding"]), int(c["groups"])
    params = N.StandardizeParams.make(c["M"], c["W"], stats, 1e-4)
    what = apply(N.STANDARDIZE, (c["W"], c["gain"]), params)
    y, vjp = refimpl.vjp(lambda x, w, gn, b: F.nsconv2d(x, w, c["M"], gn, b, stride=s,
                                                          padding=p, groups=g, stats=stats),
                         c["x"], c["W"], c["gain"], c["bias"])
    return params, what, (y,) + vjp(c["ct"])


@pytest.mark.parametrize("name, c", CASES, ids=[n for n, _ in CASES])
def test_authors_method1_reproduces_their_method1(name, c):
    assert int(Z["method"]) == 1
    params, what, outs = run(c, "authors_method1")
    equal(FIXTURE, f"{name} authors_mask", params.mask.mask, c["authors_mask"])
    close(FIXTURE, f"{name} What", what, c["What"])
    for key, ours in zip(("y", "dx", "dW", "dgain", "db"), outs):
        close(FIXTURE, f"{name} {key}", ours, c[key])


def test_one_active_entry_gives_nan_as_theirs():
    """A channel with exactly one active entry divides 0 by nnz − 1 = 0: NaN in that channel's
    output and in all of dx (close() above already matched the positions)."""
    c = dict(CASES)["nnz1_channel_nan"]
    _, _, (y, dx, *_) = run(c, "authors_method1")
    assert np.isnan(y[:, 1]).all() and not np.isnan(np.delete(y, 1, axis=1)).any()
    assert np.isnan(dx).all()


def test_method1_is_nsc2_rescaled_by_sqrt_nnz_over_fan_in():
    """Versus NSC-2 (`masked`): where no entry is clamped, Ŵ_theirs = Ŵ_NSC-2 · sqrt(nnz/fan_in)
    per channel; so `masked` is not their method 1 and the compat mode is needed."""
    for name, c in CASES:
        if not name.startswith(("d0.", "f32_d0.")):
            continue
        m = c["W"] != 0
        _, what_nsc2, _ = run(c, "masked")
        nnz = m.reshape(m.shape[0], -1).sum(axis=1)
        factor = np.sqrt(nnz / m[0].size).astype(c["W"].dtype).reshape(-1, 1, 1, 1)
        close(FIXTURE, f"{name} What = NSC-2·sqrt(nnz/fan_in)", what_nsc2 * factor, c["What"])
        assert np.max(np.abs(what_nsc2 - c["What"])) > 1e-2
