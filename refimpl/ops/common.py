"""Argument validation shared by the primitive families (STYLE 12: say what was wrong, what was
expected, and how to fix it)."""

from __future__ import annotations

import numpy as np

from ..core.tape import Spec

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_float(op: str, **arrays) -> np.dtype:
    """All given arrays (None skipped) must be float32 or float64 and share one dtype (CONV-2).
    A :class:`~refimpl.core.tape.Spec` (a dry trace's stand-in) passes like an array."""
    dtype = None
    first = None
    for name, a in arrays.items():
        if a is None:
            continue
        if not isinstance(a, (np.ndarray, Spec)):
            raise TypeError(f"{op}: {name} must be a numpy array, received {type(a).__name__}")
        if a.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{op}: {name} has dtype {a.dtype}, expected float32 or float64 "
                f"(cast with .astype(np.float32))"
            )
        if dtype is None:
            dtype, first = a.dtype, name
        elif a.dtype != dtype:
            raise TypeError(
                f"{op}: {name} has dtype {a.dtype} but {first} has dtype {dtype}; expected all "
                f"floating operands to share one dtype"
            )
    return dtype


def check_ndim(op: str, name: str, a: np.ndarray, ndim: int, layout: str) -> None:
    if a.ndim != ndim:
        raise ValueError(
            f"{op}: expected {name} of {ndim} dimensions {layout}, received shape {a.shape}"
        )


def pair(op: str, name: str, v) -> tuple[int, int]:
    """Normalise an int or a pair of ints (PyTorch convention) to a tuple of two ints."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return (int(v), int(v))
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(
        isinstance(e, (int, np.integer)) and not isinstance(e, bool) for e in v
    ):
        return (int(v[0]), int(v[1]))
    raise ValueError(f"{op}: {name} must be an int or a pair of ints, received {v!r}")


def unbroadcast(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``g`` over the axes along which an operand of ``shape`` was broadcast."""
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, s in enumerate(shape) if s == 1 and g.shape[lead + i] != 1
    )
    return np.sum(g, axis=axes, keepdims=False).reshape(shape) if axes else g.reshape(shape)
