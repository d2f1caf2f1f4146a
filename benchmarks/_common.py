"""Shared benchmark plumbing: explicit thread counts for every library, and a best-of timer.

Benchmarks never assert speed; they print ratios against a peer run in the same process.
"""

from __future__ import annotations

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, ROOT)


def set_threads(n: int):
    """Pin numba, BLAS (threadpoolctl) and torch to ``n`` threads; returns the threadpoolctl
    limiter (keep a reference) and a one-line description of what runs."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from refimpl.core import _jit

    _jit.set_num_threads(n)
    limiter = threadpool_limits(limits=n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass
    blas = ", ".join(f"{i['internal_api']} {i.get('version')} ({i.get('architecture')}) x"
                     f"{i['num_threads']}" for i in threadpool_info())
    return limiter, f"threads={n}; BLAS: {blas}"


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
