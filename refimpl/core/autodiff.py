"""Function transformations over the tape: :func:`vjp`, :func:`grad`, :func:`value_and_grad`.

Differentiable arguments may be arrays or nested dicts/lists/tuples of arrays ("trees"); the
cotangents come back in the same structure. Arguments that are not differentiated pass through
untouched and are constants on the tape (TAPE-4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .tape import Tape, Var

__all__ = ["vjp", "grad", "value_and_grad"]


def _tree_map(f, tree):
    if isinstance(tree, dict):
        return {k: _tree_map(f, v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_tree_map(f, v) for v in tree)
    return f(tree)


def _trace_inputs(tape: Tape, tree):
    return _tree_map(lambda a: tape.leaf(np.asarray(a)), tree)


def _cotangents(tree, cts: dict[int, np.ndarray]):
    return _tree_map(lambda v: cts[v.id] if v.id in cts else np.zeros_like(v.value), tree)


def vjp(fn: Callable, *primals, retain: bool = False):
    """Evaluate ``fn(*primals)`` on a fresh tape; return ``(out, vjp_fn)``.

    ``out`` is a NumPy array. ``vjp_fn(g)`` takes a cotangent of ``out``'s shape and dtype and
    returns a tuple of NumPy cotangents, one per primal (zeros for a primal ``out`` does not
    depend on). Residuals are released after the first ``vjp_fn`` call (TAPE-3) unless
    ``retain=True``.
    """
    tape = Tape()
    traced = [_trace_inputs(tape, p) for p in primals]
    out = fn(*traced)
    if not isinstance(out, Var):
        out_value = np.asarray(out)

        def const_vjp(g):
            return tuple(_tree_map(np.zeros_like, p) for p in primals)

        return out_value, const_vjp

    def vjp_fn(g):
        g = np.asarray(g, dtype=out.dtype) if np.isscalar(g) else np.asarray(g)
        cts = tape.backward(out, g, retain=retain)
        return tuple(_cotangents(t, cts) for t in traced)

    return out.value, vjp_fn


def value_and_grad(fn: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False):
    """Return ``f(*args) -> (value, grads)`` for a scalar-valued ``fn``.

    ``grads`` matches ``argnums``: one tree for an int, a tuple of trees for a sequence. With
    ``has_aux=True`` ``fn`` returns ``(scalar, aux)`` and the result is ``((value, aux), grads)``.
    """
    single = isinstance(argnums, int)
    nums = (argnums,) if single else tuple(argnums)

    def wrapped(*args):
        for i in nums:
            if not -len(args) <= i < len(args):
                raise ValueError(f"value_and_grad: argnums {argnums} out of range for "
                                 f"{len(args)} arguments")
        tape = Tape()
        args = list(args)
        traced = {}
        for i in nums:
            traced[i] = _trace_inputs(tape, args[i])
            args[i] = traced[i]
        res = fn(*args)
        out, aux = res if has_aux else (res, None)
        if isinstance(out, Var):
            if out.shape != ():
                raise ValueError(f"grad: fn must return a scalar, returned shape {out.shape}")
            cts = tape.backward(out, np.ones((), dtype=out.dtype))
            value = out.value
        else:
            value, cts = np.asarray(out), {}
        grads = tuple(_cotangents(traced[i], cts) for i in nums)
        grads = grads[0] if single else grads
        return ((value, aux) if has_aux else value), grads

    return wrapped


def grad(fn: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False):
    """Return ``f(*args) -> grads`` of a scalar-valued ``fn`` (see :func:`value_and_grad`)."""
    vg = value_and_grad(fn, argnums, has_aux)

    def wrapped(*args):
        value, grads = vg(*args)
        return (grads, value[1]) if has_aux else grads

    return wrapped
