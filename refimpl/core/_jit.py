"""The only module that imports numba.

Every kernel in ``refimpl.kernels`` is written as a plain Python loop function and passed through
:func:`njit` here, so the identical code runs compiled, interpreted under ``NUMBA_DISABLE_JIT=1``,
or interpreted when numba is not installed at all.

Flags live here and nowhere else (STYLE 4):
- no ``fastmath``: bit-stable cross-checks matter more than the last few percent;
- ``parallel=True`` only for kernels whose every ``prange`` iteration writes its own slice; such
  a kernel also has a serial build, which runs when Numba has one thread (:class:`_ByThreads`);
- ``cache=True`` so a fresh clone compiles each kernel once, not once per process;
- ``NUMBA_OPT`` defaults to 2: deep loop nests compile ~20x faster than at level 3 and run as fast
  (measured on this project's conv kernels), unless the user sets it.
- ``boundscheck`` stays at numba's default (off); kernels check their bounds explicitly up front.
- ``OMP_WAIT_POLICY`` defaults to ``passive`` (unless the user sets it or ``GOMP_SPINCOUNT``):
  Numba's OpenMP workers then sleep between parallel regions instead of spinning. A training step
  alternates short parallel kernels with NumPy, BLAS and Python work; on 2 cores the spinning
  workers took the cores that work needed, and the demo round ran 2.5x slower (profile of one
  demo round: 2.72 s spinning, 1.08 s passive). It must be set before the OpenMP runtime loads,
  hence here, before the first kernel compiles.
- When an OpenMP runtime is already loaded as refimpl loads (PyTorch imported first, as in the
  cross-check tests and benchmarks), it has fixed its wait policy (PyTorch's default spins), and
  Numba's OpenMP layer would call into it: the layer's library needs ``libgomp``, and the
  runtime loaded first (PyTorch's own copy, torch/lib/libgomp.so.1) answers those calls even
  though the system's copy is mapped too. A demo round then ran 2.6x slower
  (``benchmarks/round.py``: 2.58 s against 1.20 s). So the layer's library is loaded here with
  ``RTLD_DEEPBIND``: it binds the system's runtime, which reads the passive default as it loads,
  and the kernels stay parallel with sleeping workers, as in a process without PyTorch
  (:func:`_own_openmp_runtime`; the masked conv of ``benchmarks/masked_conv.py`` at density 0.1
  0.43-0.44x PyTorch's dense conv in the same process, against 0.49-0.57x serial). When that
  cannot work (the very file Numba's layer links was loaded first, or no ``RTLD_DEEPBIND``),
  the ``parallel`` kernels are compiled serial (:data:`SERIAL_KERNELS`; each under its own name,
  so the on-disk cache keeps the two builds apart), and any other parallel Numba code of the
  process runs on ``workqueue``: its hand-off costs on every launch (a round 1.08-1.21 s against
  0.86-0.92 s serial, docs/decisions.md). Neither applies when the user chose a layer
  (``NUMBA_THREADING_LAYER``) or the loaded runtime waits passively anyway. Results do not
  depend on any of these choices: every parallel kernel's iterations write disjoint memory in a
  fixed order (spec_tests/test_threading_layer.py).
"""

from __future__ import annotations

import hashlib
import os
import sys
import types

import numpy as np

#: File names of the OpenMP runtimes a process shares by soname (GNU, LLVM, Intel). Vendored
#: copies under another name (scikit-learn's ``libgomp-<hash>.so``) are separate runtimes.
_OPENMP_SONAMES = ("libgomp.so", "libomp.so", "libiomp5.so")


