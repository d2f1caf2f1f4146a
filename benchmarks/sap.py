"""Cost of SAP's select + encode relative to the conv forward it belongs to (issue 4 target:
under 25% of that forward).

Reference layer: x (32, 16, 16, 16) float32, w (32, 16, 3, 3), padding 1, stride 1. The input is a
ReLU output (half exact zeros, as the SAP input of every conv after the stem), or ``--input
normal``. Every figure is timed in this process against the forward, interleaved rep by rep
(so machine load hits both alike); ratios use the best of ``--reps`` runs, medians are shown
too. Thread counts are explicit: numba via refimpl.core._jit.set_num_threads, BLAS via
threadpoolctl. The first call of every kernel (numba compilation) is excluded.

    python benchmarks/sap.py [--threads 1] [--reps 60] [--input relu|normal]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from refimpl import functional as F
from refimpl import sap as S
from refimpl.core import _jit
from refimpl.kernels import cache as K

GAMMAS = (0.5, 0.7, 0.9)
TARGET = 0.25


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(cases: dict, reps: int) -> dict:
    """Interleaved timings: every rep runs every case once. Returns name -> (best, median)."""
    for fn in cases.values():
        fn()  # compile / warm up
    times = {name: [] for name in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            times[name].append(_time(fn))
    return {name: (min(ts), float(np.median(ts))) for name, ts in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=60)
    ap.add_argument("--input", choices=("relu", "normal"), default="relu")
    args = ap.parse_args(argv)
    _jit.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 16, 16, 16)).astype(np.float32)
    if args.input == "relu":
        x = np.maximum(x, np.float32(0))
    w = (rng.standard_normal((32, 16, 3, 3)) * 0.1).astype(np.float32)
    xf = x.reshape(-1)
    cases = {"forward": lambda: F.conv2d(x, w, padding=1)}
    for g in GAMMAS:
        k = S.keep_count(x.size, g)
        cases[f"select jit {g}"] = lambda k=k: K.keep_bits(xf, k, "jit")
        cases[f"select np {g}"] = lambda k=k: K.keep_bits(xf, k, "np")
        for policy in ("auto", "bitmap", "index", "dense"):
            pol = S.SapPolicy.make(g, policy)
            cases[f"encode {policy} {g}"] = lambda pol=pol: S.prune_and_encode(x, pol)
            cache = S.prune_and_encode(x, pol)
            cases[f"decode {policy} {g}"] = lambda cache=cache: S.decode(cache)
    with threadpool_limits(limits=args.threads):
        res = measure(cases, args.reps)
    fwd = res["forward"][0]
    print(f"reference conv forward N=32 16->32 ch 16x16 3x3 pad 1 float32, input {args.input}, "
          f"{args.threads} thread(s) (numba and BLAS), best of {args.reps}: {fwd * 1e3:.3f} ms "
          f"(median {res['forward'][1] * 1e3:.3f} ms)")
    print(f"{'gamma':>6} {'policy':<8}{'format':<8}{'select+encode':>15}{'% fwd':>8}"
          f"{'median %':>10}{'decode':>10}{'% fwd':>8}")
    worst = 0.0
    for g in GAMMAS:
        for policy in ("auto", "bitmap", "index", "dense"):
            fmt = S.choose_format(policy, x.size, S.keep_count(x.size, g), 4)
            enc, enc_med = res[f"encode {policy} {g}"]
            dec = res[f"decode {policy} {g}"][0]
            if policy == "auto":
                worst = max(worst, enc / fwd)
            print(f"{g:>6} {policy:<8}{fmt:<8}{enc * 1e3:>12.3f} ms{100 * enc / fwd:>7.1f}%"
                  f"{100 * enc_med / res['forward'][1]:>9.1f}%{dec * 1e3:>7.3f} ms"
                  f"{100 * dec / fwd:>7.1f}%")
    print()
    print("selection alone (keep mask), radix select (jit) vs np.partition twin:")
    for g in GAMMAS:
        j, n = res[f"select jit {g}"][0], res[f"select np {g}"][0]
        print(f"  gamma {g}: jit {j * 1e3:.3f} ms ({100 * j / fwd:.1f}%), np {n * 1e3:.3f} ms "
              f"({100 * n / fwd:.1f}%)")
    verdict = "meets" if worst < TARGET else "MISSES"
    print(f"\nworst select+encode under policy auto: {100 * worst:.1f}% of the forward; "
          f"{verdict} the target of {100 * TARGET:.0f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
