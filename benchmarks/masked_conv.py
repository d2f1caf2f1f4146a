"""Masked conv2d forward + backward (input gradient and the *masked* weight gradient: the
ordinary training step) at several densities, as ratios to PyTorch's dense conv on the same
layer, measured in the same process with the same thread count.

Reference layer: N=32, 16 -> 32 channels, 16x16, 3x3, padding 1, float32; random masks.

    .venv/bin/python benchmarks/masked_conv.py [--threads 2] [--repeat 7]
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import best_of, set_threads

from refimpl.kernels import conv as K
from refimpl.kernels import masked_conv as MK


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--densities", type=float, nargs="+", default=[1.0, 0.5, 0.1, 0.05])
    args = ap.parse_args(argv)
    _keep, info = set_threads(args.threads)
    import torch

    rng = np.random.default_rng(0)
    n, c, o, hw, k = 32, 16, 32, 16, 3
    geom = ((1, 1), (1, 1), (1, 1), 1)
    x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
    w0 = (rng.standard_normal((o, c, k, k)) * 0.1).astype(np.float32)
    out_shape = K.conv2d_output_shape(x.shape, w0.shape, *geom)
    g = rng.standard_normal(out_shape).astype(np.float32)

    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w0, requires_grad=True)
    tg = torch.tensor(g)

    def theirs():
        tx.grad = tw.grad = None
        torch.nn.functional.conv2d(tx, tw, padding=1).backward(tg)

    t_torch = best_of(theirs, args.repeat)
    print(f"masked conv2d fwd+bwd (masked weight grad), N={n}, {c}->{o} ch, {hw}x{hw}, {k}x{k}, "
          f"pad 1, float32; {info}")
    print(f"  {'pytorch dense':<26}{t_torch * 1e3:8.2f} ms   1.00x")
    for d in args.densities:
        mask = rng.random(w0.shape) < d
        w = w0 * mask

        def ours(w=w, mask=mask):
            MK.masked_conv2d_forward(x, w, mask, *geom, out_shape, impl="jit")
            MK.masked_conv2d_grad_input(g, w, mask, x.shape, *geom, impl="jit")
            MK.masked_conv2d_grad_weight(x, g, mask, *geom, impl="jit")

        t = best_of(ours, args.repeat)
        print(f"  {f'refimpl masked d={d:g}':<26}{t * 1e3:8.2f} ms {t / t_torch:6.2f}x")


if __name__ == "__main__":
    main()
