# covers: CACHE-1, CACHE-2, CACHE-3, CACHE-4, SAP-2, CONV-3, CONV-4, CONV-6
"""The compressed activation cache: one battery run against every format (the dense array is the
oracle, scipy.sparse style), the selection against a sort-based definition, and every Numba
kernel against its NumPy twin and its interpreted loops."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refimpl import sap as S
from refimpl.core._jit import njit, popcount, trailing_zeros
from refimpl.kernels import cache as K

DTYPES = (np.float32, np.float64)


@st.composite
def tie_heavy_arrays(draw, max_size=300):
    """Arbitrary float arrays full of exact ties, zeros of both signs, subnormals and huge
    values (raw on purpose: invariant tests, STYLE 6). Returns (array, n_keep)."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=8).filter(
        lambda s: int(np.prod(s)) <= max_size))
    finfo = np.finfo(dtype)
    pool = st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, float(finfo.tiny),
                            -float(finfo.smallest_subnormal), float(finfo.max) / 2])
    elements = st.one_of(pool, st.floats(width=8 * np.dtype(dtype).itemsize, allow_nan=False,
                                         allow_infinity=False))
    x = draw(hnp.arrays(dtype, shape, elements=elements))
    k = draw(st.integers(0, x.size))
    return x, k


def sort_oracle(x: np.ndarray, k: int) -> np.ndarray:
    """CONV-4 by definition: order by (|x| descending, flat index ascending), take k."""
    a = np.abs(x.reshape(-1)).astype(np.float64)
    order = np.lexsort((np.arange(a.size), -a))  # last key is primary
    keep = np.zeros(a.size, dtype=bool)
    keep[order[:k]] = True
    return keep.reshape(x.shape)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


@given(tie_heavy_arrays())
def test_selection_is_the_conv4_order_for_every_impl(case):
    """SAP-2, CONV-4: the kept set is the k largest |x|, ties by lowest flat index, whatever the
    implementation (radix select, partition, interpreted loops)."""
    x, k = case
    expected = sort_oracle(x, k)
    for impl in K.IMPLS:
        np.testing.assert_array_equal(S.keep_mask(x, k, impl), expected, err_msg=impl)


@given(tie_heavy_arrays(), st.sampled_from(S.FORMATS))
def test_round_trip_is_bit_exact(case, fmt):
    """CACHE-3: decode(encode(x, keep)) == x·keep bit for bit: signed zeros and subnormals of
    kept entries survive, dropped entries are +0.0."""
    x, k = case
    keep = sort_oracle(x, k)
    expected = np.where(keep, x, x.dtype.type(0))
    for impl in K.IMPLS:
        cache = S.encode(x, k, fmt, impl)
        assert cache.fmt == fmt and cache.shape == x.shape and cache.n_keep == k
        out = S.decode(cache, impl)
        assert same_bits(out, expected), (impl, fmt)


