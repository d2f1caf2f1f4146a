"""Compute kernels: dense convolution (:mod:`.conv`), masked convolution over a weight index
(:mod:`.masked_conv`), max-pooling (:mod:`.pool`), ReLU (:mod:`.relu`), batch norm's elementwise
passes and sums (:mod:`.norm`), NSConv's weight standardisation (:mod:`.nsconv`), the SAP
cache's selection, encode and decode (:mod:`.cache`), and NumPy's summation order as a loop the
compiled kernels share (:mod:`.sums`).

One convention for every kernel (STYLE 3, 10): a plain loop function ``<op>_naive`` (C-shaped,
explicit buffers and bounds, calling no compiled code: the oracle), the same function compiled
as ``<op>_jit`` by :func:`refimpl.core._jit.njit`, and, where it pays, a vectorised NumPy twin
``<op>_np``. Each module lists its kernels in one table ``{op: {impl: function}}`` and picks one
with :func:`pick`, which refuses an unknown ``impl`` with the valid choices.
"""

from __future__ import annotations

import types

IMPL_NAMES = ("naive", "np", "jit")


def pick(family: str, table: dict, op: str, impl: str):
    """The ``impl`` twin of kernel ``op`` in a module's ``table``; a clear ValueError when the
    family has no such twin."""
    twins = table[op]
    if impl not in twins:
        raise ValueError(f"{family}: unknown kernel impl {impl!r} for {op}; valid: "
                         f"{', '.join(k for k in IMPL_NAMES if k in twins)}")
    return twins[impl]


def rebind(f, **helpers):
    """``f`` with the module-level helpers it calls replaced by ``helpers`` (name -> function):
    a kernel's compiled build calls the compiled helpers, its ``naive`` twin the loop functions,
    so the oracle runs no compiled code."""
    names = dict(f.__globals__)
    names.update(helpers)
    twin = types.FunctionType(f.__code__, names, f.__name__, f.__defaults__, f.__closure__)
    twin.__doc__ = f.__doc__
    return twin
