"""NumPy's own summation order, as a loop function the compiled kernels call (no SPEC rule: it
keeps their results the bytes of the NumPy expressions they replace).

NumPy sums a contiguous run of n float entries pairwise (numpy/_core/src/umath/loops_utils.h.src):
fewer than 8 entries in order from 0; at most 128 with eight running sums over the 8-entry
groups, combined as ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7)), then the remainder in
order; a longer run split at half its length rounded down to a multiple of 8, its halves added.
A reduction adds each run's pairwise sum to its output, which starts at 0:

    np.sum(a, axis=-1) of a C-contiguous (R, n) array:   0 + pairwise(row)
    np.sum(x, axis=(0, 2)) of a C-contiguous (N, C, L):  (((0 + pw(x[0, c])) + pw(x[1, c])) + …)
        (L ≥ 2 and C ≥ 2, so that NumPy's iterator keeps the (n, c) rows apart, and L at most
        8192, its buffer; the callers check this and use NumPy otherwise)

Both orders are checked against NumPy bit for bit by Hypothesis tests (spec_tests/test_nsconv.py,
spec_tests/test_kernels.py). Each 8-entry group is read through a slice (constant, non-negative
indices), so LLVM turns the eight running sums into one vector add: as fast as NumPy's sum here,
where indexing ``a[lo + i + j]`` kept a wraparound branch per entry and ran 2.3x slower.

Kernels that call :func:`pairwise` are compiled against the compiled function; their interpreted
twins (:func:`interpreted`) against the loop itself, so a ``naive`` twin calls no compiled code.
"""

from __future__ import annotations

from ..core._jit import njit
from . import rebind

__all__ = ["STACK", "pairwise", "pairwise_naive", "interpreted"]

#: Frames of the explicit stack: each split adds two, and a run of n entries splits about
#: log2(n / 128) times deep.
STACK = 128
_BLOCK = 128  # NumPy's PW_BLOCKSIZE


def pairwise_naive(a, n, zero, stk, vals):
    """NumPy's pairwise sum of a[0:n] (a 1-D, contiguous; ``zero`` is 0 in a's dtype). The
    recursion runs on an explicit stack (stk int64 (STACK, 3): start, length, state; vals
    (STACK,) in a's dtype), so compiled kernels call no recursive function."""
    sp = 0
    vp = 0
    stk[0, 0] = 0
    stk[0, 1] = n
    stk[0, 2] = 0
    while sp >= 0:
        lo = stk[sp, 0]
        m = stk[sp, 1]
        if m <= _BLOCK:
            if m < 8:
                res = zero
                for i in range(m):
                    res = res + a[lo + i]
            else:
                b = a[lo:lo + 8]
                r0, r1, r2, r3, r4, r5, r6, r7 = b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]
                i = 8
                while i < m - m % 8:
                    b = a[lo + i:lo + i + 8]
                    r0 = r0 + b[0]
                    r1 = r1 + b[1]
                    r2 = r2 + b[2]
                    r3 = r3 + b[3]
                    r4 = r4 + b[4]
                    r5 = r5 + b[5]
                    r6 = r6 + b[6]
                    r7 = r7 + b[7]
                    i += 8
                res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
                while i < m:
                    res = res + a[lo + i]
                    i += 1
            vals[vp] = res
            vp += 1
            sp -= 1
        elif stk[sp, 2] == 0:  # split: the second half below the first, so the first runs first
            stk[sp, 2] = 1
            half = m // 2
            half -= half % 8
            stk[sp + 1, 0] = lo + half
            stk[sp + 1, 1] = m - half
            stk[sp + 1, 2] = 0
            stk[sp + 2, 0] = lo
            stk[sp + 2, 1] = half
            stk[sp + 2, 2] = 0
            sp += 2
        else:  # both halves done: first + second
            vals[vp - 2] = vals[vp - 2] + vals[vp - 1]
            vp -= 1
            sp -= 1
    return vals[0]


pairwise = njit(pairwise_naive)


def interpreted(f):
    """``f`` with its calls of :func:`pairwise` bound to the loop function (the naive twin of a
    kernel that calls it); its compiled build calls the compiled :func:`pairwise`."""
    return rebind(f, pairwise=pairwise_naive)
