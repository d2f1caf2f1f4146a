"""Masked convolution: the porter's layer (SPEC MASK-1, MASK-3, CONV-1).

A masked conv layer holds only its active weights. Everything a port needs is in this file:

    build_index(mask)                  the weight index, built once per mask change
    gather(w, index) / scatter(...)    dense weight <-> active values in index order
    masked_conv2d_forward(...)         y = conv2d(x, W ⊙ M) + b            (bias inside)
    masked_conv2d_backward(...)        dx += ..., dval += ..., db += ...   (caller's buffers)

plus their loop kernels below. The SAP cache that feeds the weight gradient is
:mod:`refimpl.kernels.cache`.

Weight index (a CSR over output channels; int32, so it is what a C port holds):
    ptr  int32 (O + 1,)  the active entries of output channel o are ptr[o] .. ptr[o + 1] − 1
    off  int32 (nnz,)    each entry's flat offset inside its channel's (C/g, KH, KW) patch,
                         off = c·KH·KW + i·KW + j, ascending within a channel
Entries are in C order of (o, c, i, j): the same order as ``w[mask]``, so the active values
("val", (nnz,) in the weights' dtype) of a layer are ``w[mask]`` and results are deterministic.
Bytes: 4·(O + 1) + 4·nnz (the ``weight_index`` workspace of docs/memory.md).

Kernels, each a plain loop function (``_naive``, C-shaped, calling no compiled code) compiled as
``_jit`` (:func:`refimpl.core._jit.njit`): the general loops for any stride, and for stride 1
the "wide rows" loops, which LLVM vectorises (below). The oracle is the dense kernels of
:mod:`refimpl.kernels.conv` applied to ``W ⊙ M``. Parallelism (STYLE 4): forward and input
gradient split the batch (each n writes out[n] / dx[n]); the weight gradient splits output
channels (each o writes its own entries).
"""

from __future__ import annotations

import numpy as np

from ..core._jit import (
    get_num_threads,
    njit,
    prange,
    vec_accumulate,
    vec_add,
    vec_lanes,
    vec_load,
    vec_mul,
    vec_zero,
)
from . import pick

__all__ = ["IMPLS", "WeightIndex", "WeightMask", "build_index", "weight_index_nbytes", "gather",
           "scatter", "masked_conv2d_forward", "masked_conv2d_backward"]

IMPLS = ("naive", "jit")


class WeightIndex:
    """The weight index of one masked layer (module docstring). ``shape`` is the weight's."""

    __slots__ = ("ptr", "off", "shape", "layouts", "_flat")

    def __init__(self, ptr: np.ndarray, off: np.ndarray, shape: tuple[int, ...]):
        self.ptr, self.off, self.shape = ptr, off, tuple(shape)
        self.layouts = {}  # per input geometry: the stride-1 kernels' offsets (_WideLayout)
        self._flat = None

    @property
    def flat(self) -> np.ndarray:
        """Each entry's flat position in the dense weight (o·C/g·KH·KW + off), int64; made on
        first use and kept (gather and scatter run every step)."""
        if self._flat is None:
            fan = int(np.prod(self.shape[1:]))
            rows = np.repeat(np.arange(self.shape[0], dtype=np.int64), np.diff(self.ptr))
            self._flat = rows * fan + self.off
        return self._flat

    @property
    def nnz(self) -> int:
        return int(self.off.shape[0])

    @property
    def nbytes(self) -> int:
        return self.ptr.nbytes + self.off.nbytes


class WeightMask:
    """A prunable weight's mask (bool, the weight's shape) with its weight index, built on first
    use and kept: the engine makes one per layer per mask change, so the index is built once,
    not in every forward and backward.

    ``WeightMask.counts(shape, nnz)`` holds counts only (no positions): the stand-in of a dry
    trace (the memory ledger), and of a dense layer, whose all-true mask is made on demand.
    """

    __slots__ = ("_mask", "shape", "nnz", "size", "_index", "_memo")

    def __init__(self, mask: np.ndarray):
        m = np.asarray(mask)
        if m.dtype != np.bool_:
            raise TypeError(f"WeightMask: expected a bool mask, received dtype {m.dtype}")
        self._mask = m
        self.shape = tuple(m.shape)
        self.size = int(m.size)
        self.nnz = int(np.count_nonzero(m))
        self._index = None
        self._memo = {}

    @classmethod
    def counts(cls, shape, nnz: int) -> WeightMask:
        size = int(np.prod(shape))
        if not 0 <= nnz <= size:
            raise ValueError(f"WeightMask.counts: nnz must lie in [0, {size}], received {nnz}")
        self = cls.__new__(cls)
        self._mask, self.shape, self.nnz, self._index = None, tuple(shape), int(nnz), None
        self.size = size
        self._memo = {}
        return self

    @property
    def dense(self) -> bool:
        """Every position active (a dense layer: the dense kernels compute it faster)."""
        return self.nnz == self.size

    @property
    def mask(self) -> np.ndarray:
        if self._mask is None:
            if not self.dense:
                raise ValueError("WeightMask.counts holds counts only (a dry trace); build a "
                                 "WeightMask from a real mask to run kernels")
            self._mask = np.ones(self.shape, dtype=bool)
        return self._mask

    @property
    def index(self) -> WeightIndex:
        if self._index is None:
            self._index = build_index(self.mask)
        return self._index

    def memo(self, key, make):
        """``make()``, a value derived from this mask alone, computed on the first call with
        ``key`` and kept with the mask like its index (NSConv's per-channel counts). The caller
        must not modify it."""
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = make()
        return hit

    @property
    def index_nbytes(self) -> int:
        return weight_index_nbytes(self.shape[0], self.nnz)


