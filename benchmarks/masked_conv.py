"""Masked conv2d forward + backward (input gradient and the *masked* weight gradient: the
ordinary training step) at several densities, as ratios to PyTorch's dense conv on the same
layer, measured in the same process with the same thread count; and the masked kernels'
achieved GFLOP/s (counting the active weights' multiply-adds only) beside the sgemm rate.

Reference layer: N=32, 16 -> 32 channels, 16x16, 3x3, padding 1, float32; random masks.

    .venv/bin/python benchmarks/masked_conv.py [--threads 2] [--repeats 7]
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import OP_INNER, Figure, paired, ratio, set_threads
from conv import LAYER, reference

from refimpl.kernels import masked_conv as MK

DENSITIES = (1.0, 0.5, 0.1, 0.05)


def measure(threads: int, repeats: int = 7, densities=DENSITIES, alone: bool = False) -> dict:
    """Ratios to PyTorch's dense conv, timed in this process; ``alone``: this process has not
    loaded PyTorch (REFIMPL_BENCH_NO_TORCH=1), so refimpl's parallel kernels run as a user runs
    them, and only their seconds are returned."""
    _keep, info = set_threads(threads)
    torch = None
    if not alone:
        import torch

    rng = np.random.default_rng(0)
    x, w0, g, geom = reference(rng)
    if torch is not None:
        tx, tw, tg = torch.tensor(x, requires_grad=True), torch.tensor(w0, requires_grad=True), \
            torch.tensor(g)

    def theirs():
        tx.grad = tw.grad = None
        torch.nn.functional.conv2d(tx, tw, padding=1).backward(tg)

    cases, nnz = ({} if torch is None else {"torch": theirs}), {}
    for d in densities:
        index = MK.build_index(rng.random(w0.shape) < d)
        val = MK.gather(w0, index)
        nnz[d] = index.nnz

        def ours(index=index, val=val):
            MK.masked_conv2d_forward(x, index, val, None, *geom, g.shape)
            dx, dval = np.zeros(x.shape, np.float32), np.zeros(index.nnz, np.float32)
            MK.masked_conv2d_backward(g, x, index, val, *geom, dx=dx, dval=dval)

        cases[f"d={d:g}"] = ours
    times = paired(cases, repeats=repeats, inner=OP_INNER)
    if alone:
        return {f"d={d:g}": times[f"d={d:g}"] for d in densities}
    out = {"info": info, "layer": LAYER, "threads": threads, "torch_s": Figure(times["torch"])}
    for d in densities:
        out[f"ratio d={d:g}"] = ratio(times, f"d={d:g}", "torch")
        out[f"gflops d={d:g}"] = Figure(3 * 2.0 * nnz[d] * g.shape[0] * g.shape[2] * g.shape[3]
                                        / t / 1e9 for t in times[f"d={d:g}"])
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--densities", type=float, nargs="+", default=list(DENSITIES))
    ap.add_argument("--alone-json", action="store_true",
                    help="time refimpl only (this process must not load PyTorch; run with "
                    "REFIMPL_BENCH_NO_TORCH=1) and print the seconds per density as JSON")
    args = ap.parse_args(argv)
    if args.alone_json:
        import json

        print(json.dumps(measure(args.threads, args.repeats, args.densities, alone=True)))
        return
    r = measure(args.threads, args.repeats, args.densities)
    print(f"masked conv2d fwd+bwd (masked weight grad), {LAYER}; {r['info']}; median (min..max) "
          f"of {args.repeats} pairs, ratio to pytorch's dense conv")
    for d in args.densities:
        print(f"  density {d:<5g} {r[f'ratio d={d:g}'].fmt()}x   "
              f"{r[f'gflops d={d:g}'].fmt(digits=1)} GFLOP/s (active weights)")


if __name__ == "__main__":
    main()
