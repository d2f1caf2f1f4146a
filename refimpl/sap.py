"""Scaled activation pruning and the compressed activation cache (SPEC §4: SAP-1..3, CACHE-1..4).

SAP is a *residual policy* of the conv2d and linear primitives (:mod:`refimpl.ops.conv`): the
forward pass uses the full input x; the copy of x that the weight gradient needs is pruned and
stored compressed. With ratio γ ∈ [0, 1) and numel = x.size (whole batch):

    n_drop = floor(γ · numel)  (exact rational γ = Fraction(str(γ)), CONV-6)
    n_keep = numel − n_drop
    (compat keep rule ``authors``: n_keep = int(numel · (1 − γ)) in float64, the authors'
    DropIT count, docs/DEVIATIONS.md S1; one fewer whenever γ·numel is not an integer or
    1 − γ rounds down, and 0 for a one-entry tensor)
    K      = the n_keep entries of largest |x|, ties by ascending flat index (CONV-4)
    x̂      = x on K, +0.0 elsewhere

Backward (SAP-3): grad_input needs only the weight and the cotangent (exact); grad_weight is
computed from x̂ = decode(cache) with the same kernels; grad_bias is exact.

Selection runs in linear time: the threshold t = the n_keep-th largest |x| is found by a radix
select on the float bits (NumPy twin: ``np.partition``); every |x| > t is kept and the remaining
n_keep − #{|x| > t} slots go to the lowest flat indices with |x| == t. No full sort, no
dependence on a library's sort stability. Non-finite inputs have no rank and are rejected.

Formats and their exact byte counts (CACHE-1, CACHE-4; layout in docs/cache_format.md), with
s = itemsize and k = n_keep:

    dense   numel · s
    bitmap  ceil(numel / 8) + k · s
    index   k · w + k · s,  w = 1, 2 or 4: the narrowest of uint8/16/32 holding numel − 1

Policy ``auto`` stores the smallest, ties preferring dense, then bitmap, then index (CACHE-2), so
SAP never costs more than no SAP. A dense cache with nothing dropped *is* x (no copy).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from fractions import Fraction
from typing import ClassVar

import numpy as np

from .core._jit import JIT_ENABLED
from .core.tape import Residual, Spec
from .kernels import cache as K

__all__ = ["FORMATS", "COMPAT_FORMATS", "POLICIES", "KEEP_RULES", "SapPolicy", "ActivationCache",
           "SharedCache", "exact_gamma", "keep_count", "index_dtype", "format_nbytes",
           "choose_format", "select", "keep_mask", "encode", "prune_and_encode", "plan_cache",
           "decode",
           "default_impl"]

FORMATS = ("dense", "bitmap", "index")
#: Compatibility formats (docs/DEVIATIONS.md), never chosen by ``auto``: ``int32`` is the
#: activation cache of the authors' public code (int32 flat indices + values).
COMPAT_FORMATS = ("int32",)
POLICIES = FORMATS + ("auto",) + COMPAT_FORMATS
#: Keep-count rules: ``exact`` (SAP-2) and the compat ``authors`` (float count of their DropIT).
KEEP_RULES = ("exact", "authors")
_INDEX_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.uint32))


def default_impl() -> str:
    """``jit`` when kernels are compiled, else the vectorised NumPy twin (interpreted loops
    would be orders of magnitude slower)."""
    return "jit" if JIT_ENABLED else "np"


# ---- counts and sizes (pure integer arithmetic) -----------------------------------------------
def exact_gamma(gamma) -> Fraction:
    """γ as an exact rational of its decimal (CONV-6); must lie in [0, 1) (SAP-2)."""
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float, str, Fraction, np.floating,
                                                         np.integer)):
        raise TypeError(f"sap gamma must be a number in [0, 1), received {gamma!r}")
    try:
        g = gamma if isinstance(gamma, Fraction) else Fraction(str(gamma))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"sap gamma must be a finite number in [0, 1), received {gamma!r}") \
            from None
    if not 0 <= g < 1:
        raise ValueError(f"sap gamma must lie in [0, 1), received {gamma!r}; 0 disables "
                         f"pruning, 0.7 keeps the 30% largest |x|")
    return g


def keep_count(numel: int, gamma, rule: str = "exact") -> int:
    """SAP-2: n_keep = numel − floor(γ · numel), exact. n_keep ≥ 1 whenever numel ≥ 1.

    ``rule="authors"`` (compat, not SAP-2): the authors' DropIT count ``int(numel · (1 − γ))``
    with γ the float of the decimal and the product in float64; it can be 0."""
    if numel < 0:
        raise ValueError(f"keep_count: numel must be >= 0, received {numel}")
    if rule not in KEEP_RULES:
        raise ValueError(f"keep_count: unknown keep rule {rule!r}; valid rules: "
                         f"{', '.join(KEEP_RULES)}")
    g = exact_gamma(gamma)
    if rule == "authors":
        return int(numel * (1.0 - float(g)))
    return numel - (g.numerator * numel) // g.denominator


def index_dtype(numel: int) -> np.dtype:
    """CACHE-1: the narrowest of uint8/uint16/uint32 that holds numel − 1."""
    for dt in _INDEX_DTYPES:
        if numel - 1 <= np.iinfo(dt).max:
            return dt
    raise ValueError(f"index cache: {numel} entries need flat indices beyond uint32 "
                     f"(CACHE-1 allows at most 2**32 entries); use the bitmap or dense format")


def format_nbytes(fmt: str, numel: int, n_keep: int, itemsize: int) -> int:
    """Exact bytes of a cached input in format ``fmt`` (CACHE-1, CACHE-4)."""
    if fmt == "dense":
        return numel * itemsize
    if fmt == "bitmap":
        return (numel + 7) // 8 + n_keep * itemsize
    if fmt == "index":
        return n_keep * (index_dtype(numel).itemsize + itemsize)
    if fmt == "int32":
        _int32_fits(numel)
        return n_keep * (4 + itemsize)
    raise ValueError(f"unknown cache format {fmt!r}; valid formats: "
                     f"{', '.join(FORMATS + COMPAT_FORMATS)}")


def _int32_fits(numel: int) -> None:
    if numel - 1 > np.iinfo(np.int32).max:
        raise ValueError(f"int32 cache (compat): {numel} entries need flat indices beyond int32; "
                         f"use the bitmap or dense format")


def choose_format(policy: str, numel: int, n_keep: int, itemsize: int) -> str:
    """CACHE-2: the format a policy stores; ``auto`` = smallest, ties dense > bitmap > index."""
    if policy in FORMATS or policy in COMPAT_FORMATS:
        return policy
    if policy != "auto":
        raise ValueError(f"unknown cache policy {policy!r}; valid policies: {', '.join(POLICIES)}")
    best, best_bytes = "dense", format_nbytes("dense", numel, n_keep, itemsize)
    for fmt in ("bitmap", "index"):
        if fmt == "index" and numel - 1 > np.iinfo(np.uint32).max:
            continue
        b = format_nbytes(fmt, numel, n_keep, itemsize)
        if b < best_bytes:  # strict: an equal size keeps the earlier (preferred) format
            best, best_bytes = fmt, b
    return best


@dataclass(frozen=True)
class SapPolicy:
    """The SAP residual policy of a run (SAP-2, CACHE-2): ratio γ as an exact rational (CONV-6),
    the cache policy and the keep-count rule (``exact``, SAP-2; ``authors``, compat). Built and
    validated once where the configuration enters (:meth:`make`), then carried typed down to the
    kernels: conv2d/linear/nsconv2d take it as ``sap=``. The keep count and format of each
    tensor size are computed once and remembered.
    """

    gamma: Fraction
    policy: str = "auto"
    keep: str = "exact"
    _layouts: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.gamma, Fraction) or not 0 <= self.gamma < 1:
            raise ValueError(f"SapPolicy: gamma must be a Fraction in [0, 1) (use "
                             f"SapPolicy.make(0.7) for a decimal), received {self.gamma!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"unknown cache policy {self.policy!r}; valid policies: "
                             f"{', '.join(POLICIES)}")
        if self.keep not in KEEP_RULES:
            raise ValueError(f"unknown SAP keep rule {self.keep!r}; valid rules: "
                             f"{', '.join(KEEP_RULES)}")

    @classmethod
    def make(cls, gamma=0.0, policy="auto", keep="exact") -> SapPolicy | None:
        """The policy of a decimal γ (validated, CONV-6), or None when it changes nothing (γ = 0
        and policy ``dense``: the layer keeps its input itself, the pre-SAP behaviour; both
        keep rules keep every entry at γ = 0)."""
        g = exact_gamma(gamma)
        if policy not in POLICIES:
            raise ValueError(f"unknown cache policy {policy!r}; valid policies: "
                             f"{', '.join(POLICIES)}")
        if keep not in KEEP_RULES:
            raise ValueError(f"unknown SAP keep rule {keep!r}; valid rules: "
                             f"{', '.join(KEEP_RULES)}")
        if g == 0 and policy == "dense":
            return None
        return cls(g, policy, keep)

    def keep_count(self, numel: int) -> int:
        """n_keep of an input of ``numel`` entries under this policy (:func:`keep_count`)."""
        return keep_count(numel, self.gamma, self.keep)

    def layout(self, numel: int, itemsize: int) -> tuple[int, str]:
        """(n_keep, format) of a cached input of ``numel`` entries (SAP-2, CACHE-2), computed
        once per size."""
        key = (numel, itemsize)
        hit = self._layouts.get(key)
        if hit is None:
            n_keep = self.keep_count(numel)
            hit = self._layouts[key] = (n_keep, choose_format(self.policy, numel, n_keep,
                                                              itemsize))
        return hit


# ---- selection (SAP-2, CONV-4) ----------------------------------------------------------------
def _flat(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x).reshape(-1)


def select(x: np.ndarray, n_keep: int, impl: str | None = None) -> np.ndarray:
    """The packed keep mask (uint8 (ceil(numel/8),), little bit order) of the n_keep largest
    |x|, ties by lowest flat index (CONV-4), found in O(numel) (see :mod:`refimpl.kernels.cache`).

    ``impl``: ``jit`` (radix select, default), ``np`` (partition) or ``naive`` (interpreted
    loops). Raises ValueError on a count outside [0, numel] and, when anything is dropped, on a
    non-finite entry (it has no rank)."""
    xf = _flat(x)
    numel = xf.shape[0]
    if not 0 <= n_keep <= numel:
        raise ValueError(f"sap select: n_keep must lie in [0, {numel}], received {n_keep}")
    if n_keep == numel:  # nothing dropped: no order needed
        return np.packbits(np.ones(numel, dtype=bool), bitorder="little")
    if n_keep == 0:
        return np.zeros((numel + 7) // 8, dtype=np.uint8)
    return K.keep_bits(xf, n_keep, default_impl() if impl is None else impl)


def keep_mask(x: np.ndarray, n_keep: int, impl: str | None = None) -> np.ndarray:
    """The kept set of :func:`select` as a bool array of x's shape."""
    return K.unpack(select(x, n_keep, impl), int(np.size(x))).reshape(np.shape(x))


