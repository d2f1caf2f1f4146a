"""Reverse-mode autodiff on an explicit tape (SPEC §1: TAPE-1..TAPE-4), and its dry twin.

A :class:`Tape` records one :class:`Node` per primitive call, in execution order. A node holds
the primitive, its static parameters, the tape ids of its inputs, which inputs need a gradient,
the layer scope it ran in, and the primitive's *residual record*: a small dataclass of the
arrays its vjp needs (TAPE-2). Residuals are never closures, so :meth:`Tape.residual_nbytes`
can list and count them (TAPE-3).

Values that need a gradient are :class:`Var` objects bound to one tape. Everything else (data,
labels, masks, frozen weights) is a plain ``numpy.ndarray`` and is a *constant*: no vjp is ever
computed for it (TAPE-4). A primitive call whose inputs are all constants records nothing and
returns a plain array, which is how the functional API behaves "outside a trace".

Counting rule (TAPE-3, MEM-2). ``residual_nbytes`` sums ``nbytes`` over the distinct buffers
held by the residual records of nodes whose vjp has not run yet. Two records holding the same
buffer count it once (identity is the buffer's start address and size). A residual field that
merely refers to one of the op's own operands (for example the weight that conv2d needs for its
input gradient) is listed in the record's ``operands`` map; it is counted only when that operand
is an intermediate of the tape, because a leaf (a parameter or a data batch) is memory the
caller owns whether or not the tape exists.

Dry traces (MEM-1, MEM-5). ``Tape(dry=True)`` runs the same model code on :class:`Spec` values
(a shape and a dtype, no data): :func:`apply` then calls each primitive's ``plan`` instead of its
``fwd``. A plan returns the output's Spec, the *same* residual record class the forward would
build with Specs in place of arrays, and the workspace its kernels need. The memory ledger sums
these records, so what a primitive keeps is stated once, next to the primitive, and the ledger
cannot drift from the tape (MEM-2 compares the two).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

__all__ = ["Var", "Tape", "Node", "Primitive", "Plan", "Residual", "Spec", "apply", "value_of",
           "scope", "current_scope"]


class Spec:
    """A shape and a dtype standing in for an array in a dry trace (no data, no arithmetic)."""

    __slots__ = ("shape", "dtype")

    def __init__(self, shape, dtype):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)

    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: math.prod(self.shape))
    itemsize = property(lambda self: self.dtype.itemsize)
    nbytes = property(lambda self: self.size * self.dtype.itemsize)

    @classmethod
    def of(cls, a) -> Spec:
        """The Spec of an array (or a Spec itself)."""
        return a if isinstance(a, Spec) else cls(np.shape(a), np.asarray(a).dtype)

    def __repr__(self) -> str:
        return f"Spec({self.shape}, {self.dtype})"


class Residual:
    """Base class of residual records (TAPE-2).

    Subclasses are ``@dataclass(eq=False)`` records. Their ``numpy.ndarray`` fields (or
    :class:`Spec` fields in a dry trace, and fields that are themselves :class:`Residual`
    records, recursively) are the buffers the record holds. ``operands`` maps a field name to the
    position of the op input that field refers to. ``categories`` maps a top-level field name to
    the memory ledger category its buffers count in (MEM-1); fields not listed count under the
    record's ``category``.
    """

    operands: ClassVar[dict[str, int]] = {}
    categories: ClassVar[dict[str, str]] = {}
    category: ClassVar[str] = "other"

    def arrays(self) -> Iterator[tuple[str, np.ndarray | Spec]]:
        """Yield ``(field path, buffer)`` for every buffer the record holds."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (np.ndarray, Spec)):
                yield f.name, v
            elif isinstance(v, Residual):
                for sub, arr in v.arrays():
                    yield f"{f.name}.{sub}", arr

    def category_of(self, path: str) -> str:
        return self.categories.get(path.split(".", 1)[0], self.category)


@dataclass(frozen=True)
class Plan:
    """What a primitive call holds, from shapes alone (the dry twin of ``fwd``).

    ``out``: the output's Spec. ``res``: the residual record ``fwd`` would build, with Specs
    (None when no input needs a gradient). ``fwd_workspace`` / ``vjp_workspace``: name -> bytes
    of the temporary buffers the lean kernels of the forward / the vjp need while they run
    (MEM-5; docs/memory.md lists them per kernel).
    """

    out: Spec
    res: Residual | None
    fwd_workspace: dict[str, int] = field(default_factory=dict)
    vjp_workspace: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Primitive:
    """A differentiable primitive: a pure pair of functions (TAPE-2) and their dry twin.

    ``fwd(inputs, params, needs) -> (out, residual)``,
    ``vjp(residual, g, params, needs) -> tuple of cotangents`` (one per input, ``None`` where
    ``needs`` is False) and ``plan(specs, params, needs) -> Plan``. ``needs[i]`` says whether
    input ``i`` needs a gradient, so ``fwd`` keeps only the residuals that the requested
    cotangents use (TAPE-4). A primitive without ``plan`` cannot appear in a dry trace.
    """

    name: str
    fwd: Callable[..., tuple[np.ndarray, Any]]
    vjp: Callable[..., tuple[np.ndarray | None, ...]]
    plan: Callable[..., Plan] | None = None


