"""Experiments: does FedMef hold up? Accuracy, memory and communication of FedMef against its
baselines and ablations, on the full Fashion-MNIST (issue "experiments").

One command runs the whole grid (one run directory each, resumable: finished runs are kept,
interrupted ones continue from their last checkpoint) and writes ``docs/results.md`` with its
tables and plots (``docs/results/*.png``):

    .venv/bin/python benchmarks/experiments.py [--jobs 2] [--rounds 25] [--out runs/experiments]
    .venv/bin/python benchmarks/experiments.py --report-only     # rebuild the report only

Every number in the report comes from the runs' own files (``summary.json``, ``metrics.jsonl``)
and from the analytic memory ledger (``refimpl.memory.ledger``); none is typed in by hand. The
hand-written discussion lives in ``docs/results_discussion.md`` and is included verbatim.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: The setting every run shares (stated in the report). Rounds come from --rounds.
BASE = [
    "data.dataset=fashion-mnist", "data.num_clients=100", "data.partition=dirichlet",
    "data.dirichlet_alpha=0.5", "model.name=cnn", "train.clients_per_round=10",
    "train.local_epochs=1", "train.batch_size=64", "train.lr=0.1", "train.lr_min=0.01",
    "sparse.alpha=0.3", "sparse.delta_t=5", "run.eval_every=2", "run.checkpoint_every=5",
    "run.threads=1", "sap.gamma=auto",
]
MAIN_SEEDS = (0, 1)
DENSITIES = ("0.1", "0.05")
LAMBDAS = ("0.3", "3.0")  # the default (1.0) is the main fedmef row
GAMMAS = ("0.5", "0.9")  # the default (0.7) is the main fedmef row


@dataclass(frozen=True)
class Row:
    name: str
    group: str  # main | ablation | gamma | lambda
    method: str
    density: str
    sets: tuple = ()
    seeds: tuple = (0,)
    label: str = ""


def grid() -> list[Row]:
    rows = [Row("fedavg", "main", "fedavg", "1", ("sparse.density=1",), MAIN_SEEDS,
                "FedAvg (dense, BN)")]
    for d in DENSITIES:
        s = (f"sparse.density={d}",)
        rows += [
            Row(f"static-d{d}", "main", "static", d, s, MAIN_SEEDS, "static ERK mask (BN)"),
            Row(f"prune_grow-d{d}", "main", "prune_grow", d, s, MAIN_SEEDS,
                "prune-and-grow (BN, no SAP, no BaE)"),
            Row(f"fedmef-d{d}", "main", "fedmef", d, s, MAIN_SEEDS,
                "FedMef (NSConv, SAP γ=0.7, BaE λ=1)"),
            Row(f"fedmef-nosap-d{d}", "ablation", "fedmef", d, s + ("sap.gamma=0",),
                label="FedMef without SAP"),
            Row(f"fedmef-nobae-d{d}", "ablation", "fedmef", d, s + ("bae.enabled=false",),
                label="FedMef without BaE"),
            Row(f"fedmef-bn-d{d}", "ablation", "fedmef", d, s + ("model.norm=bn",),
                label="FedMef with BatchNorm instead of NSConv"),
        ]
    # Where does NSConv's accuracy go? Its masked statistics mode (NSC-2), and no norm at all.
    rows += [
        Row("fedmef-maskedstats-d0.1", "ablation", "fedmef", "0.1",
            ("sparse.density=0.1", "model.nsconv_stats=masked"),
            label="FedMef with NSConv masked statistics (NSC-2)"),
        Row("fedmef-nonorm-d0.1", "ablation", "fedmef", "0.1",
            ("sparse.density=0.1", "model.norm=none"), label="FedMef with plain convs (no norm)"),
    ]
    for g in GAMMAS:
        rows.append(Row(f"fedmef-gamma{g}-d0.1", "gamma", "fedmef", "0.1",
                        ("sparse.density=0.1", f"sap.gamma={g}"), label=f"FedMef γ={g}"))
    for lam in LAMBDAS:
        rows.append(Row(f"fedmef-lambda{lam}-d0.1", "lambda", "fedmef", "0.1",
                        ("sparse.density=0.1", f"bae.lambda={lam}"), label=f"FedMef λ={lam}"))
    return rows


def run_dir(out: Path, row: Row, seed: int) -> Path:
    return out / f"{row.name}-s{seed}"


def _done(d: Path, rounds: int) -> bool:
    s = d / "summary.json"
    if not s.exists():
        return False
    return json.loads(s.read_text())["rounds_completed"] >= rounds


def launch(row: Row, seed: int, out: Path, rounds: int) -> tuple[str, float, int]:
    """Run (or resume) one configuration in a subprocess; returns (dir, seconds, exit code)."""
    d = run_dir(out, row, seed)
    if _done(d, rounds):
        return str(d), 0.0, 0
    cmd = [sys.executable, "-m", "refimpl.cli", "run"]
    if (d / "config.toml").exists() and any((d / "checkpoints").glob("*.npz")):
        cmd += ["--resume", str(d)]
    else:
        cmd += ["--preset", "paper", "--out", str(d), "--overwrite", "--set",
                f"run.method={row.method}", "--set", f"run.seed={seed}", "--set",
                f"run.rounds={rounds}", "--set", f"sparse.t_end={rounds * 3 // 4}"]
        for s in BASE + list(row.sets):
            cmd += ["--set", s]
    log = out / "logs" / f"{d.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "a") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                             env={**os.environ, "PYTHONHASHSEED": "0",
                                  # one BLAS thread per run: runs go in parallel (--jobs)
                                  "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                                  "MKL_NUM_THREADS": "1"})
    return str(d), time.perf_counter() - t0, rc


# ---- report -----------------------------------------------------------------------------------
@dataclass
class Result:
    row: Row
    seeds: list = field(default_factory=list)
    final: list = field(default_factory=list)
    last10: list = field(default_factory=list)
    comm: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    curves: list = field(default_factory=list)  # (rounds, accuracies) per seed
    adjustments: list = field(default_factory=list)  # mask adjustment rounds (first seed's)
    config: dict | None = None
    footprint: int | None = None
    activation: int | None = None
    activation_measured: int | None = None


def collect(out: Path, rows: list[Row], rounds: int) -> list[Result]:
    from refimpl.fl.runner import read_metrics

    results = []
    for row in rows:
        r = Result(row)
        for seed in row.seeds:
            d = run_dir(out, row, seed)
            if not _done(d, rounds):
                continue
            summ = json.loads((d / "summary.json").read_text())
            recs = read_metrics(d / "metrics.jsonl")
            evals = [(x["round"], x["test_accuracy"]) for x in recs
                     if x["test_accuracy"] is not None]
            r.seeds.append(seed)
            r.final.append(summ["final_test_accuracy"])
            r.last10.append(sum(a for _, a in evals[-10:]) / len(evals[-10:]))
            r.comm.append(summ["bytes_up_total"] + summ["bytes_down_total"])
            r.seconds.append(summ["seconds"])
            r.curves.append(([t for t, _ in evals], [a for _, a in evals]))
            if not r.adjustments:
                r.adjustments = [x["round"] for x in recs if x["adjustment"]]
            r.activation_measured = summ["activation_bytes_max"]
            if r.config is None:
                import tomllib

                r.config = tomllib.loads((d / "config.toml").read_text())
        if r.config is not None:
            _ledger(r)
        results.append(r)
    return results


def _ledger(r: Result) -> None:
    """Paper-style footprint (sparse model + activation cache at the run's batch size, MEM-3)
    from the analytic ledger, with the run's own resolved settings."""
    import numpy as np

    from refimpl.memory import ledger

    c = r.config
    led = ledger(c["model"]["name"], (1, 28, 28), c["train"]["batch_size"],
                 density=c["sparse"]["density"], density_kind=c["sparse"]["density_kind"],
                 gamma=c["sap"]["gamma"], policy=c["sap"]["cache_policy"], dtype=np.float32,
                 norm=c["model"]["norm"], nsconv_stats=c["model"]["nsconv_stats"],
                 width=c["model"]["width"], num_classes=10)
    r.footprint = led.totals["footprint"]
    r.activation = led.totals["activation_cache"]


def _mean(v):
    return sum(v) / len(v)


def _fmt_acc(v) -> str:
    if not v:
        return "not run"
    if len(v) == 1:
        return f"{v[0]:.4f}"
    return f"{_mean(v):.4f} ({min(v):.4f}–{max(v):.4f})"


def _kib(n) -> str:
    return "-" if n is None else f"{n / 1024:,.1f}"


def table(results: list[Result], baseline: dict) -> str:
    head = ("| run | density | final acc. | mean of last 10 evals | footprint KiB | vs prune_grow "
            "| activation KiB | comm. MiB | wall s |\n|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in results:
        base = baseline.get(r.row.density)
        red = "-"
        if r.footprint is not None and base is not None and r.row.method != "fedavg":
            red = f"{100 * (1 - r.footprint / base):+.1f}%".replace("+", "−", 1) \
                if r.footprint < base else f"+{100 * (r.footprint / base - 1):.1f}%"
        seeds = ",".join(str(s) for s in r.seeds) or "-"
        lines.append(
            f"| {r.row.label} [{r.row.name}, seeds {seeds}] | {r.row.density} | "
            f"{_fmt_acc(r.final)} | {_fmt_acc(r.last10)} | {_kib(r.footprint)} | {red} | "
            f"{_kib(r.activation)} | "
            f"{(_mean(r.comm) / 2**20 if r.comm else float('nan')):.1f} | "
            f"{(_mean(r.seconds) if r.seconds else float('nan')):.0f} |")
    return head + "\n".join(lines) + "\n"


_SHORT = {"nosap": "no SAP", "nobae": "no BaE", "bn": "BatchNorm", "maskedstats": "masked stats",
          "nonorm": "no norm"}


def _short(row: Row) -> str:
    """A point's label in the footprint plot: the method for a main row, else what the
    ablation or sweep changes in FedMef (colour, marker and fill say method, density, kind)."""
    if row.group == "main":
        return row.method
    tag = row.name.removeprefix(f"{row.method}-").removesuffix(f"-d{row.density}")
    for prefix, sym in (("gamma", "γ"), ("lambda", "λ")):
        if tag.startswith(prefix):
            return f"{sym} = {tag[len(prefix):]}"
    return _SHORT.get(tag, tag)


def _point(row: Row, footprint: float, accuracy: float) -> dict:
    """One point of the footprint plot; the marker says the density, so the label drops it."""
    return {"label": _short(row), "method": row.method,
            "density": float(row.density), "footprint": footprint, "accuracy": accuracy,
            "filled": row.group == "main",
            "priority": {"main": 0, "ablation": 1}.get(row.group, 2)}


def footprint_plot(points: list[dict], path: Path) -> list[int]:
    """docs/results/footprint_vs_accuracy.png from its points (see :func:`_point`); returns
    the indices of the points left without a label."""
    from refimpl.fl.plots import save_footprint_accuracy

    seeds = ", ".join(map(str, MAIN_SEEDS))
    _, skipped = save_footprint_accuracy(
        points, path, "memory against accuracy: every run of the grid\n"
        "Fashion-MNIST, cnn, 100 clients (Dirichlet 0.5), 25 rounds",
        xlabel="paper-style footprint per client: sparse model + activation cache at batch 64",
        ylabel="test accuracy (%), mean of the last 10 evaluations",
        fill_labels=(f"main row (mean of seeds {seeds})",
                     "FedMef ablation or sweep\n(seed 0; label: what changes)"))
    return skipped


def points_from_report(text: str) -> list[dict]:
    """The footprint plot's points read back from the tables of a docs/results.md that
    :func:`report` wrote: for redrawing the picture when the run directories are gone (the
    accuracy curves are not in the tables; they need the runs)."""
    import re

    rows = {r.name: r for r in grid()}
    cell = r"\s*([^|]*?)\s*\|"
    pattern = re.compile(r"^\|[^[|]*\[([^,\]]+), seeds [^\]]*\]\s*\|" + cell * 4)
    points = []
    for line in text.splitlines():
        m = pattern.match(line)
        if not m or m[5] == "-" or m[4] == "not run":
            continue
        if m[1] not in rows:
            raise ValueError(f"docs/results.md names a row {m[1]!r} that the grid does not "
                             f"have; rerun the grid (`make experiments`) to rebuild the report")
        points.append(_point(rows[m[1]], float(m[5].replace(",", "")) * 1024,
                             float(m[4].split()[0])))
    return points


def plots(results: list[Result], outdir: Path) -> list[str]:
    """The report's pictures: per density, the main rows' mean accuracy curves; and the
    footprint against accuracy of every row. A failure is one printed line, not a lost
    report."""
    from refimpl.fl.plots import save_accuracy_overlay

    names = []
    try:
        for d in DENSITIES:
            series = []
            for r in results:
                if r.row.group != "main" or r.row.density not in (d, "1") or not r.curves:
                    continue
                t = r.curves[0][0]
                acc = [_mean([c[1][i] for c in r.curves]) for i in range(len(t))]
                series.append({"label": f"{r.row.name}: {r.row.label}", "rounds": t,
                               "accuracy": acc, "adjustments": r.adjustments,
                               "method": r.row.method, "density": float(r.row.density)})
            if series:
                name = f"accuracy_d{d}.png"
                save_accuracy_overlay(
                    series, outdir / name, f"main rows at density {d}, with dense FedAvg\n"
                    f"Fashion-MNIST, cnn; mean over seeds {', '.join(map(str, MAIN_SEEDS))}")
                names.append(name)
        points = [_point(r.row, r.footprint, _mean(r.last10)) for r in results
                  if r.footprint is not None and r.last10]
        if points:
            footprint_plot(points, outdir / "footprint_vs_accuracy.png")
            names.append("footprint_vs_accuracy.png")
    except Exception as e:  # the tables do not need the pictures
        print(f"plots not written ({type(e).__name__}: {e})")
    return names


def versions() -> str:
    import numba
    import numpy
    import scipy

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    return (f"Python {platform.python_version()}, NumPy {numpy.__version__}, Numba "
            f"{numba.__version__}, SciPy {scipy.__version__}; {platform.machine()}, "
            f"{os.cpu_count()} cores; refimpl commit {commit}")


def report(out: Path, rows: list[Row], rounds: int, command: str) -> str:
    results = collect(out, rows, rounds)
    baseline = {r.row.density: r.footprint for r in results
                if r.row.method == "prune_grow" and r.footprint is not None}
    pics = plots(results, ROOT / "docs" / "results")
    groups = {"main": "Main rows (two seeds: mean, with min–max in brackets)",
              "ablation": "Ablations of FedMef (seed 0)",
              "gamma": "SAP ratio γ sweep at density 0.1 (seed 0; γ = 0.7 is the main row)",
              "lambda": "BaE λ sweep at density 0.1 (seed 0; λ = 1 is the main row)"}
    parts = [
        "# Results: FedMef against its baselines and ablations on Fashion-MNIST\n",
        "Generated by `benchmarks/experiments.py`; every number comes from the runs' files and "
        "the analytic memory ledger. Do not edit by hand: rerun the command.\n",
        f"**Command.** `{command}`\n",
        f"**Setting.** Full Fashion-MNIST (60,000 training / 10,000 test images, the Debian "
        f"`dataset-fashion-mnist` files), 100 clients with a Dirichlet(0.5) label split, 10 "
        f"clients per round, the `cnn` model, {rounds} rounds, 1 local epoch, batch 64, "
        f"learning rate 0.1 decaying exponentially to 0.01, mask adjustment every 5 rounds up "
        f"to round {rounds * 3 // 4} with α = 0.3, evaluation every 2 rounds. Per-run "
        f"overrides: `{' '.join(BASE)}` plus each row's own keys (its run directory's "
        f"`config.toml` holds the full resolved configuration). Methods resolve `auto` keys "
        f"as in docs/federated.md: FedMef uses NSConv, SAP γ = 0.7 and BaE (λ = 1); the "
        f"baselines use BatchNorm, no SAP and no BaE.\n",
        f"**Seeds.** Main rows: {', '.join(map(str, MAIN_SEEDS))}; sweeps and ablations: 0.\n",
        f"**Software.** {versions()}.\n",
        "**Columns.** *final acc.*: test accuracy after the last round; *mean of last 10 "
        "evals*: the mean test accuracy of the last 10 evaluations; *footprint*: the "
        "paper-style footprint per client (sparse model + activation cache at batch 64, MEM-3, "
        "float32); *vs prune_grow*: its change against the prune-and-grow baseline at the same "
        "density (the FedDST/FedTiny-style method without SAP); *activation*: the activation "
        "cache alone; *comm.*: bytes up + down over the whole run, all clients (MEM-4); *wall*: "
        "the run's wall time on this machine (two runs in parallel, one thread each).\n",
    ]
    for g, title in groups.items():
        rs = [r for r in results if r.row.group == g]
        parts.append(f"\n## {title}\n\n" + table(rs, baseline))
    if pics:
        parts.append("\n## Plots\n\n" + "\n".join(f"![{p}](results/{p})" for p in pics) + "\n")
    measured = [r for r in results if r.activation_measured is not None
                and r.activation is not None]
    if measured:
        ok = all(r.activation_measured == r.activation for r in measured)
        parts.append(f"\n**Ledger check.** For {len(measured)} rows the activation bytes the "
                     f"clients measured on their tapes {'equal' if ok else 'DIFFER FROM'} the "
                     f"ledger's (MEM-2).\n")
    disc = ROOT / "docs" / "results_discussion.md"
    if disc.exists():
        parts.append("\n" + disc.read_text())
    text = "\n".join(parts)
    (ROOT / "docs" / "results.md").write_text(text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Run the FedMef experiment grid and write "
                                 "docs/results.md")
    ap.add_argument("--out", default=str(ROOT / "runs" / "experiments"))
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    ap.add_argument("--only", nargs="*", help="row names to run (default: all)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--replot", action="store_true",
                    help="only redraw docs/results/footprint_vs_accuracy.png from the tables of "
                    "docs/results.md (when the run directories are gone)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    rows = grid()
    if args.replot:
        pic = ROOT / "docs" / "results" / "footprint_vs_accuracy.png"
        skipped = footprint_plot(points_from_report((ROOT / "docs" / "results.md").read_text()),
                                 pic)
        print(f"wrote {pic} ({len(skipped)} point(s) without a label)")
        return 0
    if args.only:
        unknown = set(args.only) - {r.name for r in rows}
        if unknown:
            ap.error(f"unknown rows {sorted(unknown)}; valid: {[r.name for r in rows]}")
    command = "python benchmarks/experiments.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only")
    if not args.report_only:
        todo = [(r, s) for r in rows if not args.only or r.name in args.only for s in r.seeds]
        print(f"{len(todo)} runs, {args.jobs} at a time, {args.rounds} rounds each; logs in "
              f"{out / 'logs'}", flush=True)
        failed = []
        with ThreadPoolExecutor(args.jobs) as pool:
            for d, secs, rc in pool.map(lambda rs: launch(rs[0], rs[1], out, args.rounds),
                                        todo):
                print(f"{'done' if rc == 0 else 'FAILED'} {d} ({secs:.0f} s)", flush=True)
                if rc:
                    failed.append(d)
        if failed:
            print(f"{len(failed)} run(s) failed; see their logs. Rerun to resume them.")
    report(out, rows, args.rounds, command.strip())
    print(f"wrote {ROOT / 'docs' / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