# ---- the cache record --------------------------------------------------------------------------
@dataclass(eq=False)
class ActivationCache(Residual):
    """One cached input (CACHE-1). Exactly the buffers of ``fmt`` are arrays, the rest None:

    dense:  ``dense``  x̂ with x's shape and dtype (x itself when nothing was dropped)
    bitmap: ``bits``   uint8 (ceil(numel/8),), little bit order; ``values`` (n_keep,) x's dtype
    index:  ``index``  uint8/16/32 (n_keep,), ascending;          ``values`` (n_keep,) x's dtype
    int32:  ``index``  int32 (n_keep,), ascending;                ``values`` (n_keep,) x's dtype
            (compat: the public code's cache, docs/DEVIATIONS.md; never chosen by ``auto``)

    The tape counts these buffers (TAPE-3); their total is :attr:`nbytes` (CACHE-4).
    """

    category: ClassVar[str] = "input_cache"

    fmt: str
    shape: tuple[int, ...]
    dtype: np.dtype
    n_keep: int
    dense: np.ndarray | None = None
    bits: np.ndarray | None = None
    index: np.ndarray | None = None
    values: np.ndarray | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Sum of the buffers' nbytes; equals :func:`format_nbytes` (CACHE-4)."""
        return sum(a.nbytes for _, a in self.arrays())


