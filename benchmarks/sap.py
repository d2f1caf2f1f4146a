"""Cost of SAP's select + encode relative to the conv forward it belongs to (issue 12 target:
at most 15% of that forward, as the median over the runs).

Reference layer: x (32, 16, 16, 16) float32, w (32, 16, 3, 3), padding 1, stride 1. The input is a
ReLU output (half exact zeros, as the SAP input of every conv after the stem), or ``--input
normal``. Every figure is timed in this process against the forward, interleaved rep by rep
(so machine load hits both alike); each ratio is the median (and min..max) over the reps of
(select + encode) / forward in the same rep. Thread counts are explicit (Numba, BLAS): SAP's
kernels are sequential, so the default is one thread, the setting of the demo and of the
experiment grid. The first call of every kernel (numba compilation) is excluded.

    python benchmarks/sap.py [--threads 1] [--reps 60] [--input relu|normal]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import Figure, set_threads

from refimpl import functional as F
from refimpl import sap as S
from refimpl.kernels import cache as K

GAMMAS = (0.5, 0.7, 0.9)
POLICIES = ("auto", "bitmap", "index", "dense")
TARGET = 0.15


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def interleaved(cases: dict, reps: int) -> dict:
    """Every rep runs every case once. Returns name -> [seconds per rep]."""
    for fn in cases.values():
        fn()  # compile / warm up
    times = {name: [] for name in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            times[name].append(_time(fn))
    return times


def measure(threads: int = 1, reps: int = 60, kind: str = "relu") -> dict:
    _keep, info = set_threads(threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 16, 16, 16)).astype(np.float32)
    if kind == "relu":
        x = np.maximum(x, np.float32(0))
    w = (rng.standard_normal((32, 16, 3, 3)) * 0.1).astype(np.float32)
    xf = x.reshape(-1)
    cases = {"forward": lambda: F.conv2d(x, w, padding=1)}
    for g in GAMMAS:
        k = S.keep_count(x.size, g)
        cases[f"select jit {g}"] = lambda k=k: K.keep_bits(xf, k, "jit")
        cases[f"select np {g}"] = lambda k=k: K.keep_bits(xf, k, "np")
        for policy in POLICIES:
            pol = S.SapPolicy.make(g, policy)
            cases[f"encode {policy} {g}"] = lambda pol=pol: S.prune_and_encode(x, pol)
            cache = S.prune_and_encode(x, pol)
            cases[f"decode {policy} {g}"] = lambda cache=cache: S.decode(cache)
    t = interleaved(cases, reps)
    fwd = t["forward"]
    out = {"info": info, "threads": threads, "input": kind, "reps": reps,
           "forward_ms": Figure(v * 1e3 for v in fwd)}
    for name, v in t.items():
        if name != "forward":
            out[name] = Figure(a / b for a, b in zip(v, fwd, strict=True))
            out[name + " ms"] = Figure(a * 1e3 for a in v)
    worst = max((g for g in GAMMAS), key=lambda g: out[f"encode auto {g}"].median)
    out["worst_auto"] = out[f"encode auto {worst}"]
    out["worst_gamma"] = worst
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=60)
    ap.add_argument("--input", choices=("relu", "normal"), default="relu")
    args = ap.parse_args(argv)
    r = measure(args.threads, args.reps, args.input)
    print(f"reference conv forward N=32 16->32 ch 16x16 3x3 pad 1 float32, input {args.input}; "
          f"{r['info']}; {args.reps} interleaved reps: {r['forward_ms'].fmt(digits=3)} ms")
    print(f"{'gamma':>6} {'policy':<8}{'format':<8}{'select+encode % fwd':>28}"
          f"{'decode % fwd':>26}")
    for g in GAMMAS:
        for policy in POLICIES:
            fmt = S.choose_format(policy, 32 * 16 * 16 * 16, S.keep_count(32 * 16 ** 3, g), 4)
            enc, dec = r[f"encode {policy} {g}"], r[f"decode {policy} {g}"]
            print(f"{g:>6} {policy:<8}{fmt:<8}{enc.fmt(100, 1, '%'):>28}"
                  f"{dec.fmt(100, 1, '%'):>26}")
    print()
    print("selection alone (keep mask), % of the forward: radix select (jit) vs np.partition twin")
    for g in GAMMAS:
        print(f"  gamma {g}: jit {r[f'select jit {g}'].fmt(100, 1, '%')}, "
              f"np {r[f'select np {g}'].fmt(100, 1, '%')}")
    worst = r["worst_auto"]
    verdict = "meets" if worst.median <= TARGET else "MISSES"
    print(f"\nworst select+encode under policy auto (gamma {r['worst_gamma']}): median "
          f"{100 * worst.median:.1f}% of the forward; {verdict} the target of {100 * TARGET:.0f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
