"""Dense conv2d forward + backward (input and weight gradients) of refimpl's kernel paths, as
ratios to PyTorch CPU measured in the same process with the same thread count, and each op's
achieved GFLOP/s beside this machine's sgemm rate (benchmarks/_common.py). The default path's
step is the training step of ops/conv: the cotangent moves once into the channel-major layout
both gradients read (``kernels.conv.channel_major``); each op's GFLOP/s times it alone, from
the array cotangent.

Reference layer (issue "foundation"): N=32, 16 -> 32 channels, 16x16, 3x3, padding 1, float32.

    .venv/bin/python benchmarks/conv.py [--threads 2] [--repeats 7] [--numba]
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import OP_INNER, Figure, paired, ratio, set_threads, sgemm_rate

from refimpl.kernels import conv as K

LAYER = "N=32, 16->32 ch, 16x16, 3x3, pad 1, float32"


def reference(rng, n=32, c=16, o=32, hw=16, k=3):
    x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
    w = (rng.standard_normal((o, c, k, k)) * 0.1).astype(np.float32)
    geom = ((1, 1), (1, 1), (1, 1), 1)
    g = rng.standard_normal(K.conv2d_output_shape(x.shape, w.shape, *geom)).astype(np.float32)
    return x, w, g, geom


def flops(x, w, g) -> float:
    """Multiply-adds x 2 of one conv pass (forward, input or weight gradient: all equal)."""
    return 2.0 * g.size * w[0].size


def measure(threads: int, repeats: int = 7, numba: bool = False) -> dict:
    """Figures at ``threads`` threads: ratio to PyTorch of fwd+bwd, GFLOP/s of each op."""
    _keep, info = set_threads(threads)
    import torch

    x, w, g, geom = reference(np.random.default_rng(0))
    tx, tw, tg = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True), \
        torch.tensor(g)

    def theirs():
        tx.grad = tw.grad = None
        torch.nn.functional.conv2d(tx, tw, padding=1).backward(tg)

    def op(name, impl):
        return {"forward": lambda: K.conv2d_forward(x, w, *geom, impl=impl),
                "grad_input": lambda: K.conv2d_grad_input(g, w, x.shape, *geom, impl=impl),
                "grad_weight": lambda: K.conv2d_grad_weight(x, g, w.shape, *geom,
                                                            impl=impl)}[name]

    def step(impl):
        def run():
            for name in ("forward", "grad_input", "grad_weight"):
                op(name, impl)()
        return run

    def training_step():
        """The dense layer's training step as ops/conv runs it: the forward, then g moved once
        into the channel-major layout that both gradients' GEMMs read."""
        K.conv2d_forward(x, w, *geom, impl="np")
        gcm = K.channel_major(g)
        K.conv2d_grad_input(gcm, w, x.shape, *geom, impl="np")
        K.conv2d_grad_weight(x, gcm, w.shape, *geom, impl="np")

    cases = {"torch": theirs, "np": training_step}
    cases.update({f"np {name}": op(name, "np") for name in ("forward", "grad_input",
                                                            "grad_weight")})
    if numba:
        cases["jit"] = step("jit")
    times = paired(cases, repeats=repeats, inner=OP_INNER)
    f = flops(x, w, g)
    out = {"info": info, "layer": LAYER, "threads": threads,
           "ratio_np": ratio(times, "np", "torch"),
           "torch_gflops": Figure(3 * f / t / 1e9 for t in times["torch"]),
           "sgemm_gflops": sgemm_rate(threads)}
    for name in ("forward", "grad_input", "grad_weight"):
        out[f"gflops {name}"] = Figure(f / t / 1e9 for t in times[f"np {name}"])
    if numba:
        out["ratio_jit"] = ratio(times, "jit", "torch")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--numba", action="store_true",
                    help="also time the direct Numba loops (the compiled oracle; slow)")
    args = ap.parse_args(argv)
    r = measure(args.threads, args.repeats, args.numba)
    print(f"conv2d fwd+bwd, {LAYER}; {r['info']}; median (min..max) of {args.repeats} pairs")
    print(f"  refimpl np (default) / pytorch   {r['ratio_np'].fmt()}x")
    if args.numba:
        print(f"  refimpl numba loops / pytorch    {r['ratio_jit'].fmt()}x")
    for name in ("forward", "grad_input", "grad_weight"):
        print(f"  {name:<12} {r[f'gflops {name}'].fmt(digits=1)} GFLOP/s")
    print(f"  pytorch fwd+bwd {r['torch_gflops'].fmt(digits=1)} GFLOP/s; "
          f"sgemm {r['sgemm_gflops'].fmt(digits=1)} GFLOP/s")


if __name__ == "__main__":
    main()