def _openmp_files():
    """Paths of the OpenMP runtimes mapped into this process (/proc/self/maps), or None where
    that cannot be read (not Linux)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split(None, 5)[-1].strip() for line in f if "/" in line}
    except OSError:
        return None
    return {p for p in paths if shared_openmp(p.rsplit("/", 1)[-1])}


def openmp_loaded() -> bool:
    """Whether an OpenMP runtime that Numba's OpenMP layer would share is already mapped into
    this process (Linux: /proc/self/maps; elsewhere: whether PyTorch, which brings one, is
    imported)."""
    files = _openmp_files()
    return "torch" in sys.modules if files is None else bool(files)


def shared_openmp(file_name: str) -> bool:
    """Whether a mapped library's file name is an OpenMP runtime under its soname."""
    return file_name.startswith(_OPENMP_SONAMES)


os.environ.setdefault("NUMBA_OPT", "2")
_preloaded_openmp = openmp_loaded()
_passive = os.environ.get("OMP_WAIT_POLICY", "").strip().lower() == "passive"
if "GOMP_SPINCOUNT" not in os.environ:
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
_contended = ("NUMBA_THREADING_LAYER" not in os.environ and _preloaded_openmp and not _passive)

try:  # pragma: no cover - exercised by the numba-absent subprocess test
    import numba as _numba
except ImportError:  # numba absent: kernels run as plain Python
    _numba = None


def _own_openmp_runtime() -> bool:
    """Load Numba's OpenMP layer bound to a runtime of its own; whether that worked.

    The layer's library is loaded with RTLD_DEEPBIND, so it binds the runtime it was linked
    against (the system's libgomp) instead of the symbols of a runtime already loaded
    globally (PyTorch's copy). That runtime reads its settings as it loads, after the
    OMP_WAIT_POLICY default above. It counts as its own only if it is a file not mapped
    before; a process that had preloaded the very same file shares it, and gets False."""
    before = _openmp_files()
    if (_numba is None or before is None or not hasattr(os, "RTLD_DEEPBIND")
            or "numba.np.ufunc.omppool" in sys.modules):
        return False
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | os.RTLD_DEEPBIND)
    try:
        import numba.np.ufunc.omppool  # noqa: F401
    except ImportError:  # no OpenMP runtime for Numba on this machine
        return False
    finally:
        sys.setdlopenflags(flags)
    return bool(_openmp_files() - before)


_own_openmp = _contended and _own_openmp_runtime()
_workqueue = _contended and not _own_openmp

if _numba is not None and (_own_openmp or _workqueue):
    # On the config object, not in the environment (child processes would inherit it). Numba
    # re-reads its configuration from the environment whenever a NUMBA_* variable changed since
    # it last read it (at every compile), which would undo the assignment: NUMBA_OPT was just
    # set above, so re-read first. Numba picks the layer at the process's first parallel
    # launch, so this holds unless other code launched a Numba parallel function before.
    _numba.config.reload_config()
    _numba.config.THREADING_LAYER = "omp" if _own_openmp else "workqueue"


#: True when the ``parallel`` kernels are compiled serial (module docstring).
SERIAL_KERNELS: bool = _numba is not None and _workqueue


def threading_choice() -> str:
    """Which threading layer Numba's parallel kernels use here, and why (for the benchmarks)."""
    if _numba is None:
        return "no numba: kernels run as plain Python"
    if "NUMBA_THREADING_LAYER" in os.environ:
        return f"NUMBA_THREADING_LAYER={os.environ['NUMBA_THREADING_LAYER']} (the user's)"
    if SERIAL_KERNELS:
        return ("serial kernels, other parallel code on workqueue (an OpenMP runtime was "
                "already loaded with its own wait policy)")
    if _own_openmp:
        return ("omp on a runtime of its own (another OpenMP runtime was already loaded), "
                "OMP_WAIT_POLICY=" + os.environ.get("OMP_WAIT_POLICY", "unset"))
    return ("numba's default (the first of tbb, omp, workqueue it can load), OMP_WAIT_POLICY="
            + os.environ.get("OMP_WAIT_POLICY", "unset"))


HAVE_NUMBA: bool = _numba is not None
#: True when kernels are compiled (numba present and ``NUMBA_DISABLE_JIT`` unset).
JIT_ENABLED: bool = HAVE_NUMBA and not bool(int(os.environ.get("NUMBA_DISABLE_JIT", "0") or 0))

