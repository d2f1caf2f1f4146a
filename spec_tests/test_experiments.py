# covers: FL-1, FL-2, PG-1, MEM-3, MEM-5
"""The experiment grid of docs/results.md (benchmarks/experiments.py; docs/federated.md, "Plots";
issue 18): the tuning never reads the test set and picks the best validation score among runs
that did not diverge; the final runs use the winner's rate; the page is built from the run
directories alone, every finding cites rows the page's tables hold, and its pictures decode.
The run directories here are synthetic (their files written by the test), so the page's
generator is checked without hours of training; `--quick` runs the real pipeline."""

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from refimpl.fl import load_config, plots
from refimpl.fl.config import to_toml

ROOT = Path(__file__).resolve().parent.parent


def _experiments():
    """benchmarks/experiments.py as a module (registered first: its dataclasses need it)."""
    name = "fedmef_benchmarks_experiments"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name,
                                                      ROOT / "benchmarks" / "experiments.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def _value(sets, key):
    return next(s.split("=", 1)[1] for s in sets if s.startswith(key + "="))


def _write_run(run, rng, quality: float, diverge_at=None):
    """A finished (or diverged) run directory with the files the page reads."""
    cfg = load_config(sets=[s for s in run.sets if not s.startswith("data.root=")])
    d = run.path
    d.mkdir(parents=True)
    (d / "config.toml").write_text(to_toml(cfg))
    last = run.rounds if diverge_at is None else diverge_at - 1
    recs = []
    for t in range(1, last + 1):
        acc = quality * (1 - 0.5 ** t) + 0.01 * rng.standard_normal()
        ev = t % cfg.run.eval_every == 0 or t == cfg.run.rounds
        adj = cfg.dynamic and t % cfg.sparse.delta_t == 0 and t <= cfg.t_end
        split = cfg.run.eval_split
        rec = {"round": t, "train_loss": 1.0,
               "test_accuracy": acc if ev and split != "validation" else None,
               "val_accuracy": acc + 0.01 if ev and split != "test" else None,
               "adjustment": adj,
               "marked_norm_before": 2.0 if adj else None,
               "marked_norm_after": 1.0 if adj else None}
        if cfg.run.eval_around_adjustment:
            rec["adjustment_eval"] = ({"before": {"test_accuracy": acc},
                                       "after": {"test_accuracy": acc - 0.02}} if adj else None)
        recs.append(rec)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    summary = {"rounds_completed": last, "final_test_accuracy": recs[-1]["test_accuracy"]
               if recs else None, "bytes_up_total": 1000, "bytes_down_total": 2000,
               "seconds_per_round": 1.5, "activation_bytes_max": 0}
    if cfg.run.stop_on_divergence:
        summary["diverged_round"] = diverge_at
    (d / "summary.json").write_text(json.dumps(summary))


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The quick grid with synthetic files: the sweep's best validation score sits at a
    diverged rate for one setting, which must not win."""
    ex = _experiments()
    out = tmp_path_factory.mktemp("grid")
    rng = np.random.default_rng(0)
    scale = ex.QUICK
    roots = {"mnist-pureml": "/nonexistent/pureml.whl"}
    truth, done = {}, set()
    while True:  # as main() does: an edge winner adds a rate, run the sweep again
        todo = [r for r in ex.sweep_runs(scale, out, roots) if r.path not in done]
        if not todo:
            break
        for run in todo:
            done.add(run.path)
            setting, lr = run.path.name.rsplit("-lr", 1)[0], run.path.name.split("-lr")[1][:-3]
            diverge = 2 if (setting == "fedmef" and lr == scale.lrs[-1]) else None
            # validation quality peaks at lr 2 (beyond the quick range: the sweep must extend)
            quality = 0.9 if diverge else 0.8 - 0.1 * abs(np.log10(float(lr) / 2.0)) \
                + (0.1 if setting.startswith("fedmef") else 0)
            _write_run(run, rng, quality, diverge)
            if diverge is None:
                truth.setdefault(setting, {})[lr] = quality
    winners = {s: max(v, key=v.get) for s, v in truth.items()}
    for run in ex.final_runs(scale, out, roots, winners):
        _write_run(run, rng, 0.8 if "fedmef" in run.path.name else 0.75)
    page = out / "results.md"
    text = ex.report(scale, out, page, "python benchmarks/experiments.py --quick")
    return ex, scale, out, page, text, winners, roots


def test_sweep_never_reads_the_test_set_and_finals_use_the_winner(grid):
    ex, scale, out, _, _, winners, roots = grid
    for run in ex.sweep_runs(scale, out, roots):
        assert "run.eval_split=validation" in run.sets
        assert "run.stop_on_divergence=true" in run.sets
        assert float(_value(run.sets, "data.validation")) > 0
    _, picked = ex.sweep_table(scale, out)
    assert picked == winners
    assert picked["fedmef"] != scale.lrs[-1]  # the diverged rate scored best and lost
    # An edge winner extends the sweep one 1-2-5 step at a time until the winner is interior:
    # upward past the range to the peak at 2 (then 5 loses), downward below a lowest-rate winner.
    assert picked["fedavg"] == "2.0" and scale.lrs[-1] == "1.0"
    assert ex.setting_rates(scale, out, ex.SETTING["fedavg"]) == ["0.1", "1.0", "2.0", "5.0"]
    assert picked["fedmef"] == "0.1"
    assert ex.setting_rates(scale, out, ex.SETTING["fedmef"]) == ["0.05", "0.1", "1.0"]
    for run in ex.final_runs(scale, out, roots, picked):
        row = next(r for r in ex.rows(scale) if run.path.name.startswith(r.name + "-s"))
        setting = ex.swept(ex.SETTING[row.setting]).name
        assert _value(run.sets, "train.lr") == picked[setting]
        assert _value(run.sets, "data.validation") == str(scale.validation)
        assert "run.eval_split=test" in run.sets


def test_every_finding_cites_rows_of_the_page(grid):
    _, _, out, _, text, _, _ = grid
    ids = set(re.findall(r"^\| ([A-Z]:[^ |]+) \|", text, flags=re.M))
    findings = text.split("## Findings")[1].split("\n## ")[0]
    bullets = [b for b in findings.splitlines() if b.startswith("- ")]
    assert len(bullets) >= 6
    for b in bullets:
        cited = re.findall(r"\[([^\]]+)\]", b)
        assert cited, b
        for group in cited:
            for c in group.split(", "):
                if c.endswith("*"):
                    assert any(i.startswith(c[:-1]) for i in ids), c
                else:
                    assert c in ids, c
    assert "diverged at round 2" in text
    # every row names its run directories, which exist
    for name in re.findall(r"`(final/[^`]+)`", text):
        assert (out / name).is_dir()


def test_the_page_holds_its_sections_and_pictures(grid):
    _, scale, _, page, text, _, _ = grid
    for head in ("## Tuning", "## Headline", "## Accuracy gap against rounds", "## BaE",
                 "## Where NSConv's cost goes", "## A second dataset", "## Memory beside "
                 "accuracy", "## Findings"):
        assert head in text
    assert "28.5%" in text and ("supports" in text or "refutes" in text)
    # the runs' own time: seconds per round × rounds of every finished run, from their files
    summaries = [json.loads(p.read_text()) for p in page.parent.glob("*/*/summary.json")]
    hours = sum(x["seconds_per_round"] * x["rounds_completed"] for x in summaries) / 3600
    assert f"runs' own times (seconds per round × rounds, summary.json) add up to {hours:.2f} h" \
        in text and len(summaries) > 20
    names = re.findall(r"!\[([^\]]+)\]\(results/", text)
    assert set(names) == {"accuracy_d0.1.png", "accuracy_d0.05.png", "gap_vs_rounds.png",
                          "pareto_footprint.png", "pareto_training_peak.png"}
    for n in names:
        kind = "footprint" if n.startswith("pareto") else "overlay"
        w, h = plots.SIZES[kind]
        img = matplotlib.image.imread(page.parent / "results" / n)
        assert img.shape[:2] == (round(h * plots.DPI), round(w * plots.DPI))
        assert float(np.std(img[..., :3])) > 0.01
    # the memory columns are the ledger's: FedMef's footprint and peak below prune-and-grow's
    row = {m: re.search(rf"^\| H:{m}-d0.1 \|.*$", text, flags=re.M).group(0).split(" | ")
           for m in ("fedmef", "prune_grow")}
    assert float(row["fedmef"][7].replace(",", "")) < float(row["prune_grow"][7].replace(",", ""))
    assert float(row["fedmef"][8].replace(",", "")) < float(row["prune_grow"][8].replace(",", ""))


def test_an_invocation_stopped_midway_keeps_its_time(tmp_path):
    """The grid's wall and CPU time are logged after every finished run, so a grid stopped
    midway (and resumed by another invocation) still reports the time it spent."""
    ex = _experiments()
    first = ex.Invocation(tmp_path)
    first.update(failed=1)  # a run finished (failed); then the command is killed
    second = ex.Invocation(tmp_path)
    second.update(complete=True)
    inv = json.loads((tmp_path / "grid.json").read_text())["invocations"]
    assert [i["complete"] for i in inv] == [False, True] and inv[0]["failed"] == 1
    assert all(i["seconds"] >= 0 and i["cpu_seconds"] >= 0 for i in inv)
    text = ex.wall_times(tmp_path)
    assert "2 invocation(s)" in text and "stopped midway" in text and "CPU time" in text


def test_the_discussion_is_included_only_when_every_row_it_cites_is_on_the_page(grid):
    """The hand-written discussion beside the page is included verbatim; a citation of a row
    the tables do not have stops the build (the old page stays) instead of publishing it."""
    ex, scale, out, page, text, _, _ = grid
    assert "No discussion is written for this grid yet" in text
    disc = page.parent / "results_discussion.md"
    try:
        disc.write_text("FedMef trails [H:fedmef-d0.1, H:prune_grow-d0.1]; BaE rows "
                        "[B:fedmef-d0.1-t*].\n")
        built = ex.report(scale, out, page, "python benchmarks/experiments.py --quick")
        assert "FedMef trails [H:fedmef-d0.1, H:prune_grow-d0.1]" in built
        assert page.read_text() == built
        # remove two published files: a failed build must not write them back
        (page.parent / "results" / ex.ARCHIVE).unlink()
        (page.parent / "results" / "gap_vs_rounds.png").unlink()
        published = {f: f.read_bytes() for f in (page.parent / "results").iterdir()}
        for bad, match in (("A claim [H:fedmef-d0.1, H:no-such-row] and [S:nothing*] [H:*].\n",
                            r"H:no-such-row, S:nothing\*, H:\*"),
                           ("Superseded: a discussion of another grid, citing nothing.\n",
                            "cites no row")):
            disc.write_text(bad)
            with pytest.raises(ex.CitationError, match=match):
                ex.report(scale, out, page, "python benchmarks/experiments.py --quick")
            # nothing is published: the page, its pictures and its archive stay as they were
            assert page.read_text() == built
            assert {f: f.read_bytes() for f in (page.parent / "results").iterdir()} == published
            assert not list(page.parent.glob(".results-staging.*"))
    finally:
        disc.unlink(missing_ok=True)
        ex.report(scale, out, page, "python benchmarks/experiments.py --quick")


def test_the_archived_records_rebuild_the_same_tables(grid, tmp_path):
    """Every number is traceable: the page's archive of the runs' records (no models, no
    checkpoints) rebuilds the same tables, and archiving the same runs gives the same bytes."""


    ex, scale, out, page, text, _, _ = grid
    archive = page.parent / "results" / ex.ARCHIVE
    first = archive.read_bytes()
    # the same records copied elsewhere, in another order, with other times: the same bytes
    copy = tmp_path / "copy" / out.name
    for f in sorted(out.rglob("*"), reverse=True):
        if f.is_file():
            dest = copy / f.relative_to(out)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
            os.utime(dest, (1e9, 1e9))
    ex.archive_runs(copy, tmp_path / "again.tar.xz")
    assert (tmp_path / "again.tar.xz").read_bytes() == first
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert not any(n.endswith((".npz", ".png")) for n in names)
        tar.extractall(tmp_path / "x", filter="data")
    rebuilt = ex.report(scale, tmp_path / "x" / out.name, tmp_path / "page" / "results.md",
                        "rebuilt")

    def tables(t):
        return [line for line in t.splitlines() if line.startswith("| ")]

    assert tables(rebuilt) == tables(text) and len(tables(text)) > 20


def test_a_grid_stopped_by_sigterm_logs_its_time(tmp_path):
    """SIGTERM (how a job scheduler stops the grid) ends the invocation like Ctrl-C: its wall
    time up to the signal is logged, marked as stopped midway."""

    script = str(ROOT / "benchmarks" / "experiments.py")
    code = ("import importlib.util, sys, time; from pathlib import Path\n"
            f"spec = importlib.util.spec_from_file_location('ex', {script!r})\n"
            "ex = importlib.util.module_from_spec(spec); sys.modules['ex'] = ex\n"
            "spec.loader.exec_module(ex)\n"
            "import subprocess\n"
            "try:\n"
            "    with ex.Invocation(Path(sys.argv[1])):\n"
            "        run = subprocess.Popen(['sleep', '60']); ex._CHILDREN.add(run)\n"
            "        print('ready', flush=True); run.wait()\n"
            "except SystemExit:\n"
            "    print('run', run.wait(timeout=10), flush=True); raise\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 128 + signal.SIGTERM
    assert p.stdout.readline().strip() == f"run {-signal.SIGTERM}"  # the run in progress stopped
    (inv,) = json.loads((tmp_path / "grid.json").read_text())["invocations"]
    assert inv["complete"] is False and inv["seconds"] >= 1.0


def test_an_invocation_restores_the_previous_sigterm_handler(tmp_path):

    ex = _experiments()
    before = signal.getsignal(signal.SIGTERM)
    with ex.Invocation(tmp_path):
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
    (inv,) = json.loads((tmp_path / "grid.json").read_text())["invocations"]
    assert inv["complete"] is True and inv["commit"]


def test_a_run_whose_plan_changed_is_kept_apart_and_listed(tmp_path):
    """A run directory whose configuration the plan no longer matches is stale; it is moved to
    superseded/ (never overwritten, never reused), listed on the page as a citable row, and
    archived with the others."""
    ex = _experiments()
    scale, roots = ex.QUICK, {"mnist-pureml": "/nonexistent/pureml.whl"}
    out = tmp_path / "grid"
    rng = np.random.default_rng(1)
    done: set = set()
    while todo := [r for r in ex.sweep_runs(scale, out, roots) if r.path not in done]:
        for run in todo:  # validation quality peaks at lr 0.1, inside the quick range
            done.add(run.path)
            lr = float(run.path.name.split("-lr")[1][:-3])
            _write_run(run, rng, 0.8 - 0.1 * abs(np.log10(lr / 0.1)))
    _, winners = ex.sweep_table(scale, out)
    finals = ex.final_runs(scale, out, roots, winners)
    for run in finals:
        _write_run(run, rng, 0.75)
    run = finals[0]
    assert not ex.stale(run)
    cfg = run.path / "config.toml"
    cfg.write_text(cfg.read_text().replace("lr = ", "lr = 9", 1))  # another rate than planned
    assert ex.stale(run)
    kept = [ex.supersede(run.path, out)]
    _write_run(run, rng, 0.75)
    cfg.write_text(cfg.read_text().replace("lr = ", "lr = 9", 1))
    kept.append(ex.supersede(run.path, out))
    assert [k.name for k in kept] == [f"final-{run.path.name}", f"final-{run.path.name}-2"]
    assert not run.path.exists() and all((k / "metrics.jsonl").is_file() for k in kept)
    text = ex.report(scale, out, tmp_path / "page" / "results.md", "test")
    for k in kept:
        assert f"| X:{k.name} | `superseded/{k.name}` |" in text
    with tarfile.open(tmp_path / "page" / "results" / ex.ARCHIVE) as tar:
        assert f"grid/superseded/{kept[1].name}/metrics.jsonl" in tar.getnames()


def test_the_archive_holds_the_grid_logs_and_every_kind_of_run(tmp_path):
    """archive_runs keeps each run's records (not its model or checkpoints), the plans, the
    invocation log and the cost estimate: what --report-only needs to rebuild the page."""
    ex = _experiments()
    out = tmp_path / "experiments"
    for kind in ("sweep", "final", "superseded"):
        d = out / kind / f"{kind}-run"
        (d / "checkpoints").mkdir(parents=True)
        for name in ex.RECORDS + ("model.npz",):
            (d / name).write_text(name)
        (d / "checkpoints" / "round_5.npz").write_text("x")
    (out / "plans").mkdir()
    (out / "plans" / "final-x.toml").write_text("[run]\n")
    for name in ("grid.json", "estimate.json"):
        (out / name).write_text("{}")
    assert ex.archive_runs(out, tmp_path / "a.tar.xz") == 3
    with tarfile.open(tmp_path / "a.tar.xz") as tar:
        names = set(tar.getnames())
    want = {f"experiments/{k}/{k}-run/{n}" for k in ("sweep", "final", "superseded")
            for n in ex.RECORDS}
    want |= {"experiments/plans/final-x.toml", "experiments/grid.json",
             "experiments/estimate.json"}
    assert names == want
