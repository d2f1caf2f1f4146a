"""PyTorch as the independent cross-check oracle (tests and benchmarks only).

``torch_or_skip()`` returns the ``torch`` module in float64-friendly CPU mode. When PyTorch is
not installed the calling test is skipped, unless ``REFIMPL_REQUIRE_TORCH=1`` (set by
``.ci/run``), in which case it fails: CI must never pass with the cross-checks silently skipped.
"""

from __future__ import annotations

import os

import pytest


def torch_required() -> bool:
    return os.environ.get("REFIMPL_REQUIRE_TORCH", "") not in ("", "0")


def torch_or_skip():
    try:
        import torch
    except ImportError:
        msg = ("PyTorch is not installed; the cross-checks need torch==2.13.0 "
               "(make test installs it from requirements/torch.txt)")
        if torch_required():
            pytest.fail(msg + " and REFIMPL_REQUIRE_TORCH=1 forbids skipping them")
        pytest.skip(msg)
    torch.set_num_threads(1)  # deterministic reductions; tests run in parallel processes
    return torch