if HAVE_NUMBA:
    prange = _numba.prange
else:
    prange = range


# ---- the on-disk cache: a kernel also depends on the compiled helpers it calls ----------------
# Numba keys a cached kernel by the hash of its own source file. A kernel that calls a compiled
# helper of another file (the vectors and bit operations below, kernels/sums.py's pairwise sum)
# has that helper's machine code inside its cached build, so a change to the helper alone would
# leave the old code running until the cache was deleted. The cached builds of refimpl's
# kernels (and of the compiled functions in a checkout's tests and benchmarks, which call the
# helpers too) therefore carry the hash of these files in their stamp as well: a change to one
# of them recompiles them all once. spec_tests/test_kernel_cache.py checks that every file whose
# compiled code a kernel calls is listed here.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the refimpl package
#: Files (relative to the refimpl package) whose compiled helpers kernels of other files call.
HELPER_SOURCES = ("core/_jit.py", "kernels/sums.py")
_stamps: dict = {}


def helpers_stamp(root: str = _ROOT, names=HELPER_SOURCES) -> str:
    """SHA-256 over the helper files' bytes (recomputed when a file's size or time changes)."""
    stats = [os.stat(os.path.join(root, name)) for name in names]
    key = (root, *((name, st.st_size, st.st_mtime_ns) for name, st in zip(names, stats)))
    if key not in _stamps:
        digest = hashlib.sha256()
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                digest.update(name.encode() + b"\0" + f.read() + b"\0")
        _stamps[key] = digest.hexdigest()
    return _stamps[key]


_caching = None
if _numba is not None:
    from numba.core import caching as _caching

    # The locator list is numba's (CacheImpl._locator_classes, read at every cached decoration).
    _CACHE_IMPL = getattr(_caching, "CacheImpl", getattr(_caching, "_CacheImpl", None))
    if _CACHE_IMPL is None or not hasattr(_caching, "_CacheLocator"):  # pragma: no cover
        _caching = None  # another numba: its own stamps only (HELPER_STAMPED is False)

if _caching is not None:

    class _HelperStampedLocator(_caching._CacheLocator):
        """Numba's own choice of cache location for a function of the refimpl package (or of a
        checkout's tests and benchmarks), with :func:`helpers_stamp` added to its source stamp
        (other functions: not ours to place)."""

        root = _ROOT  # where HELPER_SOURCES are
        #: Whose functions get the stamp: the package, and a checkout's tests and benchmarks
        #: (their compiled functions call the helpers too).
        scope = (_ROOT, *(os.path.join(os.path.dirname(_ROOT), d)
                          for d in ("spec_tests", "benchmarks")))

        def __init__(self, inner):
            self._inner = inner
            self._py_file = getattr(inner, "_py_file", None)  # numba's warnings name it

        def ensure_cache_path(self):
            self._inner.ensure_cache_path()

        def get_cache_path(self):
            return self._inner.get_cache_path()

        def get_disambiguator(self):
            return self._inner.get_disambiguator()

        def get_source_stamp(self):
            return (self._inner.get_source_stamp(), helpers_stamp(self.root))

        @classmethod
        def from_function(cls, py_func, py_file):
            path = os.path.abspath(py_file)
            if not any(path.startswith(os.path.join(d, "")) for d in cls.scope):
                return None
            for other in _CACHE_IMPL._locator_classes:
                if other is not cls and not issubclass(other, cls):
                    inner = other.from_function(py_func, py_file)
                    if inner is not None:
                        return cls(inner)
            return None

    if not any(issubclass(c, _HelperStampedLocator)
               for c in _CACHE_IMPL._locator_classes):
        _CACHE_IMPL._locator_classes.insert(0, _HelperStampedLocator)

