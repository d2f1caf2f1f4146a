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
from ..fl.store import atomic_write_text
from . import scenario
from .dump import FORMAT, check_target, write_dump
from .port import port_header
from .quantities import manifest_table
from .recorder import Recorder
from .tolerance import float32_tolerance

__all__ = ["export", "record", "manifest_head", "derivation", "client_steps"]


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


def client_steps(steps) -> int:
    """S of the float32 tolerance: the most steps one client chains in a round (its local steps
    and its growth pass), from the recorded steps."""
    per: dict[tuple, int] = {}
    for s in steps:
        if s.kind in ("local", "growth"):
            per[(s.round, s.client)] = per.get((s.round, s.client), 0) + 1
    return max(per.values(), default=1)


def derivation(model, steps, batch: int):
    """The float32 tolerance of this scenario (:mod:`refimpl.conformance.tolerance`)."""
    shape = steps[0].arrays["data/c0/x_u8"].shape[1:]
    return float32_tolerance(model, shape, batch, client_steps(steps))


def manifest_head(cfg, model, sets, steps) -> dict:
    """Everything of the manifest but the step list (``steps``: the recorded steps, for the
    float32 tolerance)."""
    f32 = derivation(model, steps, cfg.train.batch_size) if cfg.run.dtype == "float32" else None
    head = {
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
        "quantities": manifest_table(cfg.run.dtype, f32),
    }
    if f32 is not None:
        head["tolerance"] = {"float32": f32.to_dict()}
    return head


def export(directory, sets=(), overwrite: bool = False, npz: bool = True,
           c_header=None) -> dict:
    """Export the scenario's dump to ``directory``; return the manifest. ``npz=False`` skips
    the per-step .npz files (manifest.json and conformance.bin only). An existing ``directory``
    is refused before the scenario runs unless it may be replaced (:func:`check_target`).
    ``c_header``: also write the C port's plan header of this scenario to that path
    (:func:`refimpl.conformance.port.port_header`, docs/porting.md)."""
    sets = list(sets)
    check_target(directory, overwrite)
    cfg, model, steps = record(sets)
    header = None
    if c_header is not None:  # before the dump: a scenario the port cannot run writes nothing
        header = port_header(cfg, model, steps[0].arrays["data/c0/x_u8"].shape[1:])
    manifest = write_dump(directory, manifest_head(cfg, model, sets, steps), steps, overwrite,
                          npz)
    if header is not None:
        atomic_write_text(c_header, header)
    return manifest
