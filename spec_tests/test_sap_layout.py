# covers: SAP-2, CONV-6, CACHE-2
"""The typed SAP policy (``SapPolicy``) remembers each tensor size's keep count and format: one
policy serves every layer of a run, so a wrong key in that memory gives one layer another
layer's count. Asked about many sizes and both dtypes in any order, with repeats, the policy
must answer what SAP-2 (n_keep = numel − floor(γ·numel), γ the exact rational of its decimal,
CONV-6) and CACHE-2 (the smallest format, ties dense > bitmap > index) say for that size, as
written here from the rules, and encode a tensor with that count and format.

The default keep rule of every entry point is SAP-2's exact count; the authors' float count
(compat S1, docs/DEVIATIONS.md) is used only when asked for.
"""

import math
from fractions import Fraction

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from refimpl import sap as S
from refimpl.fl.config import load_config

gammas = st.sampled_from(["0.03125", "0.1", "0.29", "0.5", "0.7", "0.9", "0.999"]) | \
    st.decimals(0, "0.999", places=3).map(str)
policies = st.sampled_from(["auto", "dense", "bitmap", "index"])
queries = st.lists(st.tuples(st.integers(1, 3000), st.sampled_from([4, 8])), min_size=2,
                   max_size=30)


def spec_layout(numel, itemsize, gamma, policy):
    """SAP-2 and CACHE-2 from the rules: (n_keep, format)."""
    k = numel - math.floor(Fraction(gamma) * numel)
    w = 1 if numel - 1 < 2**8 else 2 if numel - 1 < 2**16 else 4
    sizes = {"dense": numel * itemsize, "bitmap": (numel + 7) // 8 + k * itemsize,
             "index": k * (w + itemsize)}
    if policy != "auto":
        return k, policy
    best = min(sizes.values())
    return k, next(f for f in ("dense", "bitmap", "index") if sizes[f] == best)


@given(gammas, policies, queries)
def test_one_policy_answers_every_size_as_the_rules_say(gamma, policy, asked):
    """SAP-2, CONV-6, CACHE-2: one policy asked about sizes and itemsizes in any order (and
    again) gives each its own exact keep count and format."""
    pol = S.SapPolicy.make(gamma, policy)
    if pol is None:  # γ = 0 with the dense policy: no SAP at all
        assert Fraction(gamma) == 0 and policy == "dense"
        return
    for numel, itemsize in asked + asked[::-1]:
        assert pol.layout(numel, itemsize) == spec_layout(numel, itemsize, gamma, policy), \
            (numel, itemsize)


@given(gammas, st.lists(st.tuples(st.integers(1, 600), st.sampled_from([np.float32,
                                                                          np.float64])),
                        min_size=2, max_size=8), st.integers(0, 2**32 - 1))
def test_encoding_through_one_policy_keeps_each_tensors_count(gamma, tensors, seed):
    """SAP-2 through ``prune_and_encode``: tensors of different sizes and dtypes encoded with
    one auto policy keep exactly their own n_keep entries, in the format CACHE-2 gives them."""
    pol = S.SapPolicy(Fraction(gamma), "auto")
    rng = np.random.default_rng(seed)
    for numel, dtype in tensors:
        x = rng.standard_normal(numel).astype(dtype)
        cache = S.prune_and_encode(x, pol)
        k, fmt = spec_layout(numel, x.itemsize, gamma, "auto")
        assert (cache.n_keep, cache.fmt) == (k, fmt), (numel, dtype)
        assert np.count_nonzero(S.decode(cache)) == k


def test_the_policy_layout_by_hand():
    """CACHE-2 by hand: 64 entries, γ = 0.03125 drops 2 and keeps 62. In float32 the bitmap
    (8 + 62·4 = 256 bytes) ties with dense (64·4 = 256): dense. In float64 the bitmap
    (8 + 62·8 = 504) is smaller than dense (512): bitmap. Same policy, same size, two answers."""
    pol = S.SapPolicy.make("0.03125", "auto")
    assert pol.layout(64, 4) == (62, "dense")
    assert pol.layout(64, 8) == (62, "bitmap")
    assert pol.layout(64, 4) == (62, "dense")
    assert pol.layout(100, 4) == (97, "dense")  # floor(3.125) = 3 dropped


def test_default_keep_rule_is_the_exact_count_everywhere():
    """SAP-2: 10 entries at γ = 0.25 drop floor(2.5) = 2 and keep 8 (the authors' float count
    int(10·0.75) keeps 7) from the policy's own default, ``SapPolicy.make``'s default, the
    configuration's default and ``keep_count``'s default; only ``keep="authors"`` and the
    authors preset give 7."""
    assert S.SapPolicy(Fraction("0.25")).keep == "exact"
    assert S.SapPolicy(Fraction("0.25")).layout(10, 4)[0] == 8
    assert S.SapPolicy(Fraction("0.25"), "bitmap").keep_count(10) == 8
    assert S.SapPolicy.make(0.25).keep_count(10) == 8
    assert S.SapPolicy.make(0.25, "index").keep_count(10) == 8
    assert S.keep_count(10, 0.25) == 8
    cfg = load_config("smoke", sets=["sap.gamma=0.25"])
    assert cfg.sap.keep_count == "exact"
    assert cfg.sap_policy.keep_count(10) == 8
    assert S.SapPolicy.make(0.25, keep="authors").keep_count(10) == 7
    assert S.keep_count(10, 0.25, "authors") == 7
    assert load_config("authors").sap.keep_count == "authors"