@given(tie_heavy_arrays(), st.sampled_from(S.FORMATS))
def test_buffers_bytes_equal_formula(case, fmt):
    """CACHE-1, CACHE-4: exact buffer dtypes and sizes; bytes == sum of nbytes == formula;
    indices unique and ascending; values in ascending flat-index order."""
    x, k = case
    cache = S.encode(x, k, fmt)
    arrays = dict(cache.arrays())
    numel, s = x.size, x.dtype.itemsize
    assert cache.nbytes == sum(a.nbytes for a in arrays.values()) \
        == S.format_nbytes(fmt, numel, k, s)
    keep = sort_oracle(x, k).reshape(-1)
    if fmt == "dense":
        assert set(arrays) == {"dense"} and arrays["dense"].dtype == x.dtype
        return
    values = arrays["values"]
    assert values.dtype == x.dtype and values.shape == (k,)
    assert same_bits(values, x.reshape(-1)[keep])
    if fmt == "bitmap":
        bits = arrays["bits"]
        assert set(arrays) == {"bits", "values"}
        assert bits.dtype == np.uint8 and bits.shape == ((numel + 7) // 8,)
        np.testing.assert_array_equal(bits, np.packbits(keep, bitorder="little"))
    else:
        index = arrays["index"]
        assert set(arrays) == {"index", "values"}
        assert index.dtype == S.index_dtype(numel)
        assert np.all(np.diff(index.astype(np.int64)) > 0)  # unique and sorted
        np.testing.assert_array_equal(index, np.flatnonzero(keep))


@pytest.mark.parametrize("numel, expected", [(1, np.uint8), (256, np.uint8), (257, np.uint16),
                                             (65536, np.uint16), (65537, np.uint32),
                                             (2**32, np.uint32)])
def test_index_dtype_is_narrowest_holding_numel_minus_one(numel, expected):
    """CACHE-1: uint8 up to 256 entries, uint16 up to 65536, uint32 up to 2**32."""
    assert S.index_dtype(numel) == np.dtype(expected)


def test_index_beyond_uint32_is_a_clear_error():
    with pytest.raises(ValueError, match="uint32"):
        S.index_dtype(2**32 + 1)
    assert S.choose_format("auto", 2**32 + 1, 1, 4) == "bitmap"  # auto skips the index format


@given(st.integers(0, 10**7), st.data(), st.sampled_from([4, 8]))
def test_auto_is_the_smallest_with_dense_bitmap_index_ties(numel, data, itemsize):
    """CACHE-2: auto stores the smallest format, ties prefer dense then bitmap then index, so it
    is never larger than dense (SAP never costs more than no SAP)."""
    k = data.draw(st.integers(0, numel))
    sizes = {f: S.format_nbytes(f, numel, k, itemsize) for f in S.FORMATS}
    chosen = S.choose_format("auto", numel, k, itemsize)
    assert sizes[chosen] == min(sizes.values()) <= sizes["dense"]
    assert chosen == next(f for f in S.FORMATS if sizes[f] == min(sizes.values()))


def test_auto_tie_breaking_on_exact_ties():
    """CACHE-2 on exact ties between two formats: the earlier of dense, bitmap, index wins."""
    # numel 64 (uint8 index, w = 1), float32: bitmap 8 + 4k, index 5k -> equal at k = 8
    assert S.format_nbytes("bitmap", 64, 8, 4) == S.format_nbytes("index", 64, 8, 4) == 40
    assert S.choose_format("auto", 64, 8, 4) == "bitmap"
    # dense 4n vs bitmap n/8 + 4k: numel 8, k = 7 -> 32 vs 1 + 28 = 29; k = 8 -> 32 vs 33
    assert S.choose_format("auto", 8, 8, 4) == "dense"
    # dense == bitmap for float64, numel 64: 512 == 8 + 8k at k = 63 -> dense wins the tie
    assert S.format_nbytes("dense", 64, 63, 8) == S.format_nbytes("bitmap", 64, 63, 8)
    assert S.choose_format("auto", 64, 63, 8) == "dense"


@given(st.integers(0, 5000), st.sampled_from(["0", "0.1", "0.25", "0.5", "0.7", "0.9", "0.99",
                                              "0.333", "0.999999"]))
def test_keep_count_is_exact_rational(numel, gamma):
    """SAP-2, CONV-6: n_keep = numel − floor(γ·numel) with γ the decimal as written; at least
    one entry is kept whenever numel >= 1 (γ < 1); γ = 0 keeps everything."""
    from fractions import Fraction

    k = S.keep_count(numel, float(gamma))
    assert k == numel - (Fraction(gamma) * numel).__floor__()
    assert (k >= 1) == (numel >= 1)
    if gamma == "0":
        assert k == numel


def test_keep_count_rejects_bad_gamma():
    for bad in (1.0, -0.1, 1.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="gamma"):
            S.keep_count(10, bad)
    with pytest.raises(TypeError):
        S.keep_count(10, True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_rejected_with_its_position(dtype, bad):
    """SAP-2: NaN and inf have no rank; every implementation names the first bad entry."""
    x = np.arange(40, dtype=dtype).reshape(2, 4, 5)
    x[1, 2, 3] = bad
    for impl in K.IMPLS:
        with pytest.raises(ValueError, match="flat index 33"):
            S.encode(x, 10, "bitmap", impl)
    # nothing dropped: no ranking needed, the value is cached as is
    assert np.isnan(S.decode(S.encode(x, x.size, "index"))[1, 2, 3]) == np.isnan(bad)


@given(st.integers(1, 2000), st.integers(0, 2**31 - 1), st.sampled_from(DTYPES),
       st.sampled_from(["normal", "relu", "ints", "zeros", "scales"]))
def test_kernels_match_numpy_twins(numel, seed, dtype, kind):
    """STYLE 3: the jitted kernels, their interpreted loops and the NumPy twins agree exactly
    (keep mask, dense copy, compaction with and without index, decode)."""
    rng = np.random.default_rng(seed)
    x = {"normal": lambda: rng.standard_normal(numel),
         "relu": lambda: np.maximum(rng.standard_normal(numel), 0),
         "ints": lambda: rng.integers(-3, 4, numel).astype(float),
         "zeros": lambda: np.zeros(numel) * rng.choice([1.0, -1.0], numel),
         "scales": lambda: rng.standard_normal(numel) * 10.0 ** rng.integers(-30, 30, numel),
         }[kind]().astype(dtype)
    k = int(rng.integers(1, numel)) if numel > 1 else 1
    if k == numel:
        return  # keep_bits is for 1 <= k < numel; sap.select handles keep-all
    impls = ("np", "jit") + (("naive",) if numel <= 300 else ())
    bits = {impl: K.keep_bits(x, k, impl) for impl in impls}
    idt = S.index_dtype(numel)
    for impl in impls:
        np.testing.assert_array_equal(bits[impl], bits["np"], err_msg=impl)
        assert same_bits(K.masked_copy(x, bits["np"], k, impl), K.masked_copy(x, bits["np"], k,
                                                                                "np"))
        idx, vals = K.compact(x, bits["np"], k, idt, impl)
        idx0, vals0 = K.compact(x, bits["np"], k, idt, "np")
        np.testing.assert_array_equal(idx, idx0)
        assert same_bits(vals, vals0)
        assert K.compact(x, bits["np"], k, None, impl)[0] is None
        assert same_bits(K.decode_bitmap(bits["np"], vals0, numel, impl),
                         K.decode_bitmap(bits["np"], vals0, numel, "np"))
        assert same_bits(K.decode_index(idx0, vals0, numel, impl),
                         K.decode_index(idx0, vals0, numel, "np"))


@given(st.integers(32, 700), st.integers(0, 2**31 - 1), st.sampled_from(DTYPES),
       st.sampled_from(["normal", "relu", "ints", "zeros", "scales", "planted"]),
       st.sampled_from([1, 2, 4]))
def test_sampled_bracket_and_its_fallback_select_exactly(numel, seed, dtype, kind, sample):
    """The threshold's bracket comes from a strided sample when the tensor is large; with the
    sample size shrunk to a few entries the same arrays exercise it here: the mask is the
    partition twin's whatever the sample says, including data planted to fool it (every
    sampled entry tiny, so the bracket misses and the exact histogram takes over)."""
    rng = np.random.default_rng(seed)
    x = {"normal": lambda: rng.standard_normal(numel),
         "relu": lambda: np.maximum(rng.standard_normal(numel), 0),
         "ints": lambda: rng.integers(-3, 4, numel).astype(float),
         "zeros": lambda: np.zeros(numel) * rng.choice([1.0, -1.0], numel),
         "scales": lambda: rng.standard_normal(numel) * 10.0 ** rng.integers(-30, 30, numel),
         "planted": lambda: rng.standard_normal(numel) * 100.0,
         }[kind]().astype(dtype)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(K, "_SAMPLE", sample)
        if kind == "planted":
            x[::K._sample_step(numel)] *= 1e-6
        k = int(rng.integers(1, numel))
        expected = K.keep_bits(x, k, "np")
        for impl in ("jit", "naive"):
            np.testing.assert_array_equal(K.keep_bits(x, k, impl), expected, err_msg=impl)


def test_a_missed_bracket_falls_back_to_the_exact_histogram():
    """The planted case really misses (so the fallback above is exercised, not assumed)."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(1 << 17) * 100.0).astype(np.float32)
    x[::K._sample_step(x.size)] *= 1e-6
    hits = []
    real = K._bracketed

    def spy(*args):
        got = real(*args)
        hits.append(got[0] is not None)
        return got

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(K, "_bracketed", spy)
        bits = K.keep_bits(x, x.size // 10, "jit")
    assert hits == [False, True]
    np.testing.assert_array_equal(bits, K.keep_bits(x, x.size // 10, "np"))


def test_large_tensor_selection_matches_partition():
    """The radix select on a realistic activation (2**17 entries, half exact zeros after a
    ReLU) for several γ, float32 and float64: same mask as the partition twin."""
    rng = np.random.default_rng(7)
    for dtype in DTYPES:
        x = np.maximum(rng.standard_normal(1 << 17), 0).astype(dtype)
        for gamma in (0.3, 0.5, 0.7, 0.9, 0.99):
            k = S.keep_count(x.size, gamma)
            np.testing.assert_array_equal(K.keep_bits(x, k, "jit"), K.keep_bits(x, k, "np"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("subnormals", [False, True])
def test_threshold_in_the_lowest_bin(dtype, subnormals):
    """Both paths when t falls in the lowest histogram bin: only exact zeros of either sign (the
    ReLU case: every nonzero kept, then the first zeros, no candidate list) and zeros mixed
    with subnormals (candidates resolved digit by digit)."""
    rng = np.random.default_rng(11)
    x = np.maximum(rng.standard_normal(3000), 0).astype(dtype)
    x[::5] = -0.0
    if subnormals:
        x[1::9] = np.finfo(dtype).smallest_subnormal * rng.integers(1, 4, x[1::9].size)
    nonzero = int(np.count_nonzero(x))
    for k in (nonzero - 7, nonzero, nonzero + 1, nonzero + 250, x.size - 1):
        expected = sort_oracle(x, k)
        for impl in ("jit", "naive"):
            np.testing.assert_array_equal(S.keep_mask(x, k, impl), expected, err_msg=impl)


@pytest.mark.parametrize("impl", K.IMPLS)
def test_decode_rejects_malformed_buffers(impl):
    """A buffer that does not match its values or numel is an error, never a silent misread."""
    vals = np.ones(3, dtype=np.float32)
    with pytest.raises(ValueError, match="disagree"):
        K.decode_bitmap(np.array([0b0000_0011], dtype=np.uint8), vals, 8, impl)  # 2 bits set
    with pytest.raises(ValueError, match="disagree"):
        K.decode_bitmap(np.array([0b1000_0111], dtype=np.uint8), vals, 7, impl)  # bit 7 >= numel
    with pytest.raises(ValueError, match="bitmap bytes"):
        K.decode_bitmap(np.zeros(2, dtype=np.uint8), vals, 8, impl)
    with pytest.raises(ValueError, match="keep-mask bytes"):  # compact reads ceil(numel/8) bytes
        K.compact(np.ones(9, dtype=np.float32), np.array([7], dtype=np.uint8), 3, None, impl)
    with pytest.raises(ValueError, match="disagree"):  # a bit at or past numel
        K.compact(np.ones(7, dtype=np.float32), np.array([0b1000_0011], dtype=np.uint8), 3,
                  None, impl)
    with pytest.raises(ValueError, match="disagree"):
        K.decode_index(np.array([0, 2, 2], dtype=np.uint8), vals, 8, impl)  # not ascending
    with pytest.raises(ValueError, match="disagree"):
        K.decode_index(np.array([0, 2, 9], dtype=np.uint8), vals, 8, impl)  # outside
    with pytest.raises(ValueError, match="unsigned"):
        K.decode_index(np.array([0, 1, 2], dtype=np.int64), vals, 8, impl)


def test_unknown_format_policy_or_impl_lists_valid_ones():
    x = np.ones(4, dtype=np.float32)
    with pytest.raises(ValueError, match="dense, bitmap, index"):
        S.encode(x, 2, "csr")
    with pytest.raises(ValueError, match="auto"):
        S.choose_format("smallest", 4, 2, 4)
    with pytest.raises(ValueError, match="naive, np, jit"):
        S.encode(x, 2, "bitmap", impl="cuda")
    with pytest.raises(TypeError, match="float32 or float64"):
        S.encode(np.ones(4, dtype=np.int32), 2, "dense")


def test_dense_cache_with_nothing_dropped_is_the_input_itself():
    """No copy at γ = 0: the record holds x (so it costs exactly what no SAP costs)."""
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    cache = S.prune_and_encode(x, S.SapPolicy.make(0.0, "auto"))
    assert cache.fmt == "dense" and cache.dense is x


_WORDS = (np.uint8, np.uint16, np.uint32, np.uint64)


def _bit_ops(a, tz, pc):
    """Per word of ``a``: trailing zeros (−1 for a zero word, which the functions exclude) and
    popcount."""
    for i in range(a.shape[0]):
        if a[i] != 0:
            tz[i] = trailing_zeros(a[i])
        else:
            tz[i] = -1
        pc[i] = popcount(a[i])
    return tz


_bit_ops_jit = njit(_bit_ops)


@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=50), st.sampled_from(_WORDS))
def test_bit_word_functions_compiled_match_their_definition(values, word):
    """The compiled trailing_zeros and popcount (LLVM cttz, ctpop) that the cache kernels walk
    set bits with are their Python definitions, for every unsigned width."""
    bits = 8 * np.dtype(word).itemsize
    a = np.array([v % (1 << bits) for v in values] + [1, 1 << (bits - 1), (1 << bits) - 1],
                 dtype=word)
    expected_tz = [(int(v) & -int(v)).bit_length() - 1 if v else -1 for v in a]
    expected_pc = [bin(int(v)).count("1") for v in a]
    for f in (_bit_ops, _bit_ops_jit):
        tz, pc = np.empty(a.size, np.int64), np.empty(a.size, np.int64)
        f(a, tz, pc)
        assert tz.tolist() == expected_tz
        assert pc.tolist() == expected_pc


@given(st.integers(1, 3000), st.integers(0, 2**31 - 1), st.sampled_from(DTYPES),
       st.floats(0.0, 1.0))
def test_select_bits_every_split_and_tail(numel, seed, dtype, frac):
    """select_bits' three loops (>= before the byte that holds last + 1, > after it, both tests
    in that byte and in the tail byte) give |x| > t plus the ties at indices <= last, for
    every position of ``last`` (byte boundaries included) and every tail length."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, numel).astype(dtype)  # many ties
    view, abs_mask, _ = K._BITS[np.dtype(dtype).itemsize]
    u = x.view(view)
    a = u & abs_mask
    t = int(a[int(rng.integers(0, numel))])
    last = int(frac * (numel + 2)) - 1  # -1 .. numel
    idx = np.arange(numel)
    expected = np.packbits((a > t) | ((a == t) & (idx <= last)), bitorder="little")
    for impl in ("jit", "naive") if numel <= 400 else ("jit",):
        bits = np.full((numel + 7) // 8, 0xAB, dtype=np.uint8)
        kept = K._kernel("select_bits", impl)(u, abs_mask, t, last, bits)
        np.testing.assert_array_equal(bits, expected, err_msg=impl)
        assert kept == int(np.unpackbits(expected, bitorder="little").sum())
