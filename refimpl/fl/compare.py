"""``fedmef compare DIR...``: one table row per run directory, from its summary.json (or, for a
run that has not finished, its metrics.jsonl) and config.toml."""

from __future__ import annotations

import json
from pathlib import Path

from .config import load_config
from .runner import human_bytes, read_metrics, summarize

__all__ = ["compare_rows", "format_table"]

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


def compare_rows(dirs) -> list[list[str]]:
    rows = []
    for d in map(Path, dirs):
        if not (d / "config.toml").exists():
            raise FileNotFoundError(f"{str(d)!r} is not a run directory (no config.toml)")
        if (d / "summary.json").exists():
            s = json.loads((d / "summary.json").read_text("utf-8"))
        else:  # unfinished: summarise what the metrics hold
            cfg = load_config(path=d / "config.toml")
            s = summarize(cfg, read_metrics(d / "metrics.jsonl"), 0.0, 0)
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