#: True when refimpl's cached kernel builds carry :func:`helpers_stamp` (numba's cache API known).
HELPER_STAMPED: bool = _caching is not None


def njit(fn=None, *, parallel: bool = False):
    """Compile ``fn`` in nopython mode with the project's flags, or return it unchanged.

    Use as ``@njit`` or ``@njit(parallel=True)``.
    """

    def wrap(f):
        if not HAVE_NUMBA:
            return f
        if not parallel or not JIT_ENABLED:  # (disabled: numba returns f itself)
            return _numba.njit(cache=True, parallel=parallel, fastmath=False, nogil=True)(f)
        serial = _numba.njit(cache=True, fastmath=False, nogil=True)(_serial_twin(f))
        if SERIAL_KERNELS:
            return serial
        return _ByThreads(_numba.njit(cache=True, parallel=True, fastmath=False, nogil=True)(f),
                          serial)

    if fn is None:
        return wrap
    return wrap(fn)


class _ByThreads:
    """A parallel kernel that runs its serial build when Numba has one thread: a parallel region
    costs a launch even then (a FedMef run of the experiment grid at one thread took 2-4% longer
    than with serial kernels, docs/decisions.md). Either build gives the same bytes."""

    __slots__ = ("parallel", "serial")

    def __init__(self, parallel, serial):
        self.parallel, self.serial = parallel, serial

    def __call__(self, *args):
        return (self.serial if _numba.get_num_threads() == 1 else self.parallel)(*args)


def _serial_twin(f):
    """``f`` under the name ``<name>_serial``: the same code, compiled without ``parallel``
    (``prange`` is then ``range``). Numba's on-disk cache is keyed by the function's name and
    signature, not by its flags, so the two builds need two names."""
    twin = types.FunctionType(f.__code__, f.__globals__, f.__name__ + "_serial", f.__defaults__,
                              f.__closure__)
    twin.__qualname__ = f.__qualname__ + "_serial"
    twin.__module__ = f.__module__
    twin.__doc__ = f.__doc__
    return twin


# ---- bit operations on machine words (C: __builtin_ctzll, __builtin_popcountll) ---------------
def trailing_zeros(m) -> int:
    """The index of the lowest set bit of a NONZERO unsigned word m (np.uint8..np.uint64):
    the number of trailing zero bits. Compiled, it is one instruction (LLVM cttz); a kernel
    that walks the set bits of a word (``m &= m - 1``) then costs per set bit, not per bit."""
    v = int(m)
    return (v & -v).bit_length() - 1


def popcount(m) -> int:
    """The number of set bits of an unsigned word m (compiled: LLVM ctpop)."""
    return int(m).bit_count()


if _numba is not None:
    from llvmlite import ir as _ir
    from numba.core import types as _types
    from numba.extending import intrinsic as _intrinsic
    from numba.extending import overload as _overload

    def _to_int64(builder, value, width):
        return builder.zext(value, _ir.IntType(64)) if width < 64 else value

    @_intrinsic
    def _cttz(typingctx, m):
        if not isinstance(m, _types.Integer) or m.signed:
            return None

        def codegen(context, builder, sig, args):  # flag 1: a zero input is undefined
            r = builder.cttz(args[0], _ir.Constant(_ir.IntType(1), 1))
            return _to_int64(builder, r, m.bitwidth)

        return _types.int64(m), codegen

    @_intrinsic
    def _ctpop(typingctx, m):
        if not isinstance(m, _types.Integer) or m.signed:
            return None

        def codegen(context, builder, sig, args):
            return _to_int64(builder, builder.ctpop(args[0]), m.bitwidth)

        return _types.int64(m), codegen

    @_overload(trailing_zeros)
    def _trailing_zeros_compiled(m):
        if isinstance(m, _types.Integer) and not m.signed:
            return lambda m: _cttz(m)
        return None

    @_overload(popcount)
    def _popcount_compiled(m):
        if isinstance(m, _types.Integer) and not m.signed:
            return lambda m: _ctpop(m)
        return None


