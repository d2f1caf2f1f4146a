"""Selection, encode and decode kernels of the compressed activation cache (SPEC SAP-2, CONV-4,
CACHE-1, CACHE-3).

Pipeline. ``keep_bits`` turns a flat input x (numel,) and a count k into the packed *keep
mask* of the k largest |x|, ties by ascending flat index (CONV-4): uint8 (ceil(numel/8),), bit
(i % 8) of byte i // 8 set when entry i is kept (little bit order, unused high bits 0). That
mask is the bitmap format's first buffer; the formats are then single passes over it:

    dense   masked_copy: x̂ (numel,) = x where kept, +0.0 elsewhere
    bitmap  the mask + compact: values (k,) = kept entries in ascending i
    index   compact with index: index (k,) uint8/16/32 ascending + values (k,)

Selection in linear time, without sorting:

- ``jit`` / ``naive``: a radix select on the IEEE-754 bits. With the sign bit cleared, a finite
  float's bit pattern read as a signed integer orders exactly like |x|, and NaN/inf patterns are
  >= the pattern of inf (so the same pass rejects them). Pass 1: a histogram of the top 16 bits;
  a scan from the top finds the bin holding the k-th largest. Pass 2: the bits of every entry
  above that bin, and the (ascending) indices of the entries inside it. The remaining 16-bit
  digits are resolved on those candidates only (1 round for float32, 3 for float64), which
  gives t = the k-th largest |x| and how many entries equal to t to keep; the candidates above
  t and the first such ties are then set in the mask. When the threshold's bin holds only
  exact zeros (t = 0, the common case after a ReLU at γ near the zero fraction), the kept set is
  every nonzero entry plus the first zeros, with no candidate list. Scratch: 512 KiB of
  histogram and 8·(m + 1) bytes of candidate indices, m = entries in the threshold's bin.
- ``np``: ``np.partition`` for t, then |x| > t plus the first ties from ``flatnonzero``.

Every kernel is a plain loop function (the C-shaped oracle, run interpreted as ``naive``)
compiled by :func:`refimpl.core._jit.njit` (``jit``); the vectorised NumPy twin (``np``) is the
independent oracle. Loops are sequential: a kept value's output position is a prefix count,
and each pass is memory-bound. Values are copied, never computed on, so -0.0 survives (CACHE-3).
Kernels return a count (or a negative code on inconsistent buffers) that the wrappers check;
the byte layout for C readers is in docs/cache_format.md.
"""

from __future__ import annotations

import numpy as np

from ..core._jit import njit
from . import pick

__all__ = ["IMPLS", "keep_bits", "unpack", "masked_copy", "compact", "decode_bitmap",
           "decode_index"]

IMPLS = ("naive", "np", "jit")
_BINS = 1 << 16
#: Per float width: (integer view, |x| bit mask, bit pattern of +inf).
_BITS = {4: (np.int32, 0x7FFFFFFF, 0x7F800000),
         8: (np.int64, 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000)}


# ---- plain loop functions (the oracle; the jit kernels are these compiled) --------------------
def _histogram_naive(u, abs_mask, shift, hist):
    """Pass 1: hist[d] = #{i : (|u_i| >> shift) == d} over the top 16 bits of the |x| patterns
    (u: int32/int64 view of x, hist: int64 (65536,), overwritten). Returns the largest |x|
    pattern (>= the inf pattern iff some entry is NaN or inf) and the number of exact zeros."""
    for b in range(hist.shape[0]):
        hist[b] = 0
    top = np.int64(0)
    zeros = 0
    for i in range(u.shape[0]):
        a = np.int64(u[i]) & abs_mask
        top = max(top, a)
        zeros += a == 0
        hist[a >> shift] += 1
    return top, zeros


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