def weight_index_nbytes(out_channels: int, nnz: int) -> int:
    """Bytes of a weight index (4·(O + 1) + 4·nnz), from its counts alone."""
    return 4 * (out_channels + 1) + 4 * nnz


def build_index(mask: np.ndarray) -> WeightIndex:
    """The weight index of a bool mask (O, C/g, KH, KW); O(size), done once per mask change."""
    m = np.asarray(mask, dtype=bool)
    o = m.shape[0]
    if m.size // max(o, 1) > np.iinfo(np.int32).max:
        raise ValueError(f"weight index: a channel of {m.size // o} entries exceeds int32")
    m2 = m.reshape(o, -1)
    rows, cols = np.nonzero(m2)
    ptr = np.zeros(o + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=o), out=ptr[1:])
    return WeightIndex(ptr, cols.astype(np.int32), m.shape)


def gather(w: np.ndarray, index: WeightIndex) -> np.ndarray:
    """The active values (nnz,) of a dense weight, in index order (= ``w[mask]``)."""
    return np.ascontiguousarray(w).reshape(-1).take(index.flat)


def scatter(val: np.ndarray, index: WeightIndex) -> np.ndarray:
    """The dense weight (zeros off the mask) of active values in index order."""
    dense = np.zeros(int(np.prod(index.shape)), dtype=val.dtype)
    dense[index.flat] = val
    return dense.reshape(index.shape)


# ---- general loops (any stride, dilation, groups) ----------------------------------------------
# An entry e of output channel o sits at input channel c0 + off // (KH·KW), kernel row
# (off % (KH·KW)) // KW, column off % KW. Output row oh reads input row oh·sh − ph + i·dh; the
# valid outputs of a kernel row are lo <= oh < hi with lo = ceil((ph − i·dh) / sh) clipped at 0
# and hi = floor((H − 1 + ph − i·dh) / sh) + 1 clipped at OH (computed inline: a naive twin calls
# no compiled helper).

