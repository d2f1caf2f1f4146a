# covers: NSC-1, NSC-3
"""Compat N1 (docs/DEVIATIONS.md): NSConv stats mode ``authors`` reproduces the authors'
``WSConv2D`` (their active "method 2") on every case of ``nsconv_method2.npz``: Ŵ, y and the
gradients of x, W, gain and bias. Their statistics are NSC-1's; their mask is ``weight != 0``,
so an active weight that is exactly 0 is switched off in Ŵ, which the SPEC mode does not do."""

import numpy as np
import pytest

import refimpl
from refimpl import functional as F
from refimpl.core.tape import apply
from refimpl.ops import nsconv as N

from .authors_fixtures import cases, close, equal, load

FIXTURE = "nsconv_method2.npz"
Z = load(FIXTURE)
CASES = cases(Z)


def run(c: dict, stats: str):
    """Ŵ and (y, dx, dW, dgain, db) of nsconv2d on a case's inputs."""
    s, p, g = int(c["stride"]), int(c["padding"]), int(c["groups"])
    params = N.StandardizeParams.make(c["M"], c["W"], stats, 1e-4)
    what = apply(N.STANDARDIZE, (c["W"], c["gain"]), params)
    y, vjp = refimpl.vjp(lambda x, w, gn, b: F.nsconv2d(x, w, c["M"], gn, b, stride=s,
                                                          padding=p, groups=g, stats=stats),
                         c["x"], c["W"], c["gain"], c["bias"])
    return params, what, (y,) + vjp(c["ct"])


@pytest.mark.parametrize("name, c", CASES, ids=[n for n, _ in CASES])
def test_authors_stats_reproduce_wsconv2d(name, c):
    params, what, outs = run(c, "authors")
    equal(FIXTURE, f"{name} authors_mask", params.mask.mask, c["authors_mask"])
    assert np.array_equal(c["authors_mask"], c["W"] != 0)  # their mask is W != 0 (README §1)
    close(FIXTURE, f"{name} eps", c["W"].dtype.type(params.eps), c["eps"])
    close(FIXTURE, f"{name} What", what, c["What"])
    for key, ours in zip(("y", "dx", "dW", "dgain", "db"), outs):
        close(FIXTURE, f"{name} {key}", ours, c[key])


def test_the_departure_is_the_mask_only():
    """Where M = (W != 0) the SPEC mode `dense` (NSC-1) gives the same numbers; in `active_zero`
    (3 active entries exactly 0) it keeps them in Ŵ and differs from their code."""
    for name, c in CASES:
        _, what, outs = run(c, "dense")
        if name == "active_zero":
            assert not np.array_equal(c["M"], c["W"] != 0)
            assert np.max(np.abs(what - c["What"])) > 1e-3
            assert np.count_nonzero(what) == np.count_nonzero(c["M"])  # NSC-3: sparsity of M
        else:
            close(FIXTURE, f"{name} What (dense)", what, c["What"])
            close(FIXTURE, f"{name} dW (dense)", outs[2], c["dW"])
