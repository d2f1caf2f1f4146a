"""`make bench`: run every speed benchmark and write docs/performance.md (generated; never edit it
by hand).

Each figure is a ratio against a peer run in the same process (PyTorch CPU, or our own conv
forward), as the median and spread (min..max) over at least 5 paired repeats, with the machine,
its load and the thread counts in the header, and each convolution's achieved GFLOP/s beside this
machine's measured sgemm rate (the physical limit). The targets are those of issue 12.

Three figures also take a second process. PyTorch loads first here (its OpenMP runtime then
keeps PyTorch's default, spinning wait policy); refimpl's parallel kernels run on an OpenMP
runtime of their own with passive waits (or, where that cannot be had, serial: the header says
which; refimpl/core/_jit.py). As a user runs it, without PyTorch in the process, they run in
parallel on OpenMP with passive waits. The round, the dense training and the masked conv are
also timed in a child process that never loads PyTorch, and that time is divided by the
in-process PyTorch time.

    .venv/bin/python benchmarks/report.py [--threads 2] [--repeats 5] [--out docs/performance.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import subprocess
import sys
import tempfile

import conv
import grid_speed
import masked_conv
import pool
import round as round_bench
import sap
from _common import ROOT, Figure, machine, set_threads

from refimpl.core import _jit
from refimpl.fl.store import atomic_write_text

#: Where the measurements wait while the page is rendered (removed once it is written).
SAVED = os.path.join(tempfile.gettempdir(), "refimpl-bench-measurements.pickle")

TARGETS = {  # issue 12: figure -> (target, what)
    "round": (1.0, "FedMef demo round (density 0.3, SAP 0.7) / PyTorch dense twin"),
    "round_alone": (1.0, "the same round timed without PyTorch in the process / PyTorch twin"),
    "dense": (1.5, "refimpl dense local training / PyTorch twin, same work"),
    "dense_alone": (1.5, "the same dense training timed without PyTorch in the process / twin"),
    "conv": (1.5, "dense conv fwd+bwd / PyTorch"),
    "masked": (0.5, "masked conv fwd+bwd at density 0.1 / PyTorch dense"),
    "masked_alone": (0.5, "the same masked conv timed without PyTorch in the process / PyTorch "
                          "dense"),
    "pool": (0.15, "max-pool fwd+bwd / conv fwd+bwd of the same layer"),
    "sap": (0.15, "SAP select+encode / conv forward (worst γ of 0.5, 0.7, 0.9; policy auto)"),
}


def _commit() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, text=True,
                             capture_output=True, check=True).stdout.strip()
        return out or "?"
    except (OSError, subprocess.CalledProcessError):
        return "?"


def alone(script: str, threads: int, repeats: int) -> dict:
    """benchmarks/<script> --alone-json in a child process that never loads PyTorch."""
    env = {**os.environ, "REFIMPL_BENCH_NO_TORCH": "1"}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script),
                          "--alone-json", "--threads", str(threads), "--repeats", str(repeats)],
                         env=env, text=True, capture_output=True, check=True).stdout
    return {k: Figure(v) for k, v in json.loads(out.strip().splitlines()[-1]).items()}


def measure_all(threads: int, repeats: int, log=print, with_grid: bool = True,
                grid_rounds: int = 10) -> dict:
    log("conv ...")
    c = conv.measure(threads, repeats)
    log("masked conv ...")
    m = masked_conv.measure(threads, repeats)
    log("masked conv (refimpl alone, child process) ...")
    ma = alone("masked_conv.py", threads, repeats)
    log("max-pool ...")
    p = pool.measure(threads, repeats)
    log("SAP ...")
    s = sap.measure(1, max(60, repeats))
    log("round (with PyTorch in the process) ...")
    r = round_bench.measure(threads, repeats)
    log("round (refimpl alone, child process) ...")
    a = alone("round.py", threads, repeats)
    torch_median = r["torch_s"].median
    grid = None
    if with_grid:
        log("experiment grid runs, filing-time code against now (several minutes) ...")
        try:
            grid = grid_speed.measure(grid_speed.BASELINE, grid_rounds, log=log)
        except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
            grid = {"error": str(e).splitlines()[0][:200]}
    figures = {
        "round": r["ratio_round"], "dense": r["ratio_dense"],
        "round_alone": Figure(v / torch_median for v in a["round_s"].samples),
        "dense_alone": Figure(v / torch_median for v in a["dense_s"].samples),
        "conv": c["ratio_np"], "masked": m["ratio d=0.1"],
        "masked_alone": Figure(v / m["torch_s"].median for v in ma["d=0.1"].samples),
        "pool": p["ratio"],
        "sap": s["worst_auto"],
    }
    return {"conv": c, "masked": m, "pool": p, "sap": s, "round": r, "alone": a,
            "figures": figures, "grid": grid}


def render(res: dict, threads: int, repeats: int) -> str:
    info = machine()
    c, m, r, a, s = res["conv"], res["masked"], res["round"], res["alone"], res["sap"]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    threads_note = ("compiled serial" if _jit.SERIAL_KERNELS else
                    "parallel, Numba layer: " + _jit.threading_choice())
    lines = [
        "# Performance",
        "",
        "Generated by `make bench` (`benchmarks/report.py`); do not edit by hand. Every figure is "
        f"the median (min..max) over {repeats} or more paired repeats in one process, PyTorch "
        "(or our own conv forward) run back to back with ours in each repeat.",
        "",
        f"- when: {now}; commit `{_commit()}`",
        f"- machine: {info['cpu']}, {info['cores']} cores, load average {info['load']} at the "
        "end of the run (a figure is only as quiet as the machine)",
        f"- software: Python {info['python']}, NumPy {info['numpy']}, Numba {info['numba']}, "
        f"PyTorch {info['torch']}",
        f"- threads: {r['info']}; SAP's kernels are sequential and timed at 1 thread",
        f"- this machine's sgemm rate (the physical limit): "
        f"{c['sgemm_gflops'].fmt(digits=1)} GFLOP/s",
        "",
        "## Issue 12 targets",
        "",
        "| figure | median (min..max) | target | verdict |",
        "|---|---|---|---|",
    ]
    for key, (target, what) in TARGETS.items():
        f = res["figures"][key]
        verdict = "meets" if f.median <= target else "misses"
        lines.append(f"| {what} | {f.fmt(digits=3)}x | <= {target:g}x | {verdict} |")
    grid = res.get("grid")
    if grid is None:
        lines.append("| wall time of the experiment grid's runs, filing-time code / now | not "
                     "measured (`--no-grid`) | >= 2x (halved) | - |")
    elif "error" in grid:
        lines.append(f"| wall time of the experiment grid's runs, filing-time code / now | not "
                     f"measured: {grid['error']} | >= 2x (halved) | - |")
    else:
        verdict = "meets" if grid["speedup_grid"] >= 2.0 and grid["same"] else "misses"
        lines.append(f"| wall time of the experiment grid's runs, {grid['baseline']} / now, "
                     f"projected to its {grid['grid_rounds']} rounds per run (measured at "
                     f"{grid['rounds']}: {grid['speedup']:.2f}x; same results: "
                     f"{'yes' if grid['same'] else 'NO'}) | {grid['speedup_grid']:.2f}x faster | "
                     f">= 2x (halved) | {verdict} |")
    lines += [
        "",
        "PyTorch loads first here and keeps its OpenMP runtime's default (spinning) wait "
        f"policy; refimpl's parallel kernels in the in-process rows: {threads_note} "
        "(refimpl/core/_jit.py, docs/decisions.md). The rows \"timed without PyTorch\" time "
        "the same work in a child process that never loads PyTorch (parallel kernels on OpenMP "
        "with passive waits, as a user runs it), divided by the in-process PyTorch median: the "
        f"twin's {r['torch_s'].median:.3f} s (table below) and the dense conv's "
        f"{1e3 * m['torch_s'].median:.3f} ms.",
        "",
        "## The demo round",
        "",
        f"Round {r['round']}: {r['clients']} clients, {r['iterations']} local iterations of batch "
        f"{r['batch']}, model {r['model']}; {r['what']}.",
        "",
        "| run | seconds |",
        "|---|---|",
        f"| PyTorch twin, dense local training | {r['torch_s'].fmt(digits=3)} |",
        f"| refimpl dense local training, same work | {r['dense_s'].fmt(digits=3)} |",
        f"| refimpl full round | {r['round_s'].fmt(digits=3)} |",
        f"| refimpl full round, no PyTorch in the process | {a['round_s'].fmt(digits=3)} |",
        f"| refimpl dense local training, no PyTorch in the process | "
        f"{a['dense_s'].fmt(digits=3)} |",
        "",
        "## Convolutions against the machine's limit",
        "",
        f"Reference layer: {c['layer']}. GFLOP/s counts 2·MACs of the dense layer (masked: of the "
        "active weights only).",
        "",
        "| kernel | GFLOP/s | % of sgemm |",
        "|---|---|---|",
    ]
    sg = c["sgemm_gflops"].median
    rows = [(f"refimpl dense conv {name}", c[f"gflops {name}"])
            for name in ("forward", "grad_input", "grad_weight")]
    rows.append(("PyTorch dense conv fwd+bwd", c["torch_gflops"]))
    rows += [(f"refimpl masked conv fwd+bwd, density {d:g}", m[f"gflops d={d:g}"])
             for d in masked_conv.DENSITIES]
    for name, f in rows:
        lines.append(f"| {name} | {f.fmt(digits=1)} | {100 * f.median / sg:.0f}% |")
    lines += ["", "Masked conv fwd+bwd / PyTorch dense conv fwd+bwd by density:", "",
              "| density | ratio |", "|---|---|"]
    lines += [f"| {d:g} | {m[f'ratio d={d:g}'].fmt(digits=3)}x |" for d in masked_conv.DENSITIES]
    lines += ["", "## SAP select+encode and decode / conv forward (1 thread)", "",
              f"Forward of the reference layer: {s['forward_ms'].fmt(digits=3)} ms.", "",
              "| γ | policy | select+encode | decode |", "|---|---|---|---|"]
    for g in sap.GAMMAS:
        for policy in sap.POLICIES:
            lines.append(f"| {g} | {policy} | {s[f'encode {policy} {g}'].fmt(100, 1, '%')} | "
                         f"{s[f'decode {policy} {g}'].fmt(100, 1, '%')} |")
    p = res["pool"]
    lines += ["", "## Max-pool", "",
              f"{p['pool']}: fwd+bwd {p['pool_ms'].fmt(digits=3)} ms against the layer's conv "
              f"fwd+bwd {p['conv_ms'].fmt(digits=3)} ms.", ""]
    if grid is not None and "error" not in grid:
        lines += [
            "",
            "## The experiment grid",
            "",
            f"`benchmarks/grid_speed.py`: the runs of the grid at the filing of the speed issue "
            f"(the `paper` preset with that grid's settings: cnn, 100 clients, 10 per round, "
            f"E = 1, B = 64), {grid['rounds']} rounds each, one thread each, run with the code at "
            f"{grid['baseline']} and with this checkout, alternating; wall seconds per run "
            f"(process start-up included), and projected to the grid's {grid['grid_rounds']} "
            f"rounds (each run's start-up plus {grid['grid_rounds']} times its own seconds per "
            f"round). \"Same\" compares the final model's bytes and every "
            f"round's record (losses, accuracies, masks; times and the activation byte count, "
            f"whose accounting changed on purpose, left out).",
            "",
            f"| run | filing-time code (s) | now (s) | faster | projected to "
            f"{grid['grid_rounds']} rounds: filing-time / now (s) | faster | same results |",
            "|---|---|---|---|---|---|---|",
        ]
        k = grid["grid_rounds"]
        for row in grid["rows"] + [dict(grid, case="all")]:
            lines.append(f"| {row['case']} | {row['old_s']:.1f} | {row['new_s']:.1f} | "
                         f"{row['old_s'] / row['new_s']:.2f}x | {row[f'old_{k}']:.1f} / "
                         f"{row[f'new_{k}']:.1f} | {row[f'old_{k}'] / row[f'new_{k}']:.2f}x | "
                         f"{'yes' if row['same'] else 'NO'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "performance.md"))
    ap.add_argument("--from-saved", metavar="FILE", default=None,
                    help=f"render the page from the measurements a failed run saved ({SAVED})")
    ap.add_argument("--no-grid", action="store_true",
                    help="skip the experiment grid's runs (benchmarks/grid_speed.py)")
    args = ap.parse_args(argv)
    if args.repeats < 5:
        ap.error(f"--repeats: at least 5 repeats give a median and spread, received "
                 f"{args.repeats}")
    _keep, _ = set_threads(args.threads)
    if args.from_saved:
        with open(args.from_saved, "rb") as f:
            res = pickle.load(f)
    else:
        res = measure_all(args.threads, args.repeats, with_grid=not args.no_grid)
        # kept until the page is written: a failure to render never costs the measurements
        with open(SAVED, "wb") as f:
            pickle.dump(res, f)
    atomic_write_text(args.out, render(res, args.threads, args.repeats))
    if not args.from_saved:
        os.remove(SAVED)
    print(f"wrote {args.out}")
    for key, (target, what) in TARGETS.items():
        print(f"  {what}: {res['figures'][key].fmt(digits=3)}x (target <= {target:g}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