def _forward_naive(x, ptr, off, val, kh, kw, stride, padding, dilation, groups, out):
    """out[n, o] += Σ_e val[e] · x[n, c_e, oh·sh − ph + i_e·dh, ow·sw − pw + j_e·dw]."""
    n_batch, c_in, h, w = x.shape
    _, c_out, oh_size, ow_size = out.shape
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    og = c_out // groups
    cg = c_in // groups
    for n in prange(n_batch):
        for o in range(c_out):
            c0 = (o // og) * cg
            for e in range(ptr[o], ptr[o + 1]):
                c = c0 + off[e] // (kh * kw)
                i = (off[e] % (kh * kw)) // kw
                j = off[e] % kw
                v = val[e]
                th = ph - i * dh
                oh_lo = max(0, -((-th) // sh))
                oh_hi = min(oh_size, (h - 1 + th) // sh + 1)
                tw = pw - j * dw
                ow_lo = max(0, -((-tw) // sw))
                ow_hi = min(ow_size, (w - 1 + tw) // sw + 1)
                for oh in range(oh_lo, oh_hi):
                    ih = oh * sh - th
                    for ow in range(ow_lo, ow_hi):
                        out[n, o, oh, ow] += v * x[n, c, ih, ow * sw - tw]
    return out


def _grad_input_naive(g, ptr, off, val, kh, kw, stride, padding, dilation, groups, dx):
    """dx[n, c_e, ih, iw] += val[e] · g[n, o, oh, ow] over the outputs that read (ih, iw)."""
    n_batch, c_in, h, w = dx.shape
    _, c_out, oh_size, ow_size = g.shape
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    og = c_out // groups
    cg = c_in // groups
    for n in prange(n_batch):
        for o in range(c_out):
            c0 = (o // og) * cg
            for e in range(ptr[o], ptr[o + 1]):
                c = c0 + off[e] // (kh * kw)
                i = (off[e] % (kh * kw)) // kw
                j = off[e] % kw
                v = val[e]
                th = ph - i * dh
                oh_lo = max(0, -((-th) // sh))
                oh_hi = min(oh_size, (h - 1 + th) // sh + 1)
                tw = pw - j * dw
                ow_lo = max(0, -((-tw) // sw))
                ow_hi = min(ow_size, (w - 1 + tw) // sw + 1)
                for oh in range(oh_lo, oh_hi):
                    ih = oh * sh - th
                    for ow in range(ow_lo, ow_hi):
                        dx[n, c, ih, ow * sw - tw] += v * g[n, o, oh, ow]
    return dx


def _grad_weight_naive(x, g, ptr, off, kh, kw, stride, padding, dilation, groups, dval):
    """dval[e] += Σ_{n, oh, ow} g[n, o, oh, ow] · x[n, c_e, oh·sh − ph + i_e·dh, ...]."""
    n_batch, c_in, h, w = x.shape
    _, c_out, oh_size, ow_size = g.shape
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    og = c_out // groups
    cg = c_in // groups
    for o in prange(c_out):
        c0 = (o // og) * cg
        for e in range(ptr[o], ptr[o + 1]):
            c = c0 + off[e] // (kh * kw)
            i = (off[e] % (kh * kw)) // kw
            j = off[e] % kw
            th = ph - i * dh
            oh_lo = max(0, -((-th) // sh))
            oh_hi = min(oh_size, (h - 1 + th) // sh + 1)
            tw = pw - j * dw
            ow_lo = max(0, -((-tw) // sw))
            ow_hi = min(ow_size, (w - 1 + tw) // sw + 1)
            acc = dval[e]  # += with the dense kernels' rounding when dval starts at zero
            for n in range(n_batch):
                for oh in range(oh_lo, oh_hi):
                    ih = oh * sh - th
                    for ow in range(ow_lo, ow_hi):
                        acc += g[n, o, oh, ow] * x[n, c, ih, ow * sw - tw]
            dval[e] = acc
    return dval


# ---- stride-1 fast path: "wide rows" -----------------------------------------------------------
# With stride 1, output (oh, ow) reads padded input (oh + i*d, ow + j*d). Lay the padded input
# out flat with a row pitch Wq and give the output rows the same pitch (the extra Wq - OW columns
# are scratch): then flat output position k reads flat input position k + s, s = i*dh*Wq + j*dw,
# so each active weight is one contiguous loop over L = (OH - 1)*Wq + OW positions that LLVM
# vectorises. Small images stack P samples end to end (sample stride S = Hq*Wq), so one loop of
# (P - 1)*S + L positions serves P samples and the per-loop overhead is paid once (measured 1.6x
# on 7x7 images).
#
# Shared padding: a row's right padding is the next row's left padding, and a sample's bottom
# padding rows are the next sample's top ones. With Wq = max(W + pw, OW) and Hq = max(H + ph,
# OH) (not the padded Wp = W + 2pw, Hp = H + 2ph), a read past a row's end lands in the next
# row's first pw columns, and a read past a sample's last row in the next sample's first ph rows:
# zeros either way, so every output still reads exactly its padded image, and the outputs of
# different rows and samples keep distinct positions. The loops cover fewer scratch positions:
# 15 instead of 16 per row and 15 instead of 16 rows per sample for a 14x14 image with padding
# 1, 8 and 8 instead of 9 and 9 for 7x7 (the demo's masked forward 12-17% faster, the weight
# gradient 6-10%), with the same bytes: each output adds the same terms in the same order.
#
# Register blocking without reordering a sum: the forward and the input gradient take EIGHT terms
# of one output element's sum per pass while eight remain, then four, two and one, each pass
# written as one left-to-right expression ((((a + t0) + t1) + t2) + t3), which is exactly the
# order of separate passes (no fastmath: LLVM may not reassociate), so the results are
# bit-identical to one term per pass while the accumulator is loaded and stored four (eight)
# times less. Eight terms measured 6-10% faster than four on the demo's layers in the forward and
# the input gradient. The weight gradient, whose every term reads two rows, keeps its batch sums
# in registers instead (vectors of positions, core/_jit.py) and adds each vector's lanes to the
# entry's running sum in position order, with no row in memory.
#
# Layouts (built by the wrappers, channel-major, samples end to end; loop lengths are rounded up
# to a multiple of 8, so no scalar remainder loop runs; the rounding positions are scratch or
# read zeros):
#   xp  (C·Rx,)     the zero-padded input: x[n, c, ih, iw] at c·Rx + n·S + (ih + ph)·Wq + pw
#                   + iw, Rx = (N − 1)·S + F + Lr + 8 (the last sample's padding and the tail
#                   the rounded loops read), so entry e reads xp[xoff[e] + n·S + k] with
#                   xoff[e] = c_e·Rx + s_e
#   gp  (O, Rg)     the wide cotangent: g[n, o, oh, ow] at F + n·S + oh·Wq + ow, F = the
#                   largest shift s; zeros everywhere else (scratch, front and tail)
# The input gradient runs over input channels: a transposed index (entries sorted by (c, o,
# offset), the order in which the one-term-per-pass loop added them to an input position) lets
# every pass take several terms of the same input row. Inner loops index a slice taken first
# (``xs[k]``), never ``row[k + off]``: with a possibly negative index Numba keeps a wraparound
# branch that stops LLVM from vectorising (measured 5x slower).

def _wide_forward_naive(xp, ptr, xoff, val, bias, has_bias, relu, zero, samples, stride, length,
                        wp, row, out):
    """out[n, o, oh, ow] = Σ_e val[e] · xp[xoff[e] + n·S + oh·Wq + ow] (+ bias[o]), terms in
    entry order, then with ``relu`` max(·, 0) as np.maximum (+0.0 for −0.0, NaN kept; ``zero``
    is 0 in out's dtype; without a bias it adds −0.0, which changes no value's bits). Samples
    go ``samples`` (P) at a time; row (groups, ≥ (P − 1)·S + L rounded) is scratch: one wide
    output row per group."""
    n_batch, c_out, oh_size, ow_size = out.shape
    for grp in prange((n_batch + samples - 1) // samples):
        n0 = grp * samples
        count = min(samples, n_batch - n0)
        lr = -(-((count - 1) * stride + length) // 8) * 8
        base = n0 * stride
        acc = row[grp]
        for o in range(c_out):
            for k in range(lr):
                acc[k] = 0
            e = ptr[o]
            end = ptr[o + 1]
            while e + 8 <= end:  # eight terms per pass over the row, then 4, 2 and 1
                x0 = xp[base + xoff[e]:base + xoff[e] + lr]
                x1 = xp[base + xoff[e + 1]:base + xoff[e + 1] + lr]
                x2 = xp[base + xoff[e + 2]:base + xoff[e + 2] + lr]
                x3 = xp[base + xoff[e + 3]:base + xoff[e + 3] + lr]
                x4 = xp[base + xoff[e + 4]:base + xoff[e + 4] + lr]
                x5 = xp[base + xoff[e + 5]:base + xoff[e + 5] + lr]
                x6 = xp[base + xoff[e + 6]:base + xoff[e + 6] + lr]
                x7 = xp[base + xoff[e + 7]:base + xoff[e + 7] + lr]
                v0, v1, v2, v3 = val[e], val[e + 1], val[e + 2], val[e + 3]
                v4, v5, v6, v7 = val[e + 4], val[e + 5], val[e + 6], val[e + 7]
                for k in range(lr):
                    acc[k] = (((((((acc[k] + v0 * x0[k]) + v1 * x1[k]) + v2 * x2[k])
                                 + v3 * x3[k]) + v4 * x4[k]) + v5 * x5[k]) + v6 * x6[k]) \
                        + v7 * x7[k]
                e += 8
            while e + 4 <= end:
                x0 = xp[base + xoff[e]:base + xoff[e] + lr]
                x1 = xp[base + xoff[e + 1]:base + xoff[e + 1] + lr]
                x2 = xp[base + xoff[e + 2]:base + xoff[e + 2] + lr]
                x3 = xp[base + xoff[e + 3]:base + xoff[e + 3] + lr]
                v0, v1, v2, v3 = val[e], val[e + 1], val[e + 2], val[e + 3]
                for k in range(lr):
                    acc[k] = (((acc[k] + v0 * x0[k]) + v1 * x1[k]) + v2 * x2[k]) + v3 * x3[k]
                e += 4
            while e + 2 <= end:
                x0 = xp[base + xoff[e]:base + xoff[e] + lr]
                x1 = xp[base + xoff[e + 1]:base + xoff[e + 1] + lr]
                v0, v1 = val[e], val[e + 1]
                for k in range(lr):
                    acc[k] = (acc[k] + v0 * x0[k]) + v1 * x1[k]
                e += 2
            while e < end:
                x0 = xp[base + xoff[e]:base + xoff[e] + lr]
                v0 = val[e]
                for k in range(lr):
                    acc[k] = acc[k] + v0 * x0[k]
                e += 1
            for p in range(count):
                for oh in range(oh_size):
                    src = acc[p * stride + oh * wp:p * stride + oh * wp + ow_size]
                    dst = out[n0 + p, o, oh]
                    b = bias[o] if has_bias else -zero  # + (−0.0) leaves every value's bits
                    if relu:  # np.maximum(v, 0): v unless v <= 0 (NaN kept, ±0.0 -> +0.0)
                        for ow in range(ow_size):
                            v = src[ow] + b
                            dst[ow] = zero if v <= zero else v
                    else:
                        for ow in range(ow_size):
                            dst[ow] = src[ow] + b
    return out


def _wide_grad_input_naive(gp, cptr, tout, goff, tval, samples, stride, span, wp, row, dx):
    """dx[n, c, ih, iw] += Σ_t tval[t] · gp[tout[t], goff[t] + n·S + ih·Wq + iw] over the
    entries t of input channel c in the transposed index (cptr (C + 1,), tout the output
    channel, goff = F + ph·Wq + pw − s), terms in that order. Samples go P at a time, over
    (P − 1)·S + ``span`` positions (span = (H − 1)·Wq + W); row (groups, ...) is scratch."""
    n_batch, c_in, h, w = dx.shape
    for grp in prange((n_batch + samples - 1) // samples):
        n0 = grp * samples
        count = min(samples, n_batch - n0)
        lq = -(-((count - 1) * stride + span) // 8) * 8
        base = n0 * stride
        acc = row[grp]
        for c in range(c_in):
            for k in range(lq):
                acc[k] = 0
            t = cptr[c]
            end = cptr[c + 1]
            while t + 8 <= end:  # eight terms per pass over the row, then 4, 2 and 1
                g0 = gp[tout[t], base + goff[t]:base + goff[t] + lq]
                g1 = gp[tout[t + 1], base + goff[t + 1]:base + goff[t + 1] + lq]
                g2 = gp[tout[t + 2], base + goff[t + 2]:base + goff[t + 2] + lq]
                g3 = gp[tout[t + 3], base + goff[t + 3]:base + goff[t + 3] + lq]
                g4 = gp[tout[t + 4], base + goff[t + 4]:base + goff[t + 4] + lq]
                g5 = gp[tout[t + 5], base + goff[t + 5]:base + goff[t + 5] + lq]
                g6 = gp[tout[t + 6], base + goff[t + 6]:base + goff[t + 6] + lq]
                g7 = gp[tout[t + 7], base + goff[t + 7]:base + goff[t + 7] + lq]
                v0, v1, v2, v3 = tval[t], tval[t + 1], tval[t + 2], tval[t + 3]
                v4, v5, v6, v7 = tval[t + 4], tval[t + 5], tval[t + 6], tval[t + 7]
                for k in range(lq):
                    acc[k] = (((((((acc[k] + v0 * g0[k]) + v1 * g1[k]) + v2 * g2[k])
                                 + v3 * g3[k]) + v4 * g4[k]) + v5 * g5[k]) + v6 * g6[k]) \
                        + v7 * g7[k]
                t += 8
            while t + 4 <= end:
                g0 = gp[tout[t], base + goff[t]:base + goff[t] + lq]
                g1 = gp[tout[t + 1], base + goff[t + 1]:base + goff[t + 1] + lq]
                g2 = gp[tout[t + 2], base + goff[t + 2]:base + goff[t + 2] + lq]
                g3 = gp[tout[t + 3], base + goff[t + 3]:base + goff[t + 3] + lq]
                v0, v1, v2, v3 = tval[t], tval[t + 1], tval[t + 2], tval[t + 3]
                for k in range(lq):
                    acc[k] = (((acc[k] + v0 * g0[k]) + v1 * g1[k]) + v2 * g2[k]) + v3 * g3[k]
                t += 4
            while t + 2 <= end:
                g0 = gp[tout[t], base + goff[t]:base + goff[t] + lq]
                g1 = gp[tout[t + 1], base + goff[t + 1]:base + goff[t + 1] + lq]
                v0, v1 = tval[t], tval[t + 1]
                for k in range(lq):
                    acc[k] = (acc[k] + v0 * g0[k]) + v1 * g1[k]
                t += 2
            while t < end:
                g0 = gp[tout[t], base + goff[t]:base + goff[t] + lq]
                v0 = tval[t]
                for k in range(lq):
                    acc[k] = acc[k] + v0 * g0[k]
                t += 1
            for p in range(count):
                for ih in range(h):
                    src = acc[p * stride + ih * wp:p * stride + ih * wp + w]
                    dst = dx[n0 + p, c, ih]
                    for iw in range(w):
                        dst[iw] = dst[iw] + src[iw]
    return dx


def _wide_grad_weight_naive(xp, gp, ptr, xoff, front, n_batch, stride, length, lr, parts, dval):
    """dval[e] += Σ_k (Σ_n gp[o, F + n·S + k] · xp[xoff[e] + n·S + k]) for k < L: for each
    position the batch sum first (samples in order from +0.0), then the positions added to
    dval[e] one by one in position order.

    The batch sums are kept in registers (core/_jit.py: vectors): for four entries and two
    vectors of positions (16 float32 positions), eight vector sums run down the whole batch,
    then each entry's running sum takes its vectors' lanes in position order (vec_accumulate)
    before the next positions start; an output channel's last one to three entries fill the four
    with repeats of its last entry, whose sums are dropped. The output channels are split into
    ``parts`` contiguous ranges, one per parallel iteration (disjoint entries of dval).
    Measured on the reference layer at density 0.3, one thread: 1.13 ms with the batch sums
    in a row in memory per entry, 0.77 ms in registers, stored into rows that were summed
    afterwards; and in one later run 0.80 ms for that against 0.75 ms with the lanes added
    straight from the registers (no rows); at density 0.1, 0.33 against 0.32 ms. The bytes are
    the same each time."""
    c_out = gp.shape[0]
    lanes = vec_lanes(xp)
    for part in prange(parts):
        for o in range(part * c_out // parts, (part + 1) * c_out // parts):
            grow = gp[o]
            e = ptr[o]
            end = ptr[o + 1]
            while e < end:  # four entries: eight vector sums
                r = min(4, end - e)  # past r, a repeat of entry e + r − 1 (its sums dropped)
                s0 = xoff[e]
                s1 = xoff[e + min(1, r - 1)]
                s2 = xoff[e + min(2, r - 1)]
                s3 = xoff[e + min(3, r - 1)]
                t0 = dval[e]  # each entry's running sum over the positions
                t1 = dval[e + min(1, r - 1)]
                t2 = dval[e + min(2, r - 1)]
                t3 = dval[e + min(3, r - 1)]
                k = 0
                while k < lr:  # Lr is a multiple of 8 positions: at most one vector is left
                    two = k + 2 * lanes <= lr
                    a0, a1, a2, a3 = vec_zero(xp), vec_zero(xp), vec_zero(xp), vec_zero(xp)
                    b0, b1, b2, b3 = vec_zero(xp), vec_zero(xp), vec_zero(xp), vec_zero(xp)
                    if two:
                        for n in range(n_batch):
                            q = n * stride + k
                            ga = vec_load(grow, front + q)
                            gb = vec_load(grow, front + q + lanes)
                            a0 = vec_add(a0, vec_mul(ga, vec_load(xp, s0 + q)))
                            b0 = vec_add(b0, vec_mul(gb, vec_load(xp, s0 + q + lanes)))
                            a1 = vec_add(a1, vec_mul(ga, vec_load(xp, s1 + q)))
                            b1 = vec_add(b1, vec_mul(gb, vec_load(xp, s1 + q + lanes)))
                            a2 = vec_add(a2, vec_mul(ga, vec_load(xp, s2 + q)))
                            b2 = vec_add(b2, vec_mul(gb, vec_load(xp, s2 + q + lanes)))
                            a3 = vec_add(a3, vec_mul(ga, vec_load(xp, s3 + q)))
                            b3 = vec_add(b3, vec_mul(gb, vec_load(xp, s3 + q + lanes)))
                    else:
                        for n in range(n_batch):
                            q = n * stride + k
                            ga = vec_load(grow, front + q)
                            a0 = vec_add(a0, vec_mul(ga, vec_load(xp, s0 + q)))
                            a1 = vec_add(a1, vec_mul(ga, vec_load(xp, s1 + q)))
                            a2 = vec_add(a2, vec_mul(ga, vec_load(xp, s2 + q)))
                            a3 = vec_add(a3, vec_mul(ga, vec_load(xp, s3 + q)))
                    # positions k, k + 1, ... below L, in order (past L: rounding, dropped)
                    t0 = vec_accumulate(t0, a0, length - k)
                    t1 = vec_accumulate(t1, a1, length - k)
                    t2 = vec_accumulate(t2, a2, length - k)
                    t3 = vec_accumulate(t3, a3, length - k)
                    if two:
                        t0 = vec_accumulate(t0, b0, length - k - lanes)
                        t1 = vec_accumulate(t1, b1, length - k - lanes)
                        t2 = vec_accumulate(t2, b2, length - k - lanes)
                        t3 = vec_accumulate(t3, b3, length - k - lanes)
                        k += 2 * lanes
                    else:
                        k += lanes
                dval[e] = t0
                if r > 1:
                    dval[e + 1] = t1
                if r > 2:
                    dval[e + 2] = t2
                if r > 3:
                    dval[e + 3] = t3
                e += r
    return dval


# -- the moves into the wide layouts: serial. They are plain copies; compiled parallel, each
# launch woke the second OpenMP thread (passive waits) for a fraction of a millisecond of copying.
# On the reference layer, timed without PyTorch in the process (median of 15 paired repeats):
# the masked step took 1.16 ms at density 0.1 and 1.73 ms at 0.3 with parallel moves, 0.96 and
# 1.63 ms with serial ones, against 1.23 and 2.59 ms with every kernel serial.
def _pad_wide_naive(x, ph, pw, wq, stride, rx, xp):
    """xp (C·Rx,): x[n, c, ih, iw] at c·Rx + n·S + (ih + ph)·Wq + pw + iw (row pitch Wq, sample
    stride S); zeros everywhere else. Serial, as :func:`_wide_cotangent_naive`: a pure move is
    too short to pay for waking a second thread (module note on the moves)."""
    n_batch, c_in, h, w = x.shape
    for c in range(c_in):
        dst = xp[c * rx:(c + 1) * rx]
        for k in range(rx):
            dst[k] = 0
        for n in range(n_batch):
            for ih in range(h):
                start = n * stride + (ih + ph) * wq + pw
                row = dst[start:start + w]
                src = x[n, c, ih]
                for iw in range(w):
                    row[iw] = src[iw]
    return xp


def _wide_cotangent_naive(g, front, stride, wp, gp):
    """gp (O, Rg): g[n, o, oh, ow] at front + n·S + oh·Wq + ow, zeros elsewhere. Serial (module
    note on the moves)."""
    n_batch, c_out, oh_size, ow_size = g.shape
    for o in range(c_out):
        dst = gp[o]
        for k in range(dst.shape[0]):
            dst[k] = 0
        for n in range(n_batch):
            for oh in range(oh_size):
                start = front + n * stride + oh * wp
                row = dst[start:start + ow_size]
                src = g[n, o, oh]
                for ow in range(ow_size):
                    row[ow] = src[ow]
    return gp


_KERNELS = {
    "forward": {"naive": _forward_naive, "jit": njit(_forward_naive, parallel=True)},
    "grad_input": {"naive": _grad_input_naive, "jit": njit(_grad_input_naive, parallel=True)},
    "grad_weight": {"naive": _grad_weight_naive,
                    "jit": njit(_grad_weight_naive, parallel=True)},
    "wide_forward": {"naive": _wide_forward_naive,
                     "jit": njit(_wide_forward_naive, parallel=True)},
    "wide_grad_input": {"naive": _wide_grad_input_naive,
                        "jit": njit(_wide_grad_input_naive, parallel=True)},
    "wide_grad_weight": {"naive": _wide_grad_weight_naive,
                         "jit": njit(_wide_grad_weight_naive, parallel=True)},
    "pad_wide": {"naive": _pad_wide_naive, "jit": njit(_pad_wide_naive)},
    "wide_cotangent": {"naive": _wide_cotangent_naive,
                       "jit": njit(_wide_cotangent_naive)},
}


def _kernel(op: str, impl: str):
    return pick("masked conv2d", _KERNELS, op, impl)


# ---- the layer ---------------------------------------------------------------------------------
def _wide(stride, impl) -> bool:
    return impl == "jit" and tuple(stride) == (1, 1)


#: Stacked samples: as many as fit in this many positions per loop (at least one).
_STACK = 1024


def _round8(n: int) -> int:
    return -(-n // 8) * 8


class _WideLayout:
    """Sizes and per-entry offsets of the wide-rows layout of one (index, input geometry)."""

    __slots__ = ("wp", "stride", "length", "lr", "front", "q0", "span", "samples", "shift",
                 "chan", "perm", "cptr", "tout", "goff")

    def __init__(self, index: WeightIndex, c_in, h, w, padding, dilation, groups):
        (ph, pw), (dh, dw) = padding, dilation
        o, cg, kh, kw = index.shape
        hp, wp = h + 2 * ph, w + 2 * pw
        oh, ow = hp - dh * (kh - 1), wp - dw * (kw - 1)
        # Shared padding (the layout comment above): the row pitch Wq and the rows per sample
        # Hq hold the image, one side's padding and every output position.
        wq, hq = max(w + pw, ow), max(h + ph, oh)
        self.wp = wq  # the row pitch Wq
        self.stride = hq * wq  # S: one sample
        self.length = (oh - 1) * wq + ow  # L
        self.lr = _round8(self.length)
        self.front = (kh - 1) * dh * wq + (kw - 1) * dw  # F: the largest shift s
        self.q0 = ph * wq + pw  # position of input (0, 0)
        self.span = (h - 1) * wq + w
        self.samples = max(1, _STACK // self.stride)  # P: samples per loop (at most)
        off = index.off.astype(np.int64)
        out_ch = np.repeat(np.arange(o, dtype=np.int64), np.diff(index.ptr))
        self.chan = (out_ch // (o // groups)) * cg + off // (kh * kw)
        self.shift = (off % (kh * kw)) // kw * (dh * wq) + off % kw * dw
        # Transposed index: entries by input channel, then output channel and offset (stable)
        self.perm = np.argsort(self.chan, kind="stable")
        self.cptr = np.zeros(c_in + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.chan, minlength=c_in), out=self.cptr[1:])
        self.tout = out_ch[self.perm]
        self.goff = self.front + self.q0 - self.shift[self.perm]

    def rx(self, n: int) -> int:
        """Row length of one input channel in xp: N samples, the last one's bottom padding and
        the tail its rounded loops read."""
        return (n - 1) * self.stride + self.front + self.lr + 8

    def rg(self, n: int) -> int:
        """Row length of one output channel in gp."""
        return self.front + (n - 1) * self.stride + max(self.q0 + _round8(self.span),
                                                         self.lr) + 8


def _wide_layout(index: WeightIndex, x_shape, padding, dilation, groups) -> _WideLayout:
    """The layout of ``index`` for inputs of ``x_shape`` (any batch), made once and kept with
    the index (it changes only with the mask, like the index itself)."""
    key = (tuple(x_shape[1:]), tuple(padding), tuple(dilation), int(groups))
    hit = index.layouts.get(key)
    if hit is None:
        if len(index.layouts) >= 8:  # a handful of geometries per layer; never grow unbounded
            index.layouts.clear()
        hit = index.layouts[key] = _WideLayout(index, x_shape[1], x_shape[2], x_shape[3],
                                               padding, dilation, groups)
    return hit


def _pad_wide(x, lay: _WideLayout, padding, impl):
    n, c = x.shape[:2]
    rx = lay.rx(n)
    xp = np.empty(c * rx, dtype=x.dtype)
    _kernel("pad_wide", impl)(np.ascontiguousarray(x), padding[0], padding[1], lay.wp,
                              lay.stride, rx, xp)
    return xp, rx


def _samples(n: int, lay: _WideLayout) -> int:
    """Samples per loop: the layout's P, but at least two loops per thread to share out (the
    results do not depend on it: every output keeps its order of terms)."""
    return max(1, min(lay.samples, -(-n // (2 * get_num_threads()))))


def _wide_forward(x, index, val, bias, padding, dilation, groups, out_shape, relu, impl):
    lay = _wide_layout(index, x.shape, padding, dilation, groups)
    n = x.shape[0]
    samples = _samples(n, lay)
    xp, rx = _pad_wide(x, lay, padding, impl)
    y = np.empty(out_shape, dtype=x.dtype)
    row = np.empty((-(-n // samples), _round8((samples - 1) * lay.stride + lay.length)),
                   dtype=x.dtype)
    has_bias = bias is not None
    b = bias if has_bias else np.zeros(0, dtype=x.dtype)
    return _kernel("wide_forward", impl)(xp, index.ptr, lay.chan * rx + lay.shift,
                                         val, b, has_bias, relu, y.dtype.type(0), samples,
                                         lay.stride, lay.length, lay.wp, row, y)


def _wide_backward(g, x, index, val, padding, dilation, groups, dx, dval, impl):
    lay = _wide_layout(index, dx.shape if dx is not None else x.shape, padding, dilation, groups)
    n, o = g.shape[:2]
    gp = np.empty((o, lay.rg(n)), dtype=g.dtype)
    _kernel("wide_cotangent", impl)(np.ascontiguousarray(g), lay.front, lay.stride, lay.wp, gp)
    if dx is not None:
        samples = _samples(n, lay)
        row = np.empty((-(-n // samples), _round8((samples - 1) * lay.stride + lay.span)),
                       dtype=g.dtype)
        _kernel("wide_grad_input", impl)(gp, lay.cptr, lay.tout, lay.goff,
                                         np.ascontiguousarray(val[lay.perm]), samples,
                                         lay.stride, lay.span, lay.wp, row, dx)
    if dval is not None:
        xp, rx = _pad_wide(x, lay, padding, impl)
        _kernel("wide_grad_weight", impl)(xp, gp, index.ptr, lay.chan * rx + lay.shift,
                                          lay.front, n, lay.stride, lay.length, lay.lr,
                                          max(1, min(o, get_num_threads())), dval)


def masked_conv2d_forward(x, index: WeightIndex, val, bias, stride, padding, dilation, groups,
                          out_shape, impl="jit", relu=False):
    """y = conv2d(x, W ⊙ M) (+ bias), visiting only the active weights; with ``relu``
    max(y, 0) as np.maximum.

    x (N, C, H, W); ``val`` (nnz,) the active values in index order; bias (O,) or None.
    Returns a new (N, O, OH, OW) array. Holds nothing; workspace: the weight index (built once
    per mask change) and, on the stride-1 path of this implementation, a padded copy of x and
    one wide output row per sample.
    """
    if _wide(stride, impl):
        return _wide_forward(x, index, val, bias, padding, dilation, groups, out_shape, relu,
                             impl)
    kh, kw = index.shape[2], index.shape[3]
    y = np.zeros(out_shape, dtype=x.dtype)
    _kernel("forward", impl)(np.ascontiguousarray(x), index.ptr, index.off, val, kh, kw,
                             tuple(stride), tuple(padding), tuple(dilation), int(groups), y)
    if bias is not None:
        y += bias.reshape(1, -1, 1, 1)
    if relu:
        np.maximum(y, y.dtype.type(0), out=y)
    return y


def masked_conv2d_backward(g, x, index: WeightIndex, val, stride, padding, dilation, groups,
                           dx=None, dval=None, db=None, impl="jit"):
    """Gradients of y = conv2d(x, W ⊙ M) + b, accumulated (+=) into the caller's buffers.

    g (N, O, OH, OW) the output cotangent; x the input the weight gradient uses (x̂ under SAP);
    dx (N, C, H, W), dval (nnz,) (the weight gradient at the active positions, index order) and
    db (O,): each None when not wanted. dx needs only the weights and g (exact under SAP, SAP-3);
    inactive weights get no gradient at all (MASK-3). Returns (dx, dval, db).
    """
    if _wide(stride, impl) and (dx is not None or dval is not None):
        _wide_backward(g, x, index, val, padding, dilation, groups, dx, dval, impl)
    else:
        kh, kw = index.shape[2], index.shape[3]
        if dx is not None:
            _kernel("grad_input", impl)(np.ascontiguousarray(g), index.ptr, index.off, val, kh,
                                        kw, tuple(stride), tuple(padding), tuple(dilation),
                                        int(groups), dx)
        if dval is not None:
            _kernel("grad_weight", impl)(np.ascontiguousarray(x), np.ascontiguousarray(g),
                                         index.ptr, index.off, kh, kw, tuple(stride),
                                         tuple(padding), tuple(dilation), int(groups), dval)
    if db is not None:
        db += np.sum(g, axis=(0, 2, 3))
    return dx, dval, db
