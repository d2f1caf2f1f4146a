"""``fedmef conformance check DIR``: compare a dump of another implementation with ours, step by
step, and report the first divergence of every step (docs/conformance.md).

The reference dump (ours: regenerated, or given with ``--against``) drives the comparison: its
manifest lists the steps in execution order, each step's keys in computation order, and each
key's quantity class with its SPEC rules, kind and tolerance
(:mod:`refimpl.conformance.quantities`). For every step the first key that differs is reported
with its maximum absolute and relative error (``max|a − b|`` and ``max|a − b| / max|ref|`` over
the tensor), the flat index of the largest error, and the rules of its class. Keys the candidate
lacks count as divergences; keys only the candidate has are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .dump import Dump, DumpError

__all__ = ["Divergence", "StepResult", "Report", "compare_array", "check_dumps", "STEP_KINDS"]

#: The kinds of steps a dump holds (docs/conformance.md, "Steps").
STEP_KINDS = ("inputs", "init", "round_start", "local", "growth", "server")


@dataclass(frozen=True)
class Divergence:
    """How one key of one step differs. ``what``: value | missing | shape | dtype | nonfinite |
    missing_step."""

    step: str
    key: str
    cls: str
    rules: tuple[str, ...]
    what: str
    max_abs: float | None = None
    max_rel: float | None = None
    index: int | None = None
    detail: str = ""

    def describe(self) -> str:
        rules = ", ".join(self.rules) if self.rules else "-"
        head = f"{self.key} [{self.cls}: {rules}]"
        if self.what == "missing_step":
            return f"{self.key}: {self.detail}"
        if self.what == "value":
            at = f" at flat index {self.index}" if self.index is not None else ""
            return (f"{head}: max abs err {self.max_abs:.3e}, max rel err {self.max_rel:.3e}"
                    f"{at} ({self.detail})")
        return f"{head}: {self.detail}"


@dataclass
class StepResult:
    name: str
    entry: dict
    first: Divergence | None
    diverging: int
    compared: int
    worst_rel: float = 0.0  # largest float relative error among matching keys

    @property
    def where(self) -> str:
        e = self.entry
        parts = [f"round {e['round']}" if e.get("round") is not None else None,
                 f"client {e['client']}" if e.get("client") is not None else None,
                 f"local step {e['tau']}" if e.get("tau") is not None else None]
        parts = [p for p in parts if p]
        return f" ({', '.join(parts)})" if parts else ""


@dataclass
class Report:
    reference: str
    candidate: str
    steps: list[StepResult] = field(default_factory=list)
    kinds: tuple | None = None  # the step kinds compared (None: every step)
    skipped: int = 0  # reference steps of other kinds, not compared

    @property
    def ok(self) -> bool:
        return all(s.first is None for s in self.steps)

    @property
    def divergences(self) -> list[Divergence]:
        return [s.first for s in self.steps if s.first is not None]

    @property
    def worst_rel(self) -> float:
        return max((s.worst_rel for s in self.steps), default=0.0)

    def format(self, verbose: bool = False) -> str:
        lines = [f"reference: {self.reference}", f"candidate: {self.candidate}"]
        for s in self.steps:
            if s.first is not None:
                more = (f"; {s.diverging - 1} further quantit{'y' if s.diverging == 2 else 'ies'}"
                        f" of {s.compared} differ" if s.diverging > 1 else "")
                lines.append(f"DIVERGES {s.name}{s.where}: {s.first.describe()}{more}")
            elif verbose:
                lines.append(f"ok       {s.name}{s.where}: {s.compared} quantities, worst float "
                             f"rel err {s.worst_rel:.1e}")
        keys = sum(s.compared for s in self.steps)
        if self.kinds is not None:
            lines.append(f"compared the steps of kind {', '.join(self.kinds)}; {self.skipped} "
                         f"steps of other kinds not compared")
        if self.ok:
            lines.append(f"OK: {len(self.steps)} steps, {keys} quantities match (worst float "
                         f"relative error {self.worst_rel:.1e})")
        else:
            bad = [s for s in self.steps if s.first is not None]
            d = bad[0].first
            lines.append(f"FAIL: {len(bad)} of {len(self.steps)} steps diverge; the first "
                         f"divergence is at step {d.step}, quantity {d.key} (rules "
                         f"{', '.join(d.rules)})")
        return "\n".join(lines)


def _is_int(a: np.ndarray) -> bool:
    return a.dtype.kind in "biu"


def compare_array(ref: np.ndarray, got, q: dict) -> tuple[str | None, dict]:
    """Compare one candidate array with the reference under quantity class ``q`` (a manifest
    class entry). Returns (what, info): ``what`` is None when they agree, else the kind of
    divergence; ``info`` holds max_abs, max_rel, index, detail and, for agreeing floats, rel."""
    if got is None:
        return "missing", {"detail": "missing from the candidate's step"}
    got = np.asarray(got)
    if got.shape != ref.shape:
        return "shape", {"detail": f"shape {got.shape}, expected {ref.shape}"}
    if _is_int(ref) != _is_int(got) or got.dtype.kind not in "biuf":
        want = "an integer or boolean" if _is_int(ref) else "a floating-point"
        return "dtype", {"detail": f"dtype {got.dtype}, expected {want} array like {ref.dtype}"}
    if ref.size == 0:
        return None, {"rel": 0.0}
    if got.dtype.kind == "f" and not np.all(np.isfinite(got)):
        i = int(np.flatnonzero(~np.isfinite(got.reshape(-1)))[0])
        return "nonfinite", {"detail": f"non-finite value {got.reshape(-1)[i]} at flat index {i}",
                             "index": i}
    if _is_int(ref):
        a, b = got.reshape(-1).astype(np.int64), ref.reshape(-1).astype(np.int64)
        diff = np.abs(a - b).astype(np.float64)
    else:
        diff = np.abs(got.reshape(-1).astype(np.float64) - ref.reshape(-1).astype(np.float64))
    max_abs = float(diff.max())
    scale = float(np.max(np.abs(ref.astype(np.float64))))
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    if q["kind"] == "float":
        allowed = q["atol"] + q["rtol"] * scale
        if max_abs <= allowed:
            return None, {"rel": max_rel}
        detail = f"allowed abs err {q['atol']:g} + {q['rtol']:g}·max|ref| = {allowed:.3e}"
        return "value", {"max_abs": max_abs, "max_rel": max_rel, "index": int(diff.argmax()),
                         "detail": detail}
    if max_abs == 0:
        return None, {"rel": 0.0}
    bad = np.flatnonzero(diff)
    detail = (f"{bad.size} of {diff.size} entries differ, must be equal; first at flat index "
              f"{int(bad[0])}: {got.reshape(-1)[bad[0]]} vs {ref.reshape(-1)[bad[0]]}")
    return "value", {"max_abs": max_abs, "max_rel": max_rel, "index": int(diff.argmax()),
                     "detail": detail}


def _check_step(entry: dict, quantities: dict, ref: dict, got: dict | None) -> StepResult:
    name = entry["name"]
    if got is None:
        rules = sorted({r for _, cls in entry["keys"] for r in quantities[cls]["rules"]})
        d = Divergence(name, "(whole step)", "step", tuple(rules), "missing_step",
                       detail=f"missing: the candidate has neither {entry['file']} nor tensors "
                       f"'{name}/...' in a conformance.bin")
        return StepResult(name, entry, d, len(entry["keys"]), len(entry["keys"]))
    first, n_bad, worst = None, 0, 0.0
    for key, cls in entry["keys"]:
        if key not in ref:
            raise DumpError(f"reference step {name}: key {key!r} listed in the manifest is "
                            f"missing from its arrays")
        q = quantities[cls]
        what, info = compare_array(ref[key], got.get(key), q)
        if what is None:
            if q["kind"] == "float":
                worst = max(worst, info["rel"])
            continue
        n_bad += 1
        if first is None:
            first = Divergence(name, key, cls, tuple(q["rules"]), what, info.get("max_abs"),
                               info.get("max_rel"), info.get("index"), info.get("detail", ""))
    return StepResult(name, entry, first, n_bad, len(entry["keys"]), worst)


def check_dumps(candidate: Dump, reference: Dump, kinds=None) -> Report:
    """Compare every step the reference's manifest lists (see the module docstring), or with
    ``kinds`` only the steps of those kinds (a port of one part of the run, e.g. the client's
    ``local`` and ``growth`` steps)."""
    m = reference.manifest
    if m is None:
        raise DumpError(f"reference {str(reference.path)!r} has no manifest")
    theirs = (candidate.manifest or {}).get("scenario", {}).get("config")
    if theirs is not None and theirs != m["scenario"]["config"]:
        raise DumpError(f"{str(candidate.path)!r} was exported for another scenario "
                        f"configuration than the reference {str(reference.path)!r}; compare "
                        f"dumps of the same scenario (see scenario.sets in the manifests)")
    report = Report(f"{reference.path} ({reference.source})",
                    f"{candidate.path} ({candidate.source})",
                    kinds=tuple(kinds) if kinds is not None else None)
    for entry in m["steps"]:
        if kinds is not None and entry.get("kind") not in kinds:
            report.skipped += 1
            continue
        ref = reference.load(entry)
        if ref is None:
            raise DumpError(f"reference {str(reference.path)!r} lacks step {entry['name']} "
                            f"({entry['file']})")
        report.steps.append(_check_step(entry, m["quantities"], ref, candidate.load(entry)))
    return report