# ---- short vectors of floats in registers (C: __m256 / float32x4x2_t, or an array of lanes) ---
# A kernel whose sums must keep their order can still keep several sums in registers: each lane
# of a vector is its own sum, added in the same order as the scalar loop would (vec_add and
# vec_mul round every lane as the scalar ops do; there is no fused multiply-add). LLVM's loop
# vectoriser only vectorises an innermost loop over consecutive entries, whose sums then live
# in memory; with these, a loop over samples can carry 8 positions' sums per register
# (masked_conv's weight gradient). A vector is VEC_BYTES wide: 8 float32 or 4 float64 lanes
# (one AVX register; LLVM splits it on narrower machines, lane results unchanged). The
# kernels' cached builds carry this file's hash (HELPER_SOURCES): a change here recompiles them.
VEC_BYTES = 32


def vec_lanes(a) -> int:
    """Lanes of a vector of ``a``'s dtype (a: an array)."""
    return VEC_BYTES // a.itemsize


def vec_zero(a):
    """A vector of +0.0 in ``a``'s dtype."""
    return np.zeros(vec_lanes(a), dtype=a.dtype)


def _vec_bounds(name, a, i):
    """Interpreted only: compiled, the kernel checks its bounds up front (module docstring)."""
    if i < 0 or i + vec_lanes(a) > a.shape[0]:
        raise IndexError(f"{name}: lanes {i}..{i + vec_lanes(a) - 1} outside "
                         f"0..{a.shape[0] - 1}")


def vec_load(a, i: int):
    """a[i : i + lanes] (a 1-d contiguous)."""
    _vec_bounds("vec_load", a, i)
    return a[i:i + vec_lanes(a)].copy()


def vec_store(a, i: int, v) -> None:
    """a[i : i + lanes] = v (a 1-d contiguous)."""
    _vec_bounds("vec_store", a, i)
    a[i:i + vec_lanes(a)] = v


def vec_add(u, v):
    """Lane by lane u + v."""
    return u + v


def vec_mul(u, v):
    """Lane by lane u · v."""
    return u * v


def vec_accumulate(t, v, count: int):
    """((t + v[0]) + v[1]) + ... + v[count − 1]: the first ``count`` lanes (clipped to 0..lanes)
    added to the scalar t one by one, in lane order (a vector of positions continuing a running
    sum in position order). Compiled, a whole vector's adds unroll with constant lane indices."""
    for i in range(min(count, v.shape[0])):
        t = t + v[i]
    return t


