"""Wall time of the experiment grid's runs: this checkout against the code at the filing of the
speed issue (commit 815a6ed by default), same runs, same machine, and whether the results are
the same.

The grid of that time (benchmarks/experiments.py at 815a6ed, "about 55 min") ran `fedmef run`
with the `paper` preset and the settings in ``GRID_SETS`` for FedAvg, static masks,
prune-and-grow and FedMef. This script runs those same commands, shortened to ``--rounds``
rounds (with an evaluation every 2 rounds and one mask adjustment, as the grid's rounds have),
once in a checkout of the old commit and once in this one (after a one-round warm-up of every
case in each, so no kernel compiles in a timed run), alternating which goes first, one
process per run with one thread (the grid ran 2 such processes at a time on the 2 cores). The
figure is the sum of the old runs' wall times over the sum of ours, measured, and projected to
the grid's 25 rounds per run (each run's start-up plus 25 times its own seconds per round): the
factor by which the grid's wall time shrinks. "Same results" compares every run's final model
bytes (model.npz) and the training record of every round (losses, accuracies, masks), leaving
out the fields that are not results (times, and the activation-cache byte count, whose
accounting changed on purpose: docs/memory.md).

    .venv/bin/python benchmarks/grid_speed.py [--baseline 815a6ed] [--rounds 10] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The commit at the filing of the speed issue (issue 12).
BASELINE = "815a6ed"

#: benchmarks/experiments.py at 815a6ed: the setting every run of that grid shared.
GRID_SETS = (
    "data.dataset=fashion-mnist", "data.num_clients=100", "data.partition=dirichlet",
    "data.dirichlet_alpha=0.5", "model.name=cnn", "train.clients_per_round=10",
    "train.local_epochs=1", "train.batch_size=64", "train.lr=0.1", "train.lr_min=0.01",
    "sparse.alpha=0.3", "sparse.delta_t=5", "run.eval_every=2", "run.checkpoint_every=5",
    "run.threads=1", "sap.gamma=auto",
)
#: Rounds of each run of that grid: the figure the grid's wall time scales with is a run's
#: start-up plus this many rounds, projected from each run's measured start-up and seconds per
#: round (its summary.json).
GRID_ROUNDS = 25
#: The grid's main rows: (name, method, density).
CASES = (("fedavg", "fedavg", "1"), ("static-d0.1", "static", "0.1"),
         ("prune_grow-d0.1", "prune_grow", "0.1"), ("fedmef-d0.1", "fedmef", "0.1"),
         ("fedmef-d0.05", "fedmef", "0.05"))
#: metrics.jsonl fields that are not results (times; byte accounting that changed on purpose).
NOT_RESULTS = ("seconds", "activation_bytes", "activation_bytes_per_client")


def command(out: Path, method: str, density: str, rounds: int) -> list[str]:
    cmd = [sys.executable, "-m", "refimpl.cli", "run", "--preset", "paper", "--out", str(out),
           "--overwrite", "--quiet", "--set", f"run.method={method}", "--set", "run.seed=0",
           "--set", f"run.rounds={rounds}", "--set", f"sparse.t_end={max(1, rounds - 1)}",
           "--set", f"sparse.density={density}"]
    for s in GRID_SETS:
        cmd += ["--set", s]
    return cmd


def timed_run(tree: Path, out: Path, method: str, density: str, rounds: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "NUMBA_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    r = subprocess.run(command(out, method, density, rounds), cwd=tree, env=env,
                       capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"run failed in {tree} ({method} d{density}):\n{r.stderr[-2000:]}")
    return seconds


def results(out: Path) -> tuple[str, list]:
    model = hashlib.sha256((out / "model.npz").read_bytes()).hexdigest()
    records = []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        records.append({k: v for k, v in rec.items() if not k.startswith(NOT_RESULTS)})
    return model, records


def baseline_tree(rev: str, tmp: Path) -> Path:
    tree = tmp / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=ROOT, check=True,
                   capture_output=True, text=True)
    return tree


def measure(rev: str, rounds: int, tree: Path | None = None, log=print) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="grid_speed."))
    made = tree is None
    try:
        old = baseline_tree(rev, tmp) if made else tree
        trees = (("old", old), ("new", ROOT))
        for label, t in trees:  # compile (or load) every case's kernels once in each tree
            for name, method, density in CASES:
                timed_run(t, tmp / f"warm-{label}-{name}", method, density, 1)
        rows = []
        for i, (name, method, density) in enumerate(CASES):
            row = {"case": name}
            for label, t in (trees if i % 2 == 0 else trees[::-1]):  # alternate who goes first
                out = tmp / f"{label}-{name}"
                row[f"{label}_s"] = timed_run(t, out, method, density, rounds)
                row[label] = results(out)
                # the run's own seconds per round (summary.json), the rest is start-up
                per = json.loads((out / "summary.json").read_text())["seconds_per_round"]
                row[f"{label}_start"] = row[f"{label}_s"] - per * rounds
                row[f"{label}_{GRID_ROUNDS}"] = row[f"{label}_start"] + per * GRID_ROUNDS
            row["same"] = row.pop("old") == row.pop("new")
            rows.append(row)
            log(f"  {name:<16} old {row['old_s']:6.1f} s  new {row['new_s']:6.1f} s  "
                f"{row['old_s'] / row['new_s']:.2f}x; at {GRID_ROUNDS} rounds "
                f"{row[f'old_{GRID_ROUNDS}'] / row[f'new_{GRID_ROUNDS}']:.2f}x; same results: "
                f"{row['same']}")
        total = {k: sum(r[k] for r in rows) for k in
                 ("old_s", "new_s", f"old_{GRID_ROUNDS}", f"new_{GRID_ROUNDS}")}
        return {"baseline": rev, "rounds": rounds, "rows": rows, **total,
                "speedup": total["old_s"] / total["new_s"],
                "grid_rounds": GRID_ROUNDS,
                "speedup_grid": total[f"old_{GRID_ROUNDS}"] / total[f"new_{GRID_ROUNDS}"],
                "same": all(r["same"] for r in rows)}
    finally:
        if made:
            subprocess.run(["git", "worktree", "remove", "--force", str(tmp / "baseline")],
                           cwd=ROOT, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default=BASELINE, help=f"the old commit (default: {BASELINE})")
    ap.add_argument("--baseline-tree", default=None,
                    help="an existing checkout of the old code, instead of a temporary worktree")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    if args.rounds < 2:
        ap.error(f"--rounds: at least 2 (one evaluation), received {args.rounds}")
    tree = Path(args.baseline_tree).resolve() if args.baseline_tree else None
    r = measure(args.baseline, args.rounds, tree,
                log=(lambda *a: print(*a, file=sys.stderr)) if args.json else print)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"grid runs ({args.rounds} rounds each): {r['old_s']:.1f} s at {args.baseline}, "
              f"{r['new_s']:.1f} s now: {r['speedup']:.2f}x faster; projected to the grid's "
              f"{GRID_ROUNDS} rounds per run: {r['speedup_grid']:.2f}x; same results: "
              f"{r['same']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
