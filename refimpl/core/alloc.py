"""Keep freed memory in the process for reuse (glibc's malloc), instead of handing it back to
the operating system after every training step.

A training step allocates and frees the same large buffers every step (im2col columns, conv
outputs, cotangents: megabytes each). By default glibc serves an allocation above its mmap
threshold (128 KiB, raised dynamically up to 32 MiB) with a fresh ``mmap`` and returns it with
``munmap`` when freed, and it trims the top of its heap once more than the trim threshold is
free there. Either way the next step's buffer of the same size arrives as untouched pages, and
the kernel that writes it first pays a page fault per 4 KiB: measured on the small CNN's first
conv (64 x 16 x 28 x 28 output, one thread), 5.7 ms per forward with the default against 0.84 ms
with freed memory kept (docs/decisions.md).

:func:`keep_freed_memory` sets, once per process, ``M_MMAP_MAX = 0`` (every allocation comes from
the heap, so a freed buffer is reused by the next allocation that fits) and a trim threshold of
``TRIM_BYTES`` (the heap is not shrunk while less than that lies free at its top). The process
then holds on to its high-water mark of heap memory, which a training run reaches in its first
step anyway. It changes no result: allocation decides where buffers lie, not what is computed
(the byte-identity checks of issue 12 run with it).

The CLI's commands and the benchmarks call it; a library user may call it too. Set
``FEDMEF_KEEP_FREED_MEMORY=0`` to leave malloc at its defaults. Outside glibc (macOS, musl,
Windows) it does nothing and says so.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
#: Free bytes at the heap's top above which glibc may return them to the system.
TRIM_BYTES = 1 << 30
#: Environment variable that turns the setting off ("0").
ENV = "FEDMEF_KEEP_FREED_MEMORY"

_state: str | None = None


def keep_freed_memory() -> str:
    """Apply the setting (module docstring) once; return what this process's malloc does now,
    in one line (for logs and the benchmarks' machine description)."""
    global _state
    if _state is not None:
        return _state
    if os.environ.get(ENV, "1").strip() == "0":
        _state = f"malloc defaults ({ENV}=0)"
        return _state
    libc = _glibc()
    if libc is None:
        _state = "malloc defaults (not glibc)"
        return _state
    ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES) == 1
    _state = ("glibc malloc keeps freed memory (M_MMAP_MAX 0, M_TRIM_THRESHOLD 1 GiB)" if ok
              else "malloc defaults (mallopt refused the setting)")
    return _state


def _glibc():
    """The C library when it is glibc (it has ``gnu_get_libc_version`` and ``mallopt``)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - raises AttributeError outside glibc
        fn = libc.mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int)
    fn.restype = ctypes.c_int
    return libc
