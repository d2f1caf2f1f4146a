"""Shared benchmark plumbing: explicit thread counts for every library, paired timings, the
machine's sgemm rate, and a description of the machine.

Benchmarks never assert speed; they print ratios against a peer run in the same process. A
figure is measured as ``repeats`` pairs: in each pair ours and the peer run back to back (each
the best of a few inner runs; :data:`OP_INNER` for one layer's millisecond step), and the pair
gives one ratio; the figure is the median of those
ratios with their spread (min..max), so a burst of load on a shared machine widens the spread
instead of moving the figure.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, ROOT)

# PyTorch first: it loads its OpenMP runtime with the environment as the user left it, before
# refimpl.core._jit sets OMP_WAIT_POLICY (passive), so the peer runs with its defaults; refimpl
# then gives Numba's OpenMP layer a runtime of its own with passive waits (refimpl/core/_jit.py:
# _own_openmp_runtime), or, where it cannot, compiles its parallel kernels serial.
# REFIMPL_BENCH_NO_TORCH=1: a child process that times refimpl alone, as a user runs it.
if os.environ.get("REFIMPL_BENCH_NO_TORCH") != "1":
    try:
        import torch  # noqa: F401
    except ImportError:
        pass


def set_threads(n: int):
    """Pin numba, BLAS (threadpoolctl) and torch to ``n`` threads; returns the threadpoolctl
    limiter (keep a reference) and a one-line description of what runs."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from refimpl.core import _jit
    from refimpl.core.alloc import keep_freed_memory

    memory = keep_freed_memory()  # as the CLI runs (refimpl/core/alloc.py); PyTorch shares it
    _jit.set_num_threads(n)
    limiter = threadpool_limits(limits=n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    blas = ", ".join(f"{i['internal_api']} {i.get('version')} ({i.get('architecture')}) x"
                     f"{i['num_threads']}" for i in threadpool_info())
    return limiter, (f"threads={n}; BLAS: {blas}; Numba layer: {_jit.threading_choice()}; "
                     f"{memory}")


def best_of(fn, repeat: int = 7, warmup: int = 2) -> float:
    """Best wall time of ``fn()`` in seconds over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


class Figure:
    """The samples of one measured quantity: median and spread (min, max)."""

    def __init__(self, samples):
        self.samples = [float(s) for s in samples]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def lo(self) -> float:
        return min(self.samples)

    @property
    def hi(self) -> float:
        return max(self.samples)

    def fmt(self, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
        return (f"{self.median * scale:.{digits}f}{unit} "
                f"({self.lo * scale:.{digits}f}..{self.hi * scale:.{digits}f})")

    def as_dict(self) -> dict:
        return {"median": self.median, "min": self.lo, "max": self.hi, "n": len(self.samples)}


#: Inner runs per case for millisecond operations (one conv layer's step); each case keeps its
#: best. After its last call a library's worker threads keep spinning, and the next case's first
#: runs share the two cores with them: PyTorch's OpenMP team for about 9 ms (its process CPU
#: time while it sleeps right after a conv step: 0.46 of the wall time over 20 ms, 0.18 over
#: 50 ms), OpenBLAS's threads for about 110 ms (but they yield, and PyTorch's step timed right
#: after an sgemm was no slower). On the reference conv layer, with PyTorch interleaved, the
#: best of 3 gave refimpl 3.61 ms median (2.97..4.58) against 2.92 with nothing interleaved,
#: and the best of 10 gave 2.84 (2.78..3.01). Ten runs of a sub-millisecond step can all fall
#: inside PyTorch's 9 ms: the masked conv at density 0.1 with parallel kernels came out at
#: 0.57, 0.57 and 0.44x PyTorch in three runs with 10, and 0.44, 0.45 and 0.44x with 30.
#: Both cases get the same count, so neither gains from a longer best-of.
OP_INNER = 30


def paired(cases: dict, repeats: int = 7, inner: int = 3, warmup: int = 1) -> dict:
    """Interleaved timings: per repeat, every case runs ``inner`` times back to back and keeps
    its best wall time. Returns {name: [seconds per repeat]}."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    out = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            best = float("inf")
            for _ in range(inner):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
            out[name].append(best)
    return out


def ratio(times: dict, num: str, den: str) -> Figure:
    """The per-repeat ratio times[num] / times[den]."""
    return Figure(a / b for a, b in zip(times[num], times[den], strict=True))


def sgemm_rate(threads: int, size: int = 1024, repeats: int = 5) -> Figure:
    """This machine's float32 GEMM rate (GFLOP/s) through NumPy's BLAS at ``threads`` threads,
    per repeat the best of 3 products of two size x size matrices: the physical limit the
    convolutions are compared with."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(np.float32)
    b = rng.standard_normal((size, size)).astype(np.float32)
    with threadpool_limits(limits=threads):
        times = paired({"gemm": lambda: a @ b}, repeats=repeats, inner=3)["gemm"]
    return Figure(2 * size ** 3 / t / 1e9 for t in times)


def machine() -> dict:
    """CPU model, core count and library versions, for the report's header."""
    import numpy as np

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__}
    for mod in ("numba", "torch", "threadpoolctl"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = "absent"
    try:
        info["load"] = " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        info["load"] = "?"
    return info
