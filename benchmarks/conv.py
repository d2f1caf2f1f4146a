"""Dense conv2d forward + backward (input and weight gradients) of refimpl's kernel paths, as
ratios to PyTorch CPU measured in the same process with the same thread count.

Reference layer (issue "foundation"): N=32, 16 -> 32 channels, 16x16, 3x3, padding 1, float32.

    .venv/bin/python benchmarks/conv.py [--threads 2] [--repeat 7]
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import best_of, set_threads

from refimpl.kernels import conv as K


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args(argv)
    _keep, info = set_threads(args.threads)
    import torch

    rng = np.random.default_rng(0)
    n, c, o, hw, k = args.batch, 16, 32, 16, 3
    x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
    w = (rng.standard_normal((o, c, k, k)) * 0.1).astype(np.float32)
    geom = ((1, 1), (1, 1), (1, 1), 1)
    g = rng.standard_normal(K.conv2d_output_shape(x.shape, w.shape, *geom)).astype(np.float32)

    def ours(impl):
        def step():
            K.conv2d_forward(x, w, *geom, impl=impl)
            K.conv2d_grad_input(g, w, x.shape, *geom, impl=impl)
            K.conv2d_grad_weight(x, g, w.shape, *geom, impl=impl)
        return step

    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tg = torch.tensor(g)

    def theirs():
        tx.grad = tw.grad = None
        y = torch.nn.functional.conv2d(tx, tw, padding=1)
        y.backward(tg)

    t_torch = best_of(theirs, args.repeat)
    print(f"conv2d fwd+bwd, N={n}, {c}->{o} ch, {hw}x{hw}, {k}x{k}, pad 1, float32; {info}")
    print(f"  {'pytorch':<22}{t_torch * 1e3:8.2f} ms   1.00x")
    for impl, label in (("np", "refimpl np (default)" if K.DEFAULT_IMPL == "np" else "refimpl np"),
                        ("jit", "refimpl numba" + (" (default)" if K.DEFAULT_IMPL == "jit"
                                                   else ""))):
        t = best_of(ours(impl), args.repeat)
        print(f"  {label:<22}{t * 1e3:8.2f} ms {t / t_torch:6.2f}x")


if __name__ == "__main__":
    main()