if _numba is not None:
    from numba.core.datamodel import models as _models
    from numba.extending import register_model as _register_model

    class _Vec(_types.Type):
        """VEC_BYTES of one float dtype, as one LLVM vector value (a register)."""

        def __init__(self, dtype):
            self.dtype = dtype
            self.lanes = VEC_BYTES // (dtype.bitwidth // 8)
            super().__init__(name=f"Vec({dtype} x {self.lanes})")

    @_register_model(_Vec)
    class _VecModel(_models.PrimitiveModel):
        def __init__(self, dmm, fe_type):
            lane = dmm.lookup(fe_type.dtype).get_value_type()
            super().__init__(dmm, fe_type, _ir.VectorType(lane, fe_type.lanes))

    def _vec_array(a) -> bool:
        return (isinstance(a, _types.Array) and a.ndim == 1 and a.layout == "C"
                and isinstance(a.dtype, _types.Float))

    def _lane_pointer(context, builder, aryty, ary, i, vty):
        data = context.make_array(aryty)(context, builder, ary).data
        return builder.bitcast(builder.gep(data, [i]), vty.as_pointer())

    @_intrinsic
    def _vload(typingctx, a, i):
        if not (_vec_array(a) and isinstance(i, _types.Integer)):
            return None
        vt = _Vec(a.dtype)

        def codegen(context, builder, sig, args):
            vty = context.get_value_type(vt)
            ptr = _lane_pointer(context, builder, sig.args[0], args[0], args[1], vty)
            return builder.load(ptr, align=a.dtype.bitwidth // 8)

        return vt(a, i), codegen

    @_intrinsic
    def _vstore(typingctx, a, i, v):
        if not (_vec_array(a) and isinstance(i, _types.Integer) and isinstance(v, _Vec)
                and v.dtype == a.dtype):
            return None

        def codegen(context, builder, sig, args):
            ptr = _lane_pointer(context, builder, sig.args[0], args[0], args[1], args[2].type)
            builder.store(args[2], ptr, align=a.dtype.bitwidth // 8)
            return context.get_dummy_value()

        return _types.void(a, i, v), codegen

    @_intrinsic
    def _vzero(typingctx, a):
        if not _vec_array(a):
            return None
        vt = _Vec(a.dtype)

        def codegen(context, builder, sig, args):
            return _ir.Constant(context.get_value_type(vt), None)  # all lanes +0.0

        return vt(a), codegen

    def _vec_binary(op):
        """An intrinsic for one LLVM float instruction on two vectors (named _v<op>)."""

        def binary(typingctx, u, v):
            if not (isinstance(u, _Vec) and u == v):
                return None

            def codegen(context, builder, sig, args):
                return getattr(builder, op)(args[0], args[1])

            return u(u, v), codegen

        binary.__name__ = binary.__qualname__ = f"_v{op}"
        return _intrinsic(binary)

    _vadd, _vmul = _vec_binary("fadd"), _vec_binary("fmul")

    @_intrinsic
    def _vget(typingctx, v, i):
        if not (isinstance(v, _Vec) and isinstance(i, _types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            return builder.extract_element(args[0], args[1])

        return v.dtype(v, i), codegen

    @_overload(vec_lanes)
    def _vec_lanes_compiled(a):
        if _vec_array(a):
            lanes = VEC_BYTES // (a.dtype.bitwidth // 8)
            return lambda a: lanes
        return None

    @_overload(vec_zero)
    def _vec_zero_compiled(a):
        return (lambda a: _vzero(a)) if _vec_array(a) else None

    @_overload(vec_load)
    def _vec_load_compiled(a, i):
        return (lambda a, i: _vload(a, i)) if _vec_array(a) else None

    @_overload(vec_store)
    def _vec_store_compiled(a, i, v):
        return (lambda a, i, v: _vstore(a, i, v)) if _vec_array(a) else None

    @_overload(vec_add)
    def _vec_add_compiled(u, v):
        return (lambda u, v: _vadd(u, v)) if isinstance(u, _Vec) else None

    @_overload(vec_mul)
    def _vec_mul_compiled(u, v):
        return (lambda u, v: _vmul(u, v)) if isinstance(u, _Vec) else None

    @_overload(vec_accumulate)
    def _vec_accumulate_compiled(t, v, count):
        if not isinstance(v, _Vec):
            return None
        lanes = v.lanes

        def accumulate(t, v, count):
            if count >= lanes:  # a constant trip count: unrolled, each lane a constant index
                for i in range(lanes):
                    t += _vget(v, i)
            else:
                for i in range(count):
                    t += _vget(v, i)
            return t

        return accumulate


def set_num_threads(n: int) -> None:
    """Set the number of threads numba's parallel kernels use (no-op without numba)."""
    if JIT_ENABLED:
        _numba.set_num_threads(int(n))


def get_num_threads() -> int:
    return int(_numba.get_num_threads()) if JIT_ENABLED else 1


def interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` is a Ctrl-C. A KeyboardInterrupt that arrives while a compiled kernel
    runs is raised when the kernel returns, and CPython then reports it as ``SystemError:
    CPUDispatcher(...) returned a result with an exception set`` with the KeyboardInterrupt as
    its cause; this looks through that chain."""
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, KeyboardInterrupt):
            return True
        if not isinstance(exc, SystemError):
            return False
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False