class Var:
    """A value that needs a gradient, bound to one tape (a :class:`Spec` on a dry tape).

    A Var has no operator sugar: arithmetic on traced values goes through
    :mod:`refimpl.functional` (``F.add``, ``F.mul``, ``F.reshape``, ...), so this module imports
    nothing above it (STYLE 14). Mixing a Var into NumPy arithmetic raises a TypeError instead of
    silently building an object array.
    """

    __slots__ = ("value", "tape", "id")
    __array_ufunc__ = None  # ``ndarray + Var`` raises TypeError (no silent object arrays)

    def __init__(self, value, tape: Tape, id: int):
        self.value = value
        self.tape = tape
        self.id = id

    shape = property(lambda self: self.value.shape)
    dtype = property(lambda self: self.value.dtype)
    ndim = property(lambda self: self.value.ndim)
    size = property(lambda self: self.value.size)

    def __repr__(self) -> str:
        return f"Var(id={self.id}, shape={self.shape}, dtype={self.dtype})"


@dataclass(eq=False)
class Node:
    """One recorded primitive call. ``plan`` is set on a dry tape only."""

    prim: Primitive
    params: Any
    inputs: tuple[int | None, ...]
    needs: tuple[bool, ...]
    out: int
    res: Any
    scope: str = ""
    plan: Plan | None = None


# ---- layer scopes (names for the ledger's rows; no effect on the arithmetic) -----------------
_SCOPE: contextvars.ContextVar[str] = contextvars.ContextVar("refimpl_scope", default="")


@contextlib.contextmanager
def scope(name: str):
    """Name the nodes recorded inside (e.g. the layer ``conv1``): the memory ledger groups its
    rows by these names."""
    token = _SCOPE.set(name)
    try:
        yield
    finally:
        _SCOPE.reset(token)


def current_scope() -> str:
    return _SCOPE.get()


def _buffer_key(a) -> tuple[int, int]:
    if isinstance(a, Spec):
        return (id(a), -1)
    return (a.__array_interface__["data"][0], a.nbytes)