def encode(x: np.ndarray, n_keep: int, fmt: str, impl: str | None = None) -> ActivationCache:
    """Keep the n_keep largest |x| of ``x`` (any shape, float32/float64; CONV-4) and store them
    in format ``fmt`` (CACHE-1). ``impl``: ``jit`` | ``np`` | ``naive`` kernels. With nothing
    dropped a dense cache is x itself (no copy)."""
    if fmt not in FORMATS and fmt not in COMPAT_FORMATS:
        raise ValueError(f"unknown cache format {fmt!r}; valid formats: "
                         f"{', '.join(FORMATS + COMPAT_FORMATS)}")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"sap encode: expected a float32 or float64 input, received {x.dtype}")
    impl = default_impl() if impl is None else impl
    shape, xf = tuple(x.shape), _flat(x)
    numel = xf.shape[0]
    if fmt == "dense" and n_keep == numel:
        return ActivationCache("dense", shape, x.dtype, n_keep, dense=x)
    bits = select(xf, n_keep, impl)
    if fmt == "dense":
        d = K.masked_copy(xf, bits, n_keep, impl)
        return ActivationCache("dense", shape, x.dtype, n_keep, dense=d.reshape(shape))
    if fmt == "bitmap":
        _, values = K.compact(xf, bits, n_keep, None, impl)
        return ActivationCache("bitmap", shape, x.dtype, n_keep, bits=bits, values=values)
    if fmt == "int32":
        _int32_fits(numel)
        index, values = K.compact(xf, bits, n_keep, np.dtype(np.int32), impl)
        return ActivationCache("int32", shape, x.dtype, n_keep, index=index, values=values)
    index, values = K.compact(xf, bits, n_keep, index_dtype(numel), impl)
    return ActivationCache("index", shape, x.dtype, n_keep, index=index, values=values)


