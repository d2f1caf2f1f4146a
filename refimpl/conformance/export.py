"""``fedmef conformance export DIR``: run the conformance scenario through the real federated
engine with a :class:`~refimpl.conformance.recorder.Recorder` attached and write the dump
(docs/conformance.md). Same checkout and versions, same bytes: nothing in a dump depends on the
time, the host or the thread count (RNG-1).
"""

from __future__ import annotations

import platform
from importlib import metadata

import numpy as np

import refimpl

from ..core.rng import Purpose
from ..fl.engine import run_round
from ..fl.runner import _threads
from . import scenario
from .dump import FORMAT, check_target, write_dump
from .quantities import manifest_table
from .recorder import Recorder

__all__ = ["export", "record", "manifest_head"]


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def software() -> dict:
    """Versions that can change the bits of a dump (recorded, not compared)."""
    return {"python": platform.python_version(), "numpy": np.__version__,
            "numba": _version("numba"), "refimpl": refimpl.__version__}


def record(sets=()):
    """Run the scenario (with ``sets`` overrides) and return (cfg, model, steps)."""
    cfg = scenario.scenario_config(sets)
    data, model, state = scenario.build(cfg)
    rec = Recorder(cfg, model, data, state)
    # the thread count never changes results; one thread avoids the parallel kernels' start-up
    # cost on these tiny tensors (as `fedmef run` does with run.threads)
    with _threads(cfg.run.threads):
        for t in range(1, scenario.ROUNDS_RUN + 1):
            state, _ = run_round(cfg, model, state, data, t, observer=rec)
    return cfg, model, rec.steps()


def manifest_head(cfg, model, sets) -> dict:
    """Everything of the manifest but the step list."""
    return {
        "format": FORMAT,
        "scenario": {
            "name": scenario.NAME,
            "sets": list(sets),
            "rounds_run": scenario.ROUNDS_RUN,
            "config": cfg.to_dict(),
            "architecture": scenario.architecture(model),
            "prunable": model.prunable,
            "params": {k: {"shape": list(v.shape), "dtype": v.dtype.name}
                       for k, v in model.params.items()},
            "nsconv_eps": 1e-4,
        },
        "seeds": {
            "run.seed": cfg.run.seed,
            "rng": "numpy Generator(PCG64(SeedSequence(seed, spawn_key=(purpose, round, "
                   "client, extra)))) (RNG-1); every draw is an input of the dump",
            "purposes": {p.name: int(p) for p in Purpose},
        },
        "software": software(),
        "quantities": manifest_table(cfg.run.dtype),
    }


def export(directory, sets=(), overwrite: bool = False, npz: bool = True) -> dict:
    """Export the scenario's dump to ``directory``; return the manifest. ``npz=False`` skips
    the per-step .npz files (manifest.json and conformance.bin only). An existing ``directory``
    is refused before the scenario runs unless it may be replaced (:func:`check_target`)."""
    sets = list(sets)
    check_target(directory, overwrite)
    cfg, model, steps = record(sets)
    return write_dump(directory, manifest_head(cfg, model, sets), steps, overwrite, npz)
