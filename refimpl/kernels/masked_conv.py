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

from ..core._jit import njit, prange
from . import pick

__all__ = ["IMPLS", "WeightIndex", "WeightMask", "build_index", "weight_index_nbytes", "gather",
           "scatter", "masked_conv2d_forward", "masked_conv2d_backward"]

IMPLS = ("naive", "jit")


class WeightIndex:
    """The weight index of one masked layer (module docstring). ``shape`` is the weight's."""

    __slots__ = ("ptr", "off", "shape")

    def __init__(self, ptr: np.ndarray, off: np.ndarray, shape: tuple[int, ...]):
        self.ptr, self.off, self.shape = ptr, off, tuple(shape)

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

    __slots__ = ("_mask", "shape", "nnz", "_index")

    def __init__(self, mask: np.ndarray):
        m = np.asarray(mask)
        if m.dtype != np.bool_:
            raise TypeError(f"WeightMask: expected a bool mask, received dtype {m.dtype}")
        self._mask = m
        self.shape = tuple(m.shape)
        self.nnz = int(np.count_nonzero(m))
        self._index = None

    @classmethod
    def counts(cls, shape, nnz: int) -> WeightMask:
        size = int(np.prod(shape))
        if not 0 <= nnz <= size:
            raise ValueError(f"WeightMask.counts: nnz must lie in [0, {size}], received {nnz}")
        self = cls.__new__(cls)
        self._mask, self.shape, self.nnz, self._index = None, tuple(shape), int(nnz), None
        return self

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

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
    o = w.shape[0]
    rows = np.repeat(np.arange(o), np.diff(index.ptr))
    return np.ascontiguousarray(w.reshape(o, -1)[rows, index.off])


def scatter(val: np.ndarray, index: WeightIndex) -> np.ndarray:
    """The dense weight (zeros off the mask) of active values in index order."""
    o = index.shape[0]
    dense = np.zeros((o, int(np.prod(index.shape[1:]))), dtype=val.dtype)
    rows = np.repeat(np.arange(o), np.diff(index.ptr))
    dense[rows, index.off] = val
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
# With stride 1, output (oh, ow) reads padded input (oh + i*d, ow + j*d). Give the output rows the
# padded input's width Wp (the extra Wp - OW columns are scratch): then flat output position k
# reads flat padded-input position k + (i*d*Wp + j*d), so each active weight is one contiguous
# loop over L = (OH - 1)*Wp + OW positions that LLVM vectorises. Reductions (the weight gradient)
# accumulate elementwise into a wide buffer and sum it once at the end, so no float reduction has
# to be reordered (no fastmath). Inner loops index a slice taken first (``xs[k]``), never
# ``row[k + off]``: with a possibly negative index Numba keeps a wraparound branch that stops
# LLVM from vectorising (measured 5x slower).