def prune_and_encode(x: np.ndarray, policy: SapPolicy, impl: str | None = None) -> ActivationCache:
    """SAP-2 + CACHE-2: n_keep and the format from the policy, then :func:`encode`."""
    n_keep, fmt = policy.layout(x.size, x.dtype.itemsize)
    return encode(x, n_keep, fmt, impl)


def plan_cache(x: Spec, policy: SapPolicy) -> ActivationCache:
    """The record :func:`prune_and_encode` would build for an input of ``x``'s shape and dtype,
    with Specs for its buffers (a dry trace, MEM-1). With nothing dropped a dense cache *is* the
    input (no copy), as in :func:`encode`."""
    numel, s = x.size, x.dtype.itemsize
    n_keep, fmt = policy.layout(numel, s)
    shape = tuple(x.shape)
    if fmt == "dense":
        return ActivationCache("dense", shape, x.dtype, n_keep,
                               dense=x if n_keep == numel else Spec(shape, x.dtype))
    values = Spec((n_keep,), x.dtype)
    if fmt == "bitmap":
        return ActivationCache("bitmap", shape, x.dtype, n_keep,
                               bits=Spec(((numel + 7) // 8,), np.uint8), values=values)
    idt = np.dtype(np.int32) if fmt == "int32" else index_dtype(numel)
    return ActivationCache(fmt, shape, x.dtype, n_keep, index=Spec((n_keep,), idt), values=values)


def decode(cache: ActivationCache, impl: str | None = None) -> np.ndarray:
    """x̂ with the cached input's shape and dtype (CACHE-3: bit-exact on kept entries, +0.0
    elsewhere). A dense cache returns its own buffer (read it, do not write it)."""
    impl = default_impl() if impl is None else impl
    if cache.fmt == "dense":
        return cache.dense
    if cache.fmt == "bitmap":
        out = K.decode_bitmap(cache.bits, cache.values, cache.numel, impl)
    elif cache.fmt in ("index", "int32"):
        out = K.decode_index(cache.index, cache.values, cache.numel, impl)
    else:
        raise ValueError(f"unknown cache format {cache.fmt!r}; valid formats: "
                         f"{', '.join(FORMATS + COMPAT_FORMATS)}")
    return out.reshape(cache.shape)


class SharedCache:
    """One cache of an input that several layers consume (SAP-1: a block's first conv and its
    projection shortcut): the first layer that needs it encodes, the others reuse the same
    record, so its buffers exist (and are counted, TAPE-3) once.

    The slot holds the record weakly: once every residual that holds it is released after
    backward, the buffers are freed as they would be without sharing.
    """

    def __init__(self) -> None:
        self._key = None
        self._ref = None

    @staticmethod
    def _key_of(x, policy):
        where = id(x) if isinstance(x, Spec) else (x.__array_interface__["data"][0], x.strides)
        return (where, x.shape, x.dtype, policy)

    def pending(self, x, policy: SapPolicy) -> bool:
        """Whether :meth:`get` would encode (no live record of this input yet)."""
        cache = self._ref() if self._ref is not None else None
        return cache is None or self._key != self._key_of(x, policy)

    def get(self, x, policy: SapPolicy, impl: str | None = None) -> ActivationCache:
        """The shared record of input ``x`` (an array, or a Spec in a dry trace)."""
        dry = isinstance(x, Spec)
        key = self._key_of(x, policy)
        cache = self._ref() if self._ref is not None else None
        if cache is not None:
            if key != self._key:
                raise ValueError(
                    f"SharedCache: this slot already holds the cache of an input of shape "
                    f"{self._key[1]}; it was now given a different input {x.shape} or policy. "
                    f"Use one SharedCache per shared input"
                )
            return cache
        cache = plan_cache(x, policy) if dry else prune_and_encode(x, policy, impl)
        self._key, self._ref = key, weakref.ref(cache)
        return cache
