"""Max-pool forward + backward (2x2, stride 2: the model zoo's pool) against the conv forward +
backward of the layer it follows, in the same process with the same thread count.

The conv is the reference layer of benchmarks/conv.py (N=32, 16 -> 32 ch, 16x16, 3x3, pad 1,
float32) through refimpl's default kernels; the pool reads its output (a ReLU output, as in the
models: half exact zeros, so ties), shape (32, 32, 16, 16).

    .venv/bin/python benchmarks/pool.py [--threads 2] [--repeats 7]
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import OP_INNER, Figure, paired, ratio, set_threads
from conv import reference

from refimpl.kernels import conv as K
from refimpl.kernels import pool as PK

POOL = "max_pool2d 2x2 stride 2 of the reference layer's ReLU output (32, 32, 16, 16) float32"


def measure(threads: int, repeats: int = 7) -> dict:
    _keep, info = set_threads(threads)
    from refimpl.core import _jit

    x, w, g, geom = reference(np.random.default_rng(0))
    y = np.maximum(K.conv2d_forward(x, w, *geom), np.float32(0))
    oh, ow = y.shape[2] // 2, y.shape[3] // 2
    impl = "jit" if _jit.JIT_ENABLED else "np"
    gp = np.random.default_rng(1).standard_normal((*y.shape[:2], oh, ow)).astype(np.float32)

    def conv():
        K.conv2d_forward(x, w, *geom)
        K.conv2d_grad_input(g, w, x.shape, *geom)
        K.conv2d_grad_weight(x, g, w.shape, *geom)

    def pool():
        _, arg = PK.max_pool2d_forward(y, (2, 2), (2, 2), (0, 0), (1, 1), oh, ow, impl=impl)
        PK.max_pool2d_backward(gp, arg, y.shape, (2, 2), (2, 2), (0, 0), (1, 1), impl=impl)

    times = paired({"conv": conv, "pool": pool}, repeats=repeats, inner=OP_INNER)
    return {"info": info, "pool": POOL, "threads": threads,
            "ratio": ratio(times, "pool", "conv"),
            "pool_ms": Figure(t * 1e3 for t in times["pool"]),
            "conv_ms": Figure(t * 1e3 for t in times["conv"])}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    r = measure(args.threads, args.repeats)
    print(f"{POOL}; {r['info']}; median (min..max) of {args.repeats} pairs")
    print(f"  pool fwd+bwd {r['pool_ms'].fmt(digits=3)} ms, conv fwd+bwd "
          f"{r['conv_ms'].fmt(digits=3)} ms: ratio {r['ratio'].fmt(digits=3)}")


if __name__ == "__main__":
    main()
