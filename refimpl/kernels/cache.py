"""Selection, encode and decode kernels of the compressed activation cache (SPEC SAP-2, CONV-4,
CACHE-1, CACHE-3).

Pipeline. ``keep_bits`` turns a flat input x (numel,) and a count k into the packed *keep
mask* of the k largest |x|, ties by ascending flat index (CONV-4): uint8 (ceil(numel/8),), bit
(i % 8) of byte i // 8 set when entry i is kept (little bit order, unused high bits 0). That
mask is the bitmap format's first buffer; the formats are then single passes over it:

    dense   masked_copy: x̂ (numel,) = x where kept, +0.0 elsewhere
    bitmap  the mask + compact: values (k,) = kept entries in ascending i
    index   compact with index: index (k,) uint8/16/32 ascending + values (k,)

compact and the bitmap decode count the mask's bits first (popcount), then walk the set bits
of each 64-entry word lowest first (``trailing_zeros``, ``m &= m - 1``): their cost follows
the kept entries, not numel (:func:`refimpl.core._jit.trailing_zeros`, C's
``__builtin_ctzll``).

Selection in linear time, without sorting:

- ``jit`` / ``naive``: a radix select on the IEEE-754 bits. With the sign bit cleared, a finite
  float's bit pattern read as a signed integer orders exactly like |x|, and NaN/inf patterns are
  >= the pattern of inf (so the same passes reject them). The threshold t (the k-th largest
  pattern) is found in a bracket [lo, hi] of patterns: one branch-free pass counts the entries
  above hi and the exact zeros and flags the nonzero entries inside (the candidates), a second
  gathers the flagged indices (64 flags packed into one word whose set bits it walks with
  ``trailing_zeros``), and t is resolved on the
  candidates only, 11 bits per round, with how many entries equal to t are kept (the lowest
  indices: ``last`` is the index of the last kept one). When the bracket reaches down to 0 and t
  is 0 (a ReLU output at γ below its zero fraction), every nonzero entry is kept plus the first
  zeros. The bracket comes from a sample when the tensor is large (>= 4·16384 entries): the
  top-14-bit histogram of every s-th entry (s a prime >= 11, so coprime with the tensor's
  sizes; about 16384 entries) gives the bins that hold the threshold's rank with a margin of
  four standard deviations; when the counts show
  that t is not inside (data the sample does not represent), the exact top-11-bit histogram of
  every entry gives the bin instead. Either way the kept set is exact. The keep mask comes out
  of the same passes: the scan also flags the entries above hi (all kept), the gather packs
  those flags into the mask, and the resolve sets the kept candidates' bits. Only when t = 0
  does a last pass over x write it (|x| >= t up to ``last``, |x| > t after it). Scratch: numel
  bytes of flags, 8 bytes per candidate and a 128 KiB (sample) or 16 KiB histogram.
- ``np``: ``np.partition`` for t, then |x| > t plus the first ties from ``flatnonzero``.

Every kernel is a plain loop function (the C-shaped oracle, run interpreted as ``naive``)
compiled by :func:`refimpl.core._jit.njit` (``jit``); the vectorised NumPy twin (``np``) is the
independent oracle. Loops are sequential: a kept value's output position is a prefix count,
and each pass is memory-bound. Values are copied, never computed on (the dense copy and the
bitmap decode move the bit patterns through integer views), so -0.0 survives (CACHE-3).
Kernels return a count (or a negative code on inconsistent buffers) that the wrappers check;
the byte layout for C readers is in docs/cache_format.md.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from ..core._jit import JIT_ENABLED, njit, popcount, trailing_zeros
from . import pick, rebind

__all__ = ["IMPLS", "keep_bits", "unpack", "masked_copy", "compact", "decode_bitmap",
           "decode_index"]

IMPLS = ("naive", "np", "jit")
_DIGIT = 11  # bits of a radix digit: 2048 int64 counters (16 KiB) stay in L1
_SAMPLE = 16384  # at most about this many entries, at a prime stride, bracket the threshold
_SAMPLE_DIGIT = 14  # the sample's histogram: finer bins, a narrower bracket
_SCAN_BLOCK = 1 << 30  # entries per block of the scan's int32 counts (no overflow)
#: Per float width: (integer view, |x| bit mask, bit pattern of +inf).
_BITS = {4: (np.int32, 0x7FFFFFFF, 0x7F800000),
         8: (np.int64, 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000)}


# ---- plain loop functions (the oracle; the jit kernels are these compiled) --------------------
# Arithmetic on the |x| patterns stays in the view's integer width (u.dtype.type): widening an
# int32 pattern to int64 measured 2x slower in every pass. Numba types an operation on two int32
# values as int64, so a loop that must stay narrow casts every result back (_scan_naive).
def _histogram_naive(u, abs_mask, shift, hist):
    """hist[d] = #{i : (|u_i| >> shift) == d}: the top digit of the |x| patterns (u: int32/int64
    view of x, any stride; hist: int64 (2**digit,), overwritten). Returns the largest |x|
    pattern (>= the inf pattern iff some entry is NaN or inf)."""
    for b in range(hist.shape[0]):
        hist[b] = 0
    mask = u.dtype.type(abs_mask)
    top = u.dtype.type(0)
    for i in range(u.shape[0]):
        a = u[i] & mask
        top = max(top, a)
        hist[a >> shift] += 1
    return np.int64(top)


def _find_bin_naive(hist, k, start):
    """The bin holding the k-th largest: scanning down from bin ``start`` (at or above the
    highest non-empty one), the first bin where the running count reaches k. Returns (bin, how
    many of its entries are still to keep)."""
    need = k
    b = start
    while b > 0 and hist[b] < need:
        need -= hist[b]
        b -= 1
    return b, need


def _scan_naive(u, abs_mask, lo, hi, flags):
    """One pass, no branch: flags[i] = 1 for the NONZERO entries with |x| pattern in [lo, hi]
    (the candidates), 2 for the entries above hi (all kept), else 0. Returns (entries above hi,
    exact zeros, candidates, the largest |x| pattern). Every value is cast back to its narrow
    type (Numba computes on int32 in int64, which halves a vector's lanes): the counts are int32
    within blocks of _SCAN_BLOCK entries, summed in int64 (reference layer: 54 -> 24 µs; 32 µs
    with the flag of the entries above, which saves a pass: docs/decisions.md)."""
    mask = u.dtype.type(abs_mask)
    lo_ = u.dtype.type(lo)
    hi_ = u.dtype.type(hi)
    top = u.dtype.type(0)
    above = 0
    zeros = 0
    m = 0
    n = u.shape[0]
    for b0 in range(0, n, _SCAN_BLOCK):
        ub = u[b0:b0 + _SCAN_BLOCK]  # indexed from 0 (as in _select_bits_naive)
        fb = flags[b0:b0 + _SCAN_BLOCK]
        above_b = np.int32(0)
        zeros_b = np.int32(0)
        m_b = np.int32(0)
        for i in range(ub.shape[0]):
            a = u.dtype.type(ub[i] & mask)
            top = u.dtype.type(max(top, a))
            abv = np.int32(a > hi_)
            above_b = np.int32(above_b + abv)
            zeros_b = np.int32(zeros_b + np.int32(a == 0))
            f = np.int32((a >= lo_) & (a <= hi_) & (a != 0))
            m_b = np.int32(m_b + f)
            fb[i] = np.uint8(np.int32(f + np.int32(abv + abv)))
        above += np.int64(above_b)
        zeros += np.int64(zeros_b)
        m += np.int64(m_b)
    return above, zeros, m, np.int64(top)


def _gather_naive(flags, words, cand, bits):
    """cand (m,) = the candidates' indices (flag bit 0, :func:`_scan_naive`), ascending; and
    the keep mask ``bits`` (ceil(numel/8),) of the entries above the bracket (flag bit 1), every
    byte written, the candidates' bits 0 (:func:`_resolve_naive` sets the kept ones). So no
    further pass over x writes the mask (it took 34 µs of the reference layer's select). ``words``
    views the flags 8 bytes at a time as little-endian uint64 (byte q of word w is
    flags[8w + q]). One multiply packs one bit of a word's eight bytes into its top byte (the
    product wraps modulo 2**64, as C's unsigned arithmetic; three shifts and ors cost 4 µs
    more): for the candidates, eight words make one 64-entry mask whose set bits are walked with
    trailing_zeros, so the pass costs per 64 entries plus per candidate, with one unpredictable
    branch per mask (testing every word for zero, as before, took 30 against 16 µs on the
    reference layer); for the kept entries, each word gives one byte of the mask. Returns how
    many candidates it found (cand's length when they agree)."""
    cap = cand.shape[0]
    one = np.uint64(1)
    ones = np.uint64(0x0101010101010101)  # bit 0 of every byte
    pack = np.uint64(0x0102040810204080)  # (bit 0 of byte q) * pack: bit 56 + q, no carries
    s56 = np.uint64(56)
    c = 0
    g = 0
    while g + 8 <= words.shape[0]:
        m = np.uint64(0)
        for j in range(8):
            w = words[g + j]
            bits[g + j] = np.uint8((((w >> one) & ones) * pack) >> s56)  # the entries above
            m |= (((w & ones) * pack) >> s56) << np.uint64(8 * j)  # the candidates
        base = 8 * g
        while m != 0:
            if c < cap:
                cand[c] = base + trailing_zeros(m)
            c += 1
            m &= m - one
        g += 8
    for b in range(g, bits.shape[0]):
        bits[b] = 0
    for i in range(8 * g, flags.shape[0]):
        f = flags[i]
        if f & 1:
            if c < cap:
                cand[c] = i
            c += 1
        bits[i // 8] |= np.uint8((f >> 1) << (i % 8))
    return c


def _resolve_naive(u, abs_mask, shift, prefix, need, cand, hist, bits):
    """t, the ``need``-th largest pattern among the candidates cand (m,), which all share the
    pattern bits above bit ``shift`` (given as ``prefix``): one digit of up to 11 bits per
    round, from the top of the remaining bits down, each round over the candidates still tied
    with t (their patterns gathered once into a contiguous list). Then sets the bits of the
    kept candidates in the keep mask ``bits`` (|x| > t, and the first ``need`` ties by
    ascending index). Returns (t, the index of the last entry equal to t that is kept, how many
    candidates it kept), or (−1, −1, −1) on inconsistent arguments."""
    m = cand.shape[0]
    if need < 1 or need > m or hist.shape[0] < 2048:
        return np.int64(-1), np.int64(-1), np.int64(-1)
    pat = np.empty(m, dtype=np.int64)
    for j in range(m):
        pat[j] = np.int64(u[cand[j]]) & abs_mask
    work = pat.copy()
    live = m
    while shift > 0:
        width = min(11, shift)
        shift -= width
        digit = (np.int64(1) << width) - 1
        for b in range(digit + 1):
            hist[b] = 0
        for j in range(live):
            hist[(work[j] >> shift) & digit] += 1
        d_t = digit  # the bin of the need-th largest (as _find_bin_naive)
        while d_t > 0 and hist[d_t] < need:
            need -= hist[d_t]
            d_t -= 1
        c = 0
        for j in range(live):
            a = work[j]
            work[c] = a
            c += ((a >> shift) & digit) == d_t
        live = c
        prefix = (prefix << width) | d_t
    last = np.int64(-1)
    kept = np.int64(0)
    three, seven = np.uint64(3), np.uint64(7)
    for j in range(m):  # prefix is now the full pattern of t; ``need`` ties are kept
        keep = np.int64(pat[j] > prefix)
        if need > 0 and pat[j] == prefix:
            need -= 1
            last = cand[j]
            keep = np.int64(1)
        i = np.uint64(cand[j])  # unsigned: no floor-division fix-ups
        bits[i >> three] |= np.uint8(np.uint64(keep) << (i & seven))  # no branch: half are kept
        kept += keep
    return prefix, last, kept


def _nth_zero_naive(u, abs_mask, r):
    """The index of the r-th exact zero (r >= 1) by ascending index, or −1 when there are
    fewer."""
    mask = u.dtype.type(abs_mask)
    for i in range(u.shape[0]):
        if u[i] & mask == 0:
            r -= 1
            if r == 0:
                return i
    return -1


def _select_bits_naive(u, abs_mask, t, last, bits):
    """The keep mask (packed, little bit order) of {|x| > t} plus the entries equal to t up to
    index ``last``: so |x| >= t up to ``last`` and |x| > t after it, two comparisons a loop
    can make without a branch. The bytes before the one that holds ``last + 1`` compare >=,
    the full bytes after it >, and that byte and the tail byte test both. Returns the kept
    count."""
    n = u.shape[0]
    mask = u.dtype.type(abs_mask)
    t_ = u.dtype.type(t)
    split = min(max(last + 1, 0), n)  # entries [0, split) compare >=, the rest >
    kept = 0
    # direct indexing (a slice per byte measured 1.5x slower here: 80 against 53 us for the
    # reference layer's 131,072 entries); the byte is built in int32 (cast back after every
    # operation, as in _scan_naive) and counted by popcount: 40 -> 32 µs
    for b in range(split // 8):
        base = 8 * b
        byte = np.int32(0)
        for q in range(8):
            keep = np.int32(u.dtype.type(u[base + q] & mask) >= t_)
            byte = np.int32(byte | np.int32(keep << q))
        bits[b] = np.uint8(byte)
        kept += popcount(np.uint8(byte))
    b0 = split // 8 + 1
    hi = u[8 * b0:]  # indexed from 0 (an offset index keeps a wraparound branch per read)
    hi_bits = bits[b0:]
    for b in range(n // 8 - b0):
        base = 8 * b
        byte = np.int32(0)
        for q in range(8):
            keep = np.int32(u.dtype.type(hi[base + q] & mask) > t_)
            byte = np.int32(byte | np.int32(keep << q))
        hi_bits[b] = np.uint8(byte)
        kept += popcount(np.uint8(byte))
    for which in range(2):  # the byte holding ``split``, then the tail byte (if another)
        b = split // 8 if which == 0 else n // 8
        if b >= (n + 7) // 8 or (which == 1 and b == split // 8):
            continue
        base = 8 * b
        byte = 0
        for q in range(min(8, n - base)):
            a = u[base + q] & mask
            keep = np.int64((a > t_) | ((a == t_) & (base + q < split)))
            byte |= keep << q
            kept += keep
        bits[b] = byte
    return kept


def _masked_copy_naive(x, bits, zero, out):
    """Dense x̂: out[i] = x[i] where bit i is set, else +0.0. x and out are the integer views
    of the floats (the bit patterns), so "x or +0.0" is x & −bit: no branch and no float
    select (LLVM turns a select on random bits back into a branch: measured 3x slower).
    ``zero`` (the view type's 0) is unused here; the twins share one signature. Returns the
    kept count."""
    n = x.shape[0]
    kept = 0
    for b in range(n // 8):  # full bytes (fixed trip count: LLVM unrolls), then the tail
        byte = np.int64(bits[b])
        base = 8 * b
        for q in range(8):  # (here direct indexing measured 5x faster than a pre-taken slice)
            bit = (byte >> q) & 1
            out[base + q] = x[base + q] & -bit
            kept += bit
    base = 8 * (n // 8)
    if base < n:
        byte = np.int64(bits[n // 8])
        for q in range(n - base):
            bit = (byte >> q) & 1
            out[base + q] = x[base + q] & -bit
            kept += bit
    return kept


def _count_bits_naive(bits, n):
    """The set bits of a keep mask among its first n entries, or −1 when a bit at or beyond n is
    set in its last byte."""
    total = 0
    for b in range(n // 8):
        total += popcount(bits[b])
    if n % 8 != 0:
        tail = bits[n // 8]
        if tail >> (n % 8) != 0:
            return -1
        total += popcount(tail)
    return total


def _compact_naive(x, bits, index, values, with_index):
    """values (k,) = x at the set bits in ascending order; index (k,) their flat positions when
    ``with_index``. Returns k, or −1 when the bits set more or fewer than k positions (or a bit
    past numel). The bits are counted first, so no write passes the end of values; then the set
    bits of each 64-entry word are walked lowest first (trailing_zeros, m &= m − 1), so the pass
    costs per kept entry, not per entry: on the reference layer 36 against 90 µs at 30% kept,
    57 against 90 at 50% (the branch-free walk over every entry that it replaces)."""
    n = x.shape[0]
    k = values.shape[0]
    if _count_bits(bits, n) != k:
        return -1
    one = np.uint64(1)
    j = 0
    for w in range(n // 64):
        m = np.uint64(0)
        for q in range(8):  # the word from its 8 bytes (little bit order, any byte order)
            m |= np.uint64(bits[8 * w + q]) << np.uint64(8 * q)
        base = 64 * w
        if with_index:  # two loops: a test of with_index per entry cost a third more
            while m != 0:
                i = base + trailing_zeros(m)
                values[j] = x[i]
                index[j] = i
                j += 1
                m &= m - one
        else:
            while m != 0:
                values[j] = x[base + trailing_zeros(m)]
                j += 1
                m &= m - one
    for i in range(64 * (n // 64), n):
        if (bits[i // 8] >> (i % 8)) & 1:
            values[j] = x[i]
            if with_index:
                index[j] = i
            j += 1
    return j


def _decode_bitmap_naive(bits, values, zero, out):
    """out (numel,): values scattered, in ascending order, to the set bits; +0.0 elsewhere.
    values and out are the integer views of the floats (bit patterns move unchanged, CACHE-3);
    ``zero`` is the view type's 0. Returns the number of set bits, or −1 when it is not
    values.shape[0] or a bit beyond numel is set. The bits are counted first, out is zeroed,
    then the set bits are walked word by word as in :func:`_compact_naive`."""
    n = out.shape[0]
    k = values.shape[0]
    if _count_bits(bits, n) != k:
        return -1
    for i in range(n):
        out[i] = zero
    one = np.uint64(1)
    j = 0
    for w in range(n // 64):
        m = np.uint64(0)
        for q in range(8):
            m |= np.uint64(bits[8 * w + q]) << np.uint64(8 * q)
        base = 64 * w
        while m != 0:
            out[base + trailing_zeros(m)] = values[j]
            j += 1
            m &= m - one
    for i in range(64 * (n // 64), n):
        if (bits[i // 8] >> (i % 8)) & 1:
            out[i] = values[j]
            j += 1
    return j


def _decode_index_naive(index, values, zero, out):
    """out (numel,) = +0.0, then out[index[j]] = values[j]. Returns k, or -1 when an index is
    outside out or the indices are not strictly ascending."""
    n = out.shape[0]
    for i in range(n):
        out[i] = zero
    prev = np.int64(-1)
    for j in range(index.shape[0]):
        i = np.int64(index[j])
        if i <= prev or i >= n:
            return -1
        out[i] = values[j]
        prev = i
    return index.shape[0]



# ---- NumPy twins (vectorised oracle) ----------------------------------------------------------
def _keep_bits_np(x, k):
    """Partition for t (linear time, no sort), then |x| > t plus the first ties. Returns
    (bits, kept count) or (None, −1 − i) for a first non-finite entry i."""
    a = np.abs(x)
    finite = np.isfinite(a)
    if not finite.all():
        return None, -1 - int(np.argmin(finite))
    kth = x.shape[0] - k
    t = np.partition(a, kth)[kth]
    keep = a > t
    need = k - int(np.count_nonzero(keep))
    keep[np.flatnonzero(a == t)[:need]] = True
    return np.packbits(keep, bitorder="little"), int(keep.sum())


def unpack(bits, numel):
    """The keep mask as bool (numel,)."""
    return np.unpackbits(bits, count=numel, bitorder="little").astype(bool)


def _masked_copy_np(x, bits, zero, out):
    keep = unpack(bits, x.shape[0])
    out[...] = 0
    out[keep] = x[keep]
    return int(keep.sum())


def _compact_np(x, bits, index, values, with_index):
    keep = unpack(bits, x.shape[0])
    if int(keep.sum()) != values.shape[0]:
        return -1
    values[...] = x[keep]
    if with_index:
        index[...] = np.flatnonzero(keep)
    return values.shape[0]


def _decode_bitmap_np(bits, values, zero, out):
    n = out.shape[0]
    full = np.unpackbits(bits, bitorder="little").astype(bool)
    keep = full[:n]
    if full[n:].any() or int(keep.sum()) != values.shape[0]:
        return -1
    out[...] = 0
    out[keep] = values
    return values.shape[0]


def _decode_index_np(index, values, zero, out):
    idx = index.astype(np.int64)
    if idx.size and (np.any(np.diff(idx) <= 0) or idx[-1] >= out.shape[0]):
        return -1
    out[...] = 0
    out[idx] = values
    return values.shape[0]


_count_bits = njit(_count_bits_naive)  # what the compiled kernels call


def _wrapping(f):
    """``f`` run with NumPy's overflow warning off: its uint64 products wrap by design (C's
    unsigned arithmetic; the compiled build does not warn)."""
    def run(*args):
        with np.errstate(over="ignore"):
            return f(*args)
    run.__name__, run.__doc__ = f.__name__, f.__doc__
    return run


def _interpreted(f):
    """``f`` calling the loop function of :func:`_count_bits_naive` (no compiled code)."""
    return rebind(f, _count_bits=_count_bits_naive)


# ---- dispatch (refimpl.kernels.pick) ----------------------------------------------------------
_KERNELS = {
    "histogram": {"naive": _histogram_naive, "jit": njit(_histogram_naive)},
    "find_bin": {"naive": _find_bin_naive, "jit": njit(_find_bin_naive)},
    "scan": {"naive": _scan_naive, "jit": njit(_scan_naive)},
    "gather": {"naive": _wrapping(_gather_naive),
               "jit": njit(_gather_naive) if JIT_ENABLED else _wrapping(_gather_naive)},
    "resolve": {"naive": _resolve_naive, "jit": njit(_resolve_naive)},
    "nth_zero": {"naive": _nth_zero_naive, "jit": njit(_nth_zero_naive)},
    "select_bits": {"naive": _select_bits_naive, "jit": njit(_select_bits_naive)},
    "count_bits": {"naive": _count_bits_naive, "jit": _count_bits},
    "masked_copy": {"naive": _masked_copy_naive, "np": _masked_copy_np,
                    "jit": njit(_masked_copy_naive)},
    "compact": {"naive": _interpreted(_compact_naive), "np": _compact_np,
                "jit": njit(_compact_naive)},
    "decode_bitmap": {"naive": _interpreted(_decode_bitmap_naive), "np": _decode_bitmap_np,
                      "jit": njit(_decode_bitmap_naive)},
    "decode_index": {"naive": _decode_index_naive, "np": _decode_index_np,
                     "jit": njit(_decode_index_naive)},
}


def _kernel(name: str, impl: str):
    return pick("cache kernels", _KERNELS, name, impl)


def _check(name: str, got: int, expected: int) -> None:
    if got != expected:
        raise ValueError(
            f"{name}: the keep mask and the buffers disagree (expected {expected} kept entries, "
            f"the kernel found {got if got >= 0 else 'a malformed buffer'}); decode a cache with "
            f"the bitmap or index, values and numel it was encoded with"
        )


def _bracketed(u, abs_mask, k, lo, hi, shift, prefix, hist, impl, bits):
    """The threshold when it lies in [lo, hi]: (t, last, kept) (see :func:`_resolve_naive`),
    None when it does not (a sample's bracket can miss), and the largest |x| pattern. Above hi
    lie ``above`` entries, inside it m nonzero candidates, and with lo = 0 every other entry is
    an exact zero. When t is among the candidates the gather and resolve have written the keep
    mask into ``bits`` and ``kept`` is the count they meant to keep (``keep_bits`` counts the
    mask's bits against k); when t = 0 ``kept`` is None (the mask is still to be written)."""
    n = u.shape[0]
    flags = np.empty(n, dtype=np.uint8)
    above, zeros, m, top = _kernel("scan", impl)(u, abs_mask, lo, hi, flags)
    if above >= k:
        return None, top
    if k <= above + m:
        cand = np.empty(m, dtype=np.int64)
        words = flags[:8 * (n // 8)].view(np.uint64)
        if sys.byteorder != "little":  # the kernel reads byte q of a word as entry 8w + q
            words = words.byteswap()
        got = _kernel("gather", impl)(flags, words, cand, bits)
        _check("keep_bits", got, m)
        common = (int(lo) ^ int(hi)).bit_length()  # candidates share the pattern bits above
        if common < shift:
            shift, prefix = common, int(lo) >> common
        t, last, kept = _kernel("resolve", impl)(u, abs_mask, shift, prefix, k - above, cand,
                                                 hist, bits)
        return (t, last, above + kept if kept >= 0 else -1), top
    if lo == 0 and k <= above + m + zeros:  # t = 0 (a ReLU output): every nonzero entry, then
        # the first zeros
        return (0, _kernel("nth_zero", impl)(u, abs_mask, k - above - m), None), top
    return None, top


def _sample_step(n: int) -> int:
    """The stride of the threshold's sample: about _SAMPLE entries, and a prime of at least 11,
    so that it is coprime with an NCHW tensor's usual sizes and walks through every column,
    row and channel (a stride of 7 over rows of 14 sampled two columns only: a biased sample
    whose bracket missed in 4 calls of 5)."""
    step = max(11, n // _SAMPLE)
    while any(step % d == 0 for d in range(2, math.isqrt(step) + 1)):
        step += 1
    return step


def _threshold(x, k, impl, bits):
    """(t, last, kept) for the k largest |x| of a flat float array x (numel,), 1 <= k < numel:
    t the bit pattern of the k-th largest |x|, ``last`` the index of the last entry equal to t
    that is kept (CONV-4: ties by ascending index); the kept set is |x| > t, plus |x| == t at
    indices <= last. ``kept``: the count meant to be kept in the keep mask written into
    ``bits``, or None when none was written (t = 0: :func:`_bracketed`). Raises ValueError
    naming the first non-finite entry."""
    n = x.shape[0]
    view, abs_mask, inf_bits = _BITS[x.dtype.itemsize]
    u = x.view(view)
    width = 8 * x.dtype.itemsize - 1  # bits of an |x| pattern
    if n >= 4 * _SAMPLE:  # the bracket from a sample (module docstring)
        shift = width - _SAMPLE_DIGIT
        hist = np.empty(1 << _SAMPLE_DIGIT, dtype=np.int64)
        sample = u[::_sample_step(n)]
        ns = sample.shape[0]
        start = min(_kernel("histogram", impl)(sample, abs_mask, shift, hist), abs_mask) >> shift
        rank = k * ns // n  # the threshold's expected rank in the sample, from the top
        margin = 4 * math.isqrt(rank * (ns - rank) // ns) + 8
        hi = abs_mask if rank - margin < 1 else \
            ((_kernel("find_bin", impl)(hist, rank - margin, start)[0] + 1) << shift) - 1
        lo = 0 if rank + margin > ns else \
            _kernel("find_bin", impl)(hist, rank + margin, start)[0] << shift
        hit, top = _bracketed(u, abs_mask, k, lo, hi, width, 0, hist, impl, bits)
        if top >= inf_bits:
            raise _non_finite(x)
        if hit is not None:
            return int(hit[0]), int(hit[1]), hit[2]
    shift = width - _DIGIT
    hist = np.empty(1 << _DIGIT, dtype=np.int64)
    top = _kernel("histogram", impl)(u, abs_mask, shift, hist)
    if top >= inf_bits:
        raise _non_finite(x)
    tb, _ = _kernel("find_bin", impl)(hist, k, top >> shift)
    hit, _ = _bracketed(u, abs_mask, k, tb << shift, ((tb + 1) << shift) - 1, shift, tb, hist,
                        impl, bits)
    if hit is None or hit[1] < 0:  # the exact bin always holds the k-th largest
        raise ValueError("sap select: the radix select lost its threshold (a kernel bug)")
    return int(hit[0]), int(hit[1]), hit[2]


def _non_finite(x):
    i = int(np.argmin(np.isfinite(x)))
    return ValueError(
        f"sap select: the input holds a non-finite value ({x[i]} at flat index {i}); SAP "
        f"ranks entries by |x| and cannot rank NaN or inf. Find where the activations "
        f"diverged (learning rate, inputs), or run with sap gamma 0")


def keep_bits(x, k: int, impl: str = "jit") -> np.ndarray:
    """The packed keep mask (uint8 (ceil(numel/8),), little bit order) of the k largest |x| of
    a flat float array x (numel,), 1 <= k < numel, ties by ascending index (CONV-4). Raises
    ValueError naming the first non-finite entry."""
    if impl not in IMPLS:
        raise ValueError(f"cache kernels: unknown kernel impl {impl!r} for keep_bits; valid: "
                         f"{', '.join(IMPLS)}")
    if impl == "np":
        bits, got = _keep_bits_np(x, k)
        if bits is None:
            raise _non_finite(x)
    else:
        bits = np.empty((x.shape[0] + 7) // 8, dtype=np.uint8)
        t, last, got = _threshold(x, k, impl, bits)
        if got is None:  # t = 0: one more pass writes the mask (and counts its bits)
            view, abs_mask, _ = _BITS[x.dtype.itemsize]
            got = _kernel("select_bits", impl)(x.view(view), abs_mask, t, last, bits)
        elif got == k:  # the mask the gather and resolve wrote: its bits counted (3 µs)
            got = _kernel("count_bits", impl)(bits, x.shape[0])
    _check("keep_bits", got, k)
    return bits


def _int_view(a):
    """The bit patterns of a float array (copies through them keep -0.0 and NaN payloads)."""
    return a.view(_BITS[a.dtype.itemsize][0])


def masked_copy(x, bits, n_keep, impl="jit"):
    """Dense x̂ (numel,): x where the keep mask is set, +0.0 elsewhere."""
    out = np.empty_like(x)
    xv, ov = _int_view(x), _int_view(out)
    _check("masked_copy", _kernel("masked_copy", impl)(xv, bits, ov.dtype.type(0), ov), n_keep)
    return out


def compact(x, bits, n_keep, index_dtype=None, impl="jit"):
    """(index (n_keep,) of ``index_dtype`` or None, values (n_keep,) in x's dtype): the kept
    entries of x in ascending flat order."""
    if bits.dtype != np.uint8 or bits.shape != ((x.shape[0] + 7) // 8,):
        raise ValueError(f"compact: expected {(x.shape[0] + 7) // 8} uint8 keep-mask bytes for "
                         f"{x.shape[0]} entries, received {bits.shape} {bits.dtype}")
    values = np.empty(n_keep, dtype=x.dtype)
    index = np.empty(n_keep if index_dtype is not None else 0,
                     dtype=index_dtype if index_dtype is not None else np.uint8)
    got = _kernel("compact", impl)(x, bits, index, values, index_dtype is not None)
    _check("compact", got, n_keep)
    return (index if index_dtype is not None else None), values


def decode_bitmap(bits, values, numel, impl="jit"):
    """x̂ (numel,) from a bitmap cache."""
    if bits.dtype != np.uint8 or bits.shape != ((numel + 7) // 8,):
        raise ValueError(f"decode_bitmap: expected {(numel + 7) // 8} uint8 bitmap bytes for "
                         f"{numel} entries, received {bits.shape} {bits.dtype}")
    out = np.empty(numel, dtype=values.dtype)
    vv, ov = _int_view(values), _int_view(out)
    got = _kernel("decode_bitmap", impl)(bits, vv, ov.dtype.type(0), ov)
    _check("decode_bitmap", got, values.shape[0])
    return out


def decode_index(index, values, numel, impl="jit"):
    """x̂ (numel,) from an index cache."""
    if index.shape != values.shape or (index.dtype.kind != "u" and index.dtype != np.int32):
        raise ValueError(f"decode_index: expected unsigned (or int32, the compat format) "
                         f"indices with one entry per value, "
                         f"received index {index.shape} {index.dtype}, values {values.shape}")
    out = np.empty(numel, dtype=values.dtype)
    got = _kernel("decode_index", impl)(index, values, values.dtype.type(0), out)
    _check("decode_index", got, values.shape[0])
    return out
