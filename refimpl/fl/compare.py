"""``fedmef compare DIR...``: one table row per run directory, from its summary.json (or, for a
run that has not finished, its metrics.jsonl) and config.toml."""

from __future__ import annotations

import json
from pathlib import Path

from .config import load_config
from .rundir import parse_metrics
from .runner import human_bytes, summarize

__all__ = ["compare_rows", "format_table", "accuracy_series", "save_compare_plot"]

COLUMNS = ("run", "method", "norm", "bae", "gamma", "density", "rounds", "final acc", "best acc",
           "act. cache", "up total", "down total", "s/round")


def _fmt(v, kind="") -> str:
    if v is None:
        return "-"
    if kind == "acc":
        return f"{v:.4f}"
    if kind == "bytes":
        return human_bytes(v)
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


_SUMMARY_KEYS = ("method", "norm", "bae", "sap_gamma", "density", "rounds", "rounds_completed",
                 "final_test_accuracy", "best_test_accuracy", "activation_bytes_max",
                 "bytes_up_total", "bytes_down_total", "seconds_per_round")


def _summary(d: Path) -> dict:
    """summary.json of a finished run; a damaged one is an error naming the file."""
    p = d / "summary.json"
    try:
        s = json.loads(p.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{str(p)!r} is damaged: not a JSON summary ({e}); `fedmef run --resume "
                         f"{d}` rewrites it") from None
    missing = [k for k in _SUMMARY_KEYS if k not in s] if isinstance(s, dict) else ["all keys"]
    if missing:
        raise ValueError(f"{str(p)!r} is damaged: it lacks {', '.join(missing)}; `fedmef run "
                         f"--resume {d}` rewrites it")
    return s


def compare_rows(dirs) -> list[list[str]]:
    rows = []
    for d in map(Path, dirs):
        if not (d / "config.toml").exists():
            raise FileNotFoundError(f"{str(d)!r} is not a run directory (no config.toml)")
        if (d / "summary.json").exists():
            s = _summary(d)
        else:  # unfinished: summarise what the metrics hold, every record verified
            cfg = load_config(path=d / "config.toml")
            try:
                records = parse_metrics(d / "metrics.jsonl")
            except ValueError as e:
                raise ValueError(f"{e}; damage after the newest checkpoint is repaired by "
                                 f"`fedmef run --resume {d}`") from None
            s = summarize(cfg, records, 0.0, 0)
        done = s["rounds_completed"]
        rows.append([
            d.name or str(d), s["method"], s["norm"], _fmt(s["bae"]), _fmt(s["sap_gamma"]),
            _fmt(s["density"]), f"{done}/{s['rounds']}", _fmt(s["final_test_accuracy"], "acc"),
            _fmt(s["best_test_accuracy"], "acc"), _fmt(s["activation_bytes_max"], "bytes"),
            _fmt(s["bytes_up_total"], "bytes"), _fmt(s["bytes_down_total"], "bytes"),
            _fmt(s["seconds_per_round"]),
        ])
    return rows


def format_table(rows: list[list[str]]) -> str:
    table = [list(COLUMNS)] + rows
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths, strict=True))) for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def accuracy_series(dirs) -> list[dict]:
    """Per run directory, its test-accuracy curve for :func:`plots.save_accuracy_overlay`:
    label (directory name, method, density, γ), method, density, evaluated rounds, accuracies,
    adjustment rounds, and the run's Config under ``cfg``."""
    out = []
    for d in map(Path, dirs):
        if not (d / "config.toml").exists():
            raise FileNotFoundError(f"{str(d)!r} is not a run directory (no config.toml)")
        cfg = load_config(path=d / "config.toml")
        recs = parse_metrics(d / "metrics.jsonl")
        evals = [r for r in recs if r["test_accuracy"] is not None]
        density = "dense" if cfg.sparse.density >= 1 else f"density {cfg.sparse.density:g}"
        sap = f"SAP γ {cfg.sap.gamma:g}" if cfg.sap.gamma > 0 else "no SAP"
        out.append({
            "label": f"{d.name or d.resolve().name}: {cfg.run.method}, {density}, {sap}",
            "method": cfg.run.method,
            "density": cfg.sparse.density,
            "rounds": [r["round"] for r in evals],
            "accuracy": [r["test_accuracy"] for r in evals],
            "adjustments": [r["round"] for r in recs if r["adjustment"]],
            "cfg": cfg,
        })
    return out


def save_compare_plot(dirs, path) -> Path:
    """``fedmef compare --plot FILE``: one overlay plot of the runs' test-accuracy curves."""
    from .plots import save_accuracy_overlay

    series = accuracy_series(dirs)
    title = f"test accuracy of {len(series)} run{'s' if len(series) > 1 else ''}"
    shared = {(s["cfg"].model.name, s["cfg"].data.dataset) for s in series}
    if len(shared) == 1:
        model, dataset = next(iter(shared))
        title += f"\n{model} on {dataset}"
    return save_accuracy_overlay(series, path, title)