def _bracket_naive(u, abs_mask, lo, hi, bits, cand, rare):
    """One pass: set the bit of every entry with |x| pattern > hi; append the indices of those
    in [lo, hi] (the candidates) to ``cand`` in ascending order. ``cand`` holds the number of
    candidates the histogram counted plus one spare slot for the branch-free append; writes are
    clamped to that slot, so a wrong count can never write out of bounds, and the returned count
    tells the caller. ``rare``: few candidates, so a predictable branch beats the branch-free
    append. Returns the number of candidates. (lo <= a <= hi is tested as
    ((a − lo) | (hi − a)) >= 0: one branch.)"""
    n = u.shape[0]
    cap = cand.shape[0] - 1
    c = 0
    # Full bytes first, each with a fixed trip count, then the tail byte: one loop body per
    # case keeps LLVM's unrolling (a per-byte "is this the last byte" test measured 5x slower).
    # Inner loops read a pre-taken slice (us[q], never u[base + q]): Numba then drops its
    # negative-index wraparound branch (docs/decisions.md; measured 1.7x here).
    for b in range(n // 8):
        base = 8 * b
        us = u[base:base + 8]
        byte = 0
        if rare:
            for q in range(8):
                a = np.int64(us[q]) & abs_mask
                byte |= np.int64(a > hi) << q
                if ((a - lo) | (hi - a)) >= 0:
                    cand[min(c, cap)] = base + q
                    c += 1
        else:
            for q in range(8):
                a = np.int64(us[q]) & abs_mask
                byte |= np.int64(a > hi) << q
                cand[min(c, cap)] = base + q
                c += ((a - lo) | (hi - a)) >= 0
        bits[b] = byte
    base = 8 * (n // 8)
    if base < n:
        byte = 0
        for q in range(n - base):
            a = np.int64(u[base + q]) & abs_mask
            byte |= np.int64(a > hi) << q
            if ((a - lo) | (hi - a)) >= 0:
                cand[min(c, cap)] = base + q
                c += 1
        bits[n // 8] = byte
    return c


def _keep_first_zeros_naive(bits, need, n):
    """Set the first ``need`` clear bits (positions < n) of ``bits``: when the threshold is
    exactly 0 every nonzero entry is already set, so the clear bits are the zeros, in
    ascending index order. Returns how many it set."""
    done = 0
    for b in range(bits.shape[0]):
        if done == need:
            break
        byte = np.int64(bits[b])
        if byte == 0xFF:
            continue
        for q in range(min(8, n - 8 * b)):
            if done < need and (byte >> q) & 1 == 0:
                byte |= 1 << q
                done += 1
        bits[b] = byte
    return done


def _resolve_naive(u, abs_mask, shift, prefix, need, cand, m, hist, bits):
    """Find t, the ``need``-th largest pattern among the m candidates cand[:m] (which all share
    the digits above ``shift + 16``, given as ``prefix``), one 16-bit digit per round (shift,
    shift − 16, ..., 0); then set the bits of every candidate above t and of the first
    remaining ``need`` candidates equal to t, by ascending index. Returns how many it set."""
    if m > cand.shape[0] or need < 1 or need > m:
        return -1  # inconsistent arguments: nothing written
    lowest = np.int64(abs_mask)
    highest = np.int64(0)
    for j in range(m):
        a = np.int64(u[cand[j]]) & abs_mask
        lowest = min(lowest, a)
        highest = max(highest, a)
    if lowest == highest:  # all tied (e.g. the zeros after a ReLU): t is known, skip the rounds
        prefix = lowest
        shift = -1
    work = cand[:m].copy() if shift >= 0 else cand[:0]
    live = m
    while shift >= 0:
        for b in range(hist.shape[0]):
            hist[b] = 0
        for j in range(live):
            hist[((np.int64(u[work[j]]) & abs_mask) >> shift) & 0xFFFF] += 1
        d_t = hist.shape[0] - 1  # the bin of the need-th largest (as _find_bin_naive)
        while d_t > 0 and hist[d_t] < need:
            need -= hist[d_t]
            d_t -= 1
        c = 0
        for j in range(live):
            i = work[j]
            work[c] = i
            c += (((np.int64(u[i]) & abs_mask) >> shift) & 0xFFFF) == d_t
        live = c
        prefix = (prefix << 16) | d_t
        shift -= 16
    kept = 0
    for j in range(m):  # prefix is now the full pattern of t
        i = cand[j]
        a = np.int64(u[i]) & abs_mask
        if a > prefix or (a == prefix and need > 0):
            if a == prefix:
                need -= 1
            bits[i >> 3] |= np.uint8(1 << (i & 7))
            kept += 1
    return kept


def _masked_copy_naive(x, bits, zero, out):
    """Dense x̂: out[i] = x[i] where bit i is set, else ``zero`` (+0.0 of x's dtype: a typed
    zero keeps the select in the dtype, which LLVM vectorises; an int 0 would not). Returns
    the kept count."""
    n = x.shape[0]
    kept = 0
    for b in range(n // 8):  # full bytes, then the tail (see _bracket_naive)
        byte = np.int64(bits[b])
        base = 8 * b
        for q in range(8):  # (here direct indexing measured 5x faster than a pre-taken slice)
            bit = (byte >> q) & 1
            v = x[base + q]
            out[base + q] = v if bit != 0 else zero
            kept += bit
    base = 8 * (n // 8)
    if base < n:
        byte = np.int64(bits[n // 8])
        for q in range(n - base):
            bit = (byte >> q) & 1
            v = x[base + q]
            out[base + q] = v if bit != 0 else zero
            kept += bit
    return kept


def _compact_naive(x, bits, index, values, with_index):
    """values (k,) = x at the set bits in ascending order; index (k,) their flat positions when
    ``with_index``. Returns k, or −1 when the bits set more or fewer than k positions."""
    n = x.shape[0]
    k = values.shape[0]
    j = 0
    for b in range((n + 7) // 8):
        byte = np.int64(bits[b])
        if byte == 0:
            continue
        base = 8 * b
        if base + 8 <= n and j + 8 <= k:  # room for all 8: write each, advance on a set bit
            for q in range(8):
                values[j] = x[base + q]
                if with_index:
                    index[j] = base + q
                j += (byte >> q) & 1
        else:
            for q in range(min(8, n - base)):
                if (byte >> q) & 1:
                    if j >= k:
                        return -1
                    values[j] = x[base + q]
                    if with_index:
                        index[j] = base + q
                    j += 1
    return j if j == k else -1


def _decode_bitmap_naive(bits, values, zero, out):
    """out (numel,): values scattered, in ascending order, to the set bits; ``zero`` (+0.0)
    elsewhere. Returns the number of set bits, or -1 when it is not values.shape[0] or a bit
    beyond numel is set."""
    n = out.shape[0]
    k = values.shape[0]
    j = 0
    for b in range(n // 8):  # full bytes, then the tail (see _bracket_naive)
        byte = np.int64(bits[b])
        base = 8 * b
        if j + 8 <= k:  # every read below is inside values
            for q in range(8):
                bit = (byte >> q) & 1
                v = values[j]
                out[base + q] = v if bit != 0 else zero
                j += bit
        else:
            for q in range(8):
                if (byte >> q) & 1:
                    if j >= k:
                        return -1
                    out[base + q] = values[j]
                    j += 1
                else:
                    out[base + q] = zero
    base = 8 * (n // 8)
    if base < n:
        byte = np.int64(bits[n // 8])
        if byte >> (n - base) != 0:
            return -1
        for q in range(n - base):
            if (byte >> q) & 1:
                if j >= k:
                    return -1
                out[base + q] = values[j]
                j += 1
            else:
                out[base + q] = zero
    return j if j == k else -1


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


# ---- dispatch (refimpl.kernels.pick) ----------------------------------------------------------
_KERNELS = {
    "histogram": {"naive": _histogram_naive, "jit": njit(_histogram_naive)},
    "find_bin": {"naive": _find_bin_naive, "jit": njit(_find_bin_naive)},
    "bracket": {"naive": _bracket_naive, "jit": njit(_bracket_naive)},
    "resolve": {"naive": _resolve_naive, "jit": njit(_resolve_naive)},
    "keep_first_zeros": {"naive": _keep_first_zeros_naive, "jit": njit(_keep_first_zeros_naive)},
    "masked_copy": {"naive": _masked_copy_naive, "np": _masked_copy_np,
                    "jit": njit(_masked_copy_naive)},
    "compact": {"naive": _compact_naive, "np": _compact_np, "jit": njit(_compact_naive)},
    "decode_bitmap": {"naive": _decode_bitmap_naive, "np": _decode_bitmap_np,
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


def _keep_bits_radix(x, k, impl):
    """The radix select of the module docstring; returns (bits, kept count) or (None, −1 − i)
    for a first non-finite entry i."""
    n = x.shape[0]
    view, abs_mask, inf_bits = _BITS[x.dtype.itemsize]
    u = x.view(view)
    shift = 8 * x.dtype.itemsize - 16
    hist = np.empty(_BINS, dtype=np.int64)
    top, zeros = _kernel("histogram", impl)(u, abs_mask, shift, hist)
    if top >= inf_bits:
        return None, -1 - int(np.argmin(np.isfinite(x)))
    tb, need = _kernel("find_bin", impl)(hist, k, top >> shift)
    m = int(hist[tb])
    bits = np.empty((n + 7) // 8, dtype=np.uint8)
    if tb == 0 and m == zeros:  # t = 0 exactly (a ReLU output): keep every nonzero entry and
        # the first ``need`` zeros, with no candidate list (lo > hi: nothing is a candidate)
        _kernel("bracket", impl)(u, abs_mask, 1, 0, bits, np.empty(1, dtype=np.int64), True)
        return bits, (k - need) + _kernel("keep_first_zeros", impl)(bits, need, n)
    cand = np.empty(m + 1, dtype=np.int64)
    c = _kernel("bracket", impl)(u, abs_mask, tb << shift, ((tb + 1) << shift) - 1, bits,
                                 cand, 8 * m < n)
    _check("keep_bits", c, m)
    kept = _kernel("resolve", impl)(u, abs_mask, shift - 16, tb, need, cand, m, hist, bits)
    return bits, (k - need) + kept  # entries above the threshold bin + kept candidates


def keep_bits(x, k: int, impl: str = "jit") -> np.ndarray:
    """The packed keep mask (uint8 (ceil(numel/8),), little bit order) of the k largest |x| of
    a flat float array x (numel,), 1 <= k < numel, ties by ascending index (CONV-4). Raises
    ValueError naming the first non-finite entry."""
    if impl not in IMPLS:
        raise ValueError(f"cache kernels: unknown kernel impl {impl!r} for keep_bits; valid: "
                         f"{', '.join(IMPLS)}")
    bits, got = _keep_bits_np(x, k) if impl == "np" else _keep_bits_radix(x, k, impl)
    if bits is None:
        i = -1 - got
        raise ValueError(
            f"sap select: the input holds a non-finite value ({x[i]} at flat index {i}); SAP "
            f"ranks entries by |x| and cannot rank NaN or inf. Find where the activations "
            f"diverged (learning rate, inputs), or run with sap gamma 0"
        )
    _check("keep_bits", got, k)
    return bits


def masked_copy(x, bits, n_keep, impl="jit"):
    """Dense x̂ (numel,): x where the keep mask is set, +0.0 elsewhere."""
    out = np.empty_like(x)
    _check("masked_copy", _kernel("masked_copy", impl)(x, bits, x.dtype.type(0), out), n_keep)
    return out


def compact(x, bits, n_keep, index_dtype=None, impl="jit"):
    """(index (n_keep,) of ``index_dtype`` or None, values (n_keep,) in x's dtype): the kept
    entries of x in ascending flat order."""
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
    got = _kernel("decode_bitmap", impl)(bits, values, values.dtype.type(0), out)
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