def _wide_forward_naive(xp, ptr, off, val, kh, kw, dh, dw, wp, groups, length, out):
    """out (N, O, OH·Wp) overwritten; xp (N, C, Hp·Wp) the zero-padded input."""
    n_batch = xp.shape[0]
    c_in = xp.shape[1]
    c_out = out.shape[1]
    og = c_out // groups
    cg = c_in // groups
    for n in prange(n_batch):
        for o in range(c_out):
            orow = out[n, o]
            for k in range(orow.shape[0]):
                orow[k] = 0
            c0 = (o // og) * cg
            for e in range(ptr[o], ptr[o + 1]):
                i = (off[e] % (kh * kw)) // kw
                j = off[e] % kw
                start = i * dh * wp + j * dw
                xs = xp[n, c0 + off[e] // (kh * kw), start:start + length]
                v = val[e]
                for k in range(length):
                    orow[k] += v * xs[k]
    return out


def _wide_grad_input_naive(gw, ptr, off, val, kh, kw, dh, dw, wp, groups, length, dxp):
    """gw (N, O, OH·Wp) wide cotangent with zero scratch columns; dxp (N, C, Hp·Wp) padded
    input gradient, overwritten."""
    n_batch = gw.shape[0]
    c_out = gw.shape[1]
    c_in = dxp.shape[1]
    og = c_out // groups
    cg = c_in // groups
    for n in prange(n_batch):
        for c in range(c_in):
            drow = dxp[n, c]
            for k in range(drow.shape[0]):
                drow[k] = 0
        for o in range(c_out):
            grow = gw[n, o]
            c0 = (o // og) * cg
            for e in range(ptr[o], ptr[o + 1]):
                i = (off[e] % (kh * kw)) // kw
                j = off[e] % kw
                start = i * dh * wp + j * dw
                ds = dxp[n, c0 + off[e] // (kh * kw), start:start + length]
                v = val[e]
                for k in range(length):
                    ds[k] += v * grow[k]
    return dxp


def _wide_grad_weight_naive(xp, gw, ptr, off, kh, kw, dh, dw, wp, groups, length, acc, dval):
    """dval[e] += Σ_n Σ_k gw[n, o, k] xp[n, c, k + start]; acc (O, length) is scratch: one wide
    accumulator row per output channel, so the parallel loop over o writes disjoint memory."""
    n_batch = xp.shape[0]
    c_in = xp.shape[1]
    c_out = gw.shape[1]
    og = c_out // groups
    cg = c_in // groups
    for o in prange(c_out):
        a = acc[o]
        c0 = (o // og) * cg
        for e in range(ptr[o], ptr[o + 1]):
            i = (off[e] % (kh * kw)) // kw
            j = off[e] % kw
            start = i * dh * wp + j * dw
            c = c0 + off[e] // (kh * kw)
            for k in range(length):
                a[k] = 0
            for n in range(n_batch):
                grow = gw[n, o]
                xs = xp[n, c, start:start + length]
                for k in range(length):
                    a[k] += grow[k] * xs[k]
            total = dval[e]
            for k in range(length):
                total += a[k]
            dval[e] = total
    return dval


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
}


def _kernel(op: str, impl: str):
    return pick("masked conv2d", _KERNELS, op, impl)


# ---- the layer ---------------------------------------------------------------------------------
def _wide(stride, impl) -> bool:
    return impl == "jit" and tuple(stride) == (1, 1)


def _geometry(x_shape, padding, out_hw):
    """(Hp, Wp, OH, OW, L) of the wide-rows layout."""
    n, c, h, w = x_shape
    ph, pw = padding
    hp, wp = h + 2 * ph, w + 2 * pw
    oh, ow = out_hw
    return hp, wp, oh, ow, (oh - 1) * wp + ow


def _pad_flat(x, padding):
    ph, pw = padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else np.ascontiguousarray(x)
    return xp.reshape(x.shape[0], x.shape[1], -1)


def _wide_g(g, wp):
    n, o, oh, ow = g.shape
    gw = np.zeros((n, o, oh, wp), dtype=g.dtype)
    gw[..., :ow] = g
    return gw.reshape(n, o, -1)


def masked_conv2d_forward(x, index: WeightIndex, val, bias, stride, padding, dilation, groups,
                          out_shape, impl="jit"):
    """y = conv2d(x, W ⊙ M) (+ bias), visiting only the active weights.

    x (N, C, H, W); ``val`` (nnz,) the active values in index order; bias (O,) or None.
    Returns a new (N, O, OH, OW) array. Holds nothing; workspace: the weight index (built once
    per mask change) and, on the stride-1 path of this implementation, a padded copy of x.
    """
    kh, kw = index.shape[2], index.shape[3]
    if _wide(stride, impl):
        hp, wp, oh, ow, length = _geometry(x.shape, padding, out_shape[2:])
        outw = np.empty((x.shape[0], out_shape[1], oh * wp), dtype=x.dtype)
        _kernel("wide_forward", impl)(_pad_flat(x, padding), index.ptr, index.off, val, kh, kw,
                                      dilation[0], dilation[1], wp, int(groups), length, outw)
        y = np.ascontiguousarray(outw.reshape(x.shape[0], out_shape[1], oh, wp)[..., :ow])
    else:
        y = np.zeros(out_shape, dtype=x.dtype)
        _kernel("forward", impl)(np.ascontiguousarray(x), index.ptr, index.off, val, kh, kw,
                                 tuple(stride), tuple(padding), tuple(dilation), int(groups), y)
    if bias is not None:
        y += bias.reshape(1, -1, 1, 1)
    return y


def masked_conv2d_backward(g, x, index: WeightIndex, val, stride, padding, dilation, groups,
                           dx=None, dval=None, db=None, impl="jit"):
    """Gradients of y = conv2d(x, W ⊙ M) + b, accumulated (+=) into the caller's buffers.

    g (N, O, OH, OW) the output cotangent; x the input the weight gradient uses (x̂ under SAP);
    dx (N, C, H, W), dval (nnz,) (the weight gradient at the active positions, index order) and
    db (O,): each None when not wanted. dx needs only the weights and g (exact under SAP, SAP-3);
    inactive weights get no gradient at all (MASK-3). Returns (dx, dval, db).
    """
    kh, kw = index.shape[2], index.shape[3]
    wide = _wide(stride, impl) and (dx is not None or dval is not None)
    if wide:
        geo = _geometry(dx.shape if dx is not None else x.shape, padding, g.shape[2:])
        gw = _wide_g(g, geo[1])
    if dx is not None:
        if wide:
            hp, wp, oh, ow, length = geo
            n, c, h, w = dx.shape
            dxp = np.empty((n, c, hp * wp), dtype=g.dtype)
            _kernel("wide_grad_input", impl)(gw, index.ptr, index.off, val, kh, kw, dilation[0],
                                             dilation[1], wp, int(groups), length, dxp)
            ph, pw = padding
            dx += dxp.reshape(n, c, hp, wp)[:, :, ph:ph + h, pw:pw + w]
        else:
            _kernel("grad_input", impl)(np.ascontiguousarray(g), index.ptr, index.off, val, kh,
                                        kw, tuple(stride), tuple(padding), tuple(dilation),
                                        int(groups), dx)
    if dval is not None:
        if wide:
            hp, wp, oh, ow, length = geo
            acc = np.empty((g.shape[1], length), dtype=x.dtype)
            _kernel("wide_grad_weight", impl)(_pad_flat(x, padding), gw, index.ptr, index.off,
                                              kh, kw, dilation[0], dilation[1], wp, int(groups),
                                              length, acc, dval)
        else:
            _kernel("grad_weight", impl)(np.ascontiguousarray(x), np.ascontiguousarray(g),
                                         index.ptr, index.off, kh, kw, tuple(stride),
                                         tuple(padding), tuple(dilation), int(groups), dval)
    if db is not None:
        db += np.sum(g, axis=(0, 2, 3))
    return dx, dval, db
