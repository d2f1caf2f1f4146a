"""Primitive families. Each module holds, per primitive, its params record, residual record,
``fwd`` and ``vjp`` side by side, registered as a :class:`refimpl.core.tape.Primitive` on the next
line (STYLE 1). The public, argument-normalising wrappers live in :mod:`refimpl.functional`.
"""
