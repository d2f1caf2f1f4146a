"""Exports of the conformance scenario shared by the ``test_conformance_*`` modules.

An export takes a few seconds, so each distinct scenario is exported once per test process into
a temporary directory that is removed at exit. Tests must not modify these directories: copy
one (``shutil.copytree``) before planting anything in it.
"""

from __future__ import annotations

import atexit
import functools
import re
import shutil
import tempfile
from pathlib import Path

_ROOT: list[Path] = []


def _root() -> Path:
    if not _ROOT:
        _ROOT.append(Path(tempfile.mkdtemp(prefix="fedmef-conformance-tests-")))
        atexit.register(shutil.rmtree, _ROOT[0], True)
    return _ROOT[0]


@functools.cache
def exported(*sets: str) -> Path:
    """The dump of the scenario with ``sets`` overrides (``section.key=value``)."""
    from refimpl.conformance.export import export

    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(sets)) or "default"
    out = _root() / name
    export(out, sets)
    return out


@functools.cache
def reference(*sets: str):
    """The exported dump of ``sets`` opened through its conformance.bin (one file read; the
    tensors stay in memory), as the reference of many checks."""
    from refimpl.conformance.dump import Dump

    return Dump.open(exported(*sets) / "conformance.bin")


def load_step(dump: Path, name: str) -> tuple[dict, dict]:
    """(manifest entry, arrays) of step ``name`` of an exported dump."""
    import json

    import numpy as np

    manifest = json.loads((dump / "manifest.json").read_text("utf-8"))
    entry = next(s for s in manifest["steps"] if s["name"] == name)
    with np.load(dump / entry["file"], allow_pickle=False) as z:
        return entry, {k: z[k] for k in z.files}