class Tape:
    """An execution-ordered record of primitive calls (TAPE-1).

    ``dry=True``: a shapes-only trace (see the module docstring); it cannot run backward.
    ``observer``: optional object told about every array the tape creates, for instrumented
    runs (MEM-5/MEM-6 tests): ``recorded(index, node, out)`` after each forward node,
    ``vjp_begin(index, node)`` before and ``vjp_done(index, node, g, grads)`` after each vjp. It
    must not keep the arrays alive.
    """

    def __init__(self, dry: bool = False, observer=None) -> None:
        self.nodes: list[Node] = []
        self.dry = bool(dry)
        self.observer = observer
        self._next_id = 0
        self._leaves: set[int] = set()
        self._shapes: dict[int, tuple[tuple[int, ...], np.dtype]] = {}

    # -- recording -----------------------------------------------------------------------------
    def _new_var(self, value) -> Var:
        v = Var(value, self, self._next_id)
        self._shapes[v.id] = (value.shape, value.dtype)
        self._next_id += 1
        return v

    def leaf(self, value) -> Var:
        """Register ``value`` as an input that needs a gradient (a Spec on a dry tape)."""
        if self.dry:
            value = Spec.of(value)
        else:
            value = np.asarray(value)
        if value.dtype not in (np.float32, np.float64):
            raise TypeError(
                f"tape.leaf: only float32/float64 values can need a gradient, received dtype "
                f"{value.dtype}; pass integer data (labels, masks) as a constant instead"
            )
        v = self._new_var(value)
        self._leaves.add(v.id)
        return v

    def is_leaf(self, vid: int) -> bool:
        return vid in self._leaves

    def record(self, prim: Primitive, params: Any, inputs: tuple, out, res,
               plan: Plan | None = None) -> Var:
        ids = tuple(x.id if isinstance(x, Var) else None for x in inputs)
        needs = tuple(i is not None for i in ids)
        var = self._new_var(out)
        self.nodes.append(Node(prim, params, ids, needs, var.id, res, current_scope(), plan))
        if self.observer is not None:
            self.observer.recorded(len(self.nodes) - 1, self.nodes[-1], out)
        return var

    # -- backward ------------------------------------------------------------------------------
    @staticmethod
    def _accumulate(cts: dict[int, np.ndarray], key: int, c: np.ndarray) -> None:
        """TAPE-1: a value used twice receives the sum of both contributions."""
        prev = cts.get(key)
        cts[key] = c if prev is None else prev + c

    def backward(self, out: Var, g: np.ndarray, retain: bool = False) -> dict[int, np.ndarray]:
        """Propagate cotangent ``g`` of ``out`` back through the tape.

        Returns ``{var id: cotangent}`` for every leaf reached. Each node's residual record is
        released right after its vjp ran, and its output's cotangent as soon as the vjp consumed
        it (TAPE-3), unless ``retain`` is True, in which case the tape can be walked again with
        another cotangent.
        """
        if self.dry:
            raise RuntimeError("backward: a dry tape holds shapes only; the memory ledger "
                               "replays its backward (refimpl.memory), nothing computes it")
        if out.tape is not self:
            raise ValueError("backward: the output Var belongs to another tape")
        g = np.asarray(g)
        if g.shape != out.shape or g.dtype != out.dtype:
            raise ValueError(
                f"backward: cotangent must match the output, expected shape {out.shape} dtype "
                f"{out.dtype}, received shape {g.shape} dtype {g.dtype}"
            )
        if not retain and any(n.res is _RELEASED for n in self.nodes):
            raise RuntimeError(
                "backward: this tape's residuals were already released by an earlier backward; "
                "pass retain=True to walk a tape more than once"
            )
        cts: dict[int, np.ndarray] = {out.id: g}
        del g
        for index in range(len(self.nodes) - 1, -1, -1):
            node = self.nodes[index]
            g_out = cts.pop(node.out, None)
            if g_out is not None:
                if node.res is _RELEASED:
                    raise RuntimeError("backward: residuals of this tape were released")
                if self.observer is not None:
                    self.observer.vjp_begin(index, node)
                grads = node.prim.vjp(node.res, g_out, node.params, node.needs)
                for i, (vid, need) in enumerate(zip(node.inputs, node.needs)):
                    if not need:
                        continue
                    c = grads[i]
                    shape, dtype = self._shapes[vid]
                    if c is None or c.shape != shape or c.dtype != dtype:
                        got = None if c is None else (c.shape, c.dtype)
                        raise AssertionError(
                            f"{node.prim.name}: vjp returned {got} for input {i}, expected "
                            f"{(shape, dtype)}"
                        )
                    self._accumulate(cts, vid, c)
                if not retain:
                    node.res = _RELEASED
                if self.observer is not None:
                    self.observer.vjp_done(index, node, g_out, grads)
                # Free the consumed cotangent and this vjp's outputs' extra references now,
                # not at the next iteration (what the liveness timeline of MEM-5 assumes).
                del g_out, grads
                c = None
            elif not retain:
                node.res = _RELEASED
        return {k: v for k, v in cts.items() if k in self._leaves}

    # -- memory accounting (TAPE-3) ------------------------------------------------------------
    def residual_buffers(self) -> list[tuple[int, str, str, Any]]:
        """The distinct buffers currently held: ``(node index, op name, field, buffer)``.

        A buffer held by several records is listed once, at its first holder.
        """
        seen: set[tuple[int, int]] = set()
        out = []
        for i, node in enumerate(self.nodes):
            res = node.res
            if res is None or res is _RELEASED:
                continue
            for path, arr in res.arrays():
                top = path.split(".", 1)[0]
                if top in res.operands:
                    vid = node.inputs[res.operands[top]]
                    if vid is None or vid in self._leaves:
                        continue  # the caller's own memory (parameter or data), see module doc
                key = _buffer_key(arr)
                if key in seen:
                    continue
                seen.add(key)
                out.append((i, node.prim.name, path, arr))
        return out

    def residual_nbytes(self) -> int:
        """Sum of ``nbytes`` over the distinct residual buffers currently held (TAPE-3)."""
        return sum(arr.nbytes for _, _, _, arr in self.residual_buffers())


_RELEASED = object()


def value_of(x):
    """The array (or Spec) behind a Var, or ``x`` itself."""
    return x.value if isinstance(x, Var) else x


def apply(prim: Primitive, inputs: tuple, params: Any):
    """Run ``prim`` on ``inputs``; record a node when any input is a Var.

    All Var inputs must belong to one tape. With no Var input the forward runs without keeping
    residuals and a plain array is returned. On a dry tape the primitive's ``plan`` runs instead
    of its ``fwd`` and the result is a Var holding a :class:`Spec`.
    """
    tape = None
    for x in inputs:
        if isinstance(x, Var):
            if tape is None:
                tape = x.tape
            elif x.tape is not tape:
                raise ValueError(f"{prim.name}: inputs belong to different tapes")
    values = tuple(value_of(x) for x in inputs)
    needs = tuple(isinstance(x, Var) for x in inputs)
    if tape is not None and tape.dry:
        if prim.plan is None:
            raise TypeError(f"{prim.name}: this primitive has no plan and cannot run in a dry "
                            f"trace")
        specs = tuple(None if v is None else Spec.of(v) for v in values)
        plan = prim.plan(specs, params, needs)
        return tape.record(prim, params, inputs, plan.out, plan.res, plan)
    if any(isinstance(v, Spec) for v in values):
        raise TypeError(f"{prim.name}: a Spec (shapes only) can only flow through a dry tape")
    out, res = prim.fwd(values, params, needs)
    if tape is None:
        return out
    return tape.record(prim, params, inputs, out, res)
