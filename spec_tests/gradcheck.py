"""Gradient checkers used by the spec tests (STYLE 6).

- :func:`check_vjp`: every cotangent element of every primal against central differences of
  ``<u, f(x)>`` in float64, with a random cotangent ``u`` (a ones cotangent lets transposition and
  flip bugs through).
- :func:`dot_product_test`: the scalar identity ``<u, J v> == <J^T u, v>`` for random ``u`` and
  ``v``, with ``J v`` by central differences: cheap enough for whole models.

Both return the relative error; the caller asserts it against ``tolerances.CENTRAL_DIFF``.
They are tested themselves: ``test_gradcheck_meta.py`` plants bugs and expects them to fail.
"""

from __future__ import annotations

import numpy as np

import refimpl


def _f_dot(fn, primals, u):
    out = fn(*primals)
    out = out.value if hasattr(out, "value") else out
    return float(np.sum(np.asarray(out, dtype=np.float64) * u))


def numerical_vjp(fn, primals, u, h=1e-6):
    """Central-difference ``J^T u`` for each primal, element by element (float64 only)."""
    grads = []
    for p in primals:
        g = np.zeros_like(p, dtype=np.float64)
        flat = p.reshape(-1)
        for i in range(flat.size):
            orig = flat[i]
            flat[i] = orig + h
            fp = _f_dot(fn, primals, u)
            flat[i] = orig - h
            fm = _f_dot(fn, primals, u)
            flat[i] = orig
            g.reshape(-1)[i] = (fp - fm) / (2 * h)
        grads.append(g)
    return grads


def _max_abs(a) -> float:
    return float(np.max(np.abs(a))) if a.size else 0.0


def check_vjp(fn, primals, seed=0, h=1e-6):
    """Max relative error between refimpl's vjp and central differences, over all primals.

    ``primals`` must be float64 arrays (they are perturbed in place and restored).
    """
    # A stream of its own: a cotangent equal to the input would sit in the null space of
    # scale-invariant ops (normalisations) and hide their errors.
    rng = np.random.default_rng([seed, 0x5EED])
    out, vjp_fn = refimpl.vjp(fn, *primals)
    u = rng.standard_normal(np.shape(out))
    analytic = vjp_fn(np.asarray(u, dtype=out.dtype))
    numeric = numerical_vjp(fn, primals, u, h)
    # One scale for all primals: central-difference noise is set by the function's scale, not
    # by each primal's gradient, and a cotangent that is analytically zero (scale-invariant
    # ops such as NSConv's standardisation) is pure noise measured against itself.
    scale = max(max(_max_abs(n) for n in numeric), 1e-3)
    return max(_max_abs(a - n) / scale for a, n in zip(analytic, numeric))


def activation_pattern(fn, primals):
    """The piecewise-linear 'switches' of ``fn`` at ``primals``: every ReLU bitmap and max-pool
    argmax the tape keeps (a ReLU fused into a conv keeps its bitmap in the conv's record).
    Equal patterns at x - hv and x + hv mean the segment crosses no kink and no tie, so central
    differences are valid along it."""
    from refimpl.ops.conv import ConvRes
    from refimpl.ops.elementwise import ReluRes
    from refimpl.ops.pool import MaxPoolRes

    tape = refimpl.Tape()
    fn(*[tape.leaf(np.array(p)) for p in primals])
    out = []
    for node in tape.nodes:
        if isinstance(node.res, ReluRes):
            out.append(node.res.bits)
        elif isinstance(node.res, ConvRes) and node.res.relu_bits is not None:
            out.append(node.res.relu_bits)
        elif isinstance(node.res, MaxPoolRes):
            out.append(node.res.arg)
    return out


def _same_pattern(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def dot_product_test(fn, primals, seed=0, steps=(1e-6, 1e-7, 1e-8), tries=10):
    """Relative error of ``<u, J v>`` (central differences) against ``<J^T u, v>`` (vjp).

    Directions ``v`` whose segment [x - hv, x + hv] changes any ReLU sign or max-pool argmax
    are redrawn (``tries`` per step size, then a smaller step): the identity is checked where f
    is differentiable. BatchNorm over small batches amplifies tiny perturbations, so deep BN
    models may need the smaller steps.
    """
    rng = np.random.default_rng(seed)
    out, vjp_fn = refimpl.vjp(fn, *primals)
    u = rng.standard_normal(np.shape(out))
    cts = vjp_fn(np.asarray(u, dtype=out.dtype))
    for h in steps:
        for _ in range(tries):
            vs = [rng.standard_normal(p.shape) for p in primals]
            plus = [p + h * v for p, v in zip(primals, vs)]
            minus = [p - h * v for p, v in zip(primals, vs)]
            if _same_pattern(activation_pattern(fn, plus), activation_pattern(fn, minus)):
                lhs = sum(float(np.sum(c * v)) for c, v in zip(cts, vs))
                rhs = (_f_dot(fn, plus, u) - _f_dot(fn, minus, u)) / (2 * h)
                return abs(lhs - rhs) / max(abs(rhs), abs(lhs), 1e-3)
    raise AssertionError(f"dot_product_test: every direction crossed a kink or a tie at steps "
                         f"{steps}; build inputs away from kinks")
