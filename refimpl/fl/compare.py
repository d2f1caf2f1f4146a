"""``fedmef compare DIR...``: one table row per run directory, from its summary.json (or, for a
run that has not finished, its metrics.jsonl) and config.toml."""

from __future__ import annotations

import json
from pathlib import Path

from .config import load_config
from .rundir import parse_metrics
from .runner import human_bytes, summarize

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
