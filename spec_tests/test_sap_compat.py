# covers: CACHE-1, CACHE-3, CACHE-4, MEM-2, SAP-2
"""The int32-index activation cache of the public code, as the compat cache policy ``int32``
(docs/DEVIATIONS.md): it round-trips bit for bit, holds exactly n_keep·(4 + itemsize) bytes, is
never chosen by ``auto``, and the ledger still equals the tape to the byte with it."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refimpl
from refimpl import functional as F
from refimpl import models
from refimpl import sap as S
from refimpl.memory import ledger

gammas = st.sampled_from(["0", "0.1", "0.5", "0.7", "0.9", "0.99"])
arrays = st.sampled_from([np.float32, np.float64]).flatmap(
    lambda d: hnp.arrays(d, hnp.array_shapes(min_dims=1, max_dims=4, max_side=6),
                         elements=st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.5, -3.0, 1e-3])))


@given(arrays, gammas)
def test_int32_round_trip_and_bytes(x, gamma):
    n_keep = S.keep_count(x.size, gamma)
    cache = S.encode(x, n_keep, "int32")
    assert cache.fmt == "int32" and cache.index.dtype == np.int32
    assert cache.nbytes == S.format_nbytes("int32", x.size, n_keep, x.itemsize)
    assert cache.nbytes == n_keep * (4 + x.itemsize)
    assert np.all(np.diff(cache.index.astype(np.int64)) > 0)
    ref = S.decode(S.encode(x, n_keep, "index"))  # the SPEC format keeps the same entries
    assert S.decode(cache).tobytes() == ref.tobytes()


@given(st.integers(1, 10**6), gammas, st.sampled_from([4, 8]))
def test_auto_never_picks_the_compat_format(numel, gamma, itemsize):
    n_keep = S.keep_count(numel, gamma)
    assert S.choose_format("auto", numel, n_keep, itemsize) in S.FORMATS
    assert S.choose_format("int32", numel, n_keep, itemsize) == "int32"


@pytest.mark.parametrize("name,norm", [("cnn", "nsconv"), ("resnet8", "bn")])
@pytest.mark.parametrize("gamma", ["0.5", "0.9"])
def test_ledger_equals_tape_with_the_int32_cache(name, norm, gamma):
    model = models.build(name, 1, 10, norm=norm, width=0.5, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((3, 1, 12, 12)).astype(np.float32)
    y = np.array([1, 2, 3])
    opts = models.RunOptions(sap=S.SapPolicy.make(gamma, "int32"))
    tape = refimpl.Tape()
    params = {k: tape.leaf(v) for k, v in model.params.items()}
    F.cross_entropy(models.forward(model, params, x, True, opts), y)
    led = ledger(model, (1, 12, 12), 3, gamma=gamma, policy="int32", norm=norm, width=0.5)
    assert tape.residual_nbytes() == led.totals["activation_cache"]
