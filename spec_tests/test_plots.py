# covers: DATA-2, PG-1, MEM-2, MEM-4, RNG-1
"""The pictures (docs/federated.md, "Plots"): a run directory holds its four PNGs, each decodes
to its declared size and is named at the end of `fedmef run`; a plotting failure is one line and
never costs the run; same records, same bytes; `fedmef compare --plot`; integer round ticks;
labels of the footprint plot never collide (the experiment grid's cluster of ~20 runs; the
grid's own pictures: test_experiments.py)."""

import io
import json
import struct
import sys
from contextlib import redirect_stdout
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refimpl import cli
from refimpl import data as data_tools
from refimpl.data.report import HEATMAP_DPI, heatmap_figsize
from refimpl.fl import load_config, plots, run
from refimpl.fl.runner import read_metrics

ROOT = Path(__file__).resolve().parent.parent


def _png_size(path) -> tuple[int, int]:
    """(width, height) from the PNG signature and IHDR chunk."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _decoded(path, size):
    """Decode ``path`` with matplotlib; check it is ``size`` (w, h) pixels and not blank."""
    img = matplotlib.image.imread(path)
    assert img.shape[:2] == (size[1], size[0])
    assert float(np.std(img[..., :3])) > 0.01, f"{path} is blank"
    return img


def _expected(name: str, report: dict) -> tuple[int, int]:
    if name == "partition.png":
        w, h = heatmap_figsize(report["num_clients"], report["num_classes"])
        dpi = HEATMAP_DPI
    else:
        w, h = plots.SIZES[Path(name).name]
        dpi = plots.DPI
    return round(w * dpi), round(h * dpi)


def _cli(*argv) -> tuple[int, list[str]]:
    out = io.StringIO()
    with redirect_stdout(out):
        rc = cli.main([str(a) for a in argv])
    return rc, out.getvalue().splitlines()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """`fedmef run --preset smoke` through the command line, as `make demo` runs the demo."""
    d = tmp_path_factory.mktemp("smoke") / "run"
    rc, lines = _cli("run", "--preset", "smoke", "--out", d, "--quiet")
    assert rc == 0
    return d, lines


def test_run_directory_holds_the_four_pictures_at_their_sizes(smoke):
    d, _ = smoke
    report = json.loads((d / "partition.json").read_text())
    assert {name for name, _ in plots.RUN_PICTURES} == {
        "plots/accuracy.png", "plots/loss.png", "plots/memory.png", "partition.png"}
    for name, _ in plots.RUN_PICTURES:
        size = _expected(name, report)
        assert _png_size(d / name) == size, name
        _decoded(d / name, size)
    assert not list(d.rglob(".*.tmp")), "a temporary file of an atomic write was left behind"


def test_the_run_ends_by_naming_its_pictures(smoke):
    d, lines = smoke
    tail = lines[-len(plots.RUN_PICTURES) - 1:]
    assert tail[0] == "pictures:"
    named = [line.split()[0] for line in tail[1:]]
    assert named == [str(d / name) for name, _ in plots.RUN_PICTURES]


def test_same_records_give_the_same_picture_bytes(smoke, tmp_path):
    """RNG-1 carried to the pictures: no timestamp or version in the files."""
    d, _ = smoke
    cfg = load_config(path=d / "config.toml")
    written = plots.save_plots(read_metrics(d / "metrics.jsonl"), tmp_path, cfg)
    assert [p.name for p in written] == ["accuracy.png", "loss.png", "memory.png"]
    for p in written:
        assert p.read_bytes() == (d / "plots" / p.name).read_bytes(), p.name
    report = json.loads((d / "partition.json").read_text())
    from refimpl.fl.data import load_fed_data

    data_tools.save_heatmap(report, tmp_path / "partition.png",
                            class_names=load_fed_data(cfg).classes)
    assert (tmp_path / "partition.png").read_bytes() == (d / "partition.png").read_bytes()


def test_without_matplotlib_the_run_says_so_in_one_line(tmp_path, monkeypatch):
    """No silent skip: each missing picture is one line, and the results are complete."""
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith(("matplotlib.", "mpl_toolkits")):
            monkeypatch.setitem(sys.modules, name, None)
    logs = []
    run(load_config("smoke"), tmp_path, progress=False, log=logs.append)
    missing = [m for m in logs if "not written" in m]
    assert len(missing) == 2 and all("\n" not in m for m in missing)
    assert missing[0].startswith("partition.png not written (ModuleNotFoundError")
    assert missing[1].startswith("plots not written (ModuleNotFoundError")
    assert "matplotlib" in missing[1]
    assert (tmp_path / "summary.json").exists() and (tmp_path / "model.npz").exists()
    assert not (tmp_path / "partition.png").exists()
    assert not (tmp_path / "plots").exists()
    rc, lines = _cli("run", "--preset", "smoke", "--out", tmp_path / "cli", "--quiet")
    assert rc == 0 and lines[-1].startswith("pictures: none written")


def test_a_failing_picture_does_not_stop_the_run(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise OSError("disk full\nsecond line")

    monkeypatch.setattr(plots, "_save", broken)
    logs = []
    summary = run(load_config("smoke"), tmp_path, progress=False, log=logs.append)
    assert summary["rounds_completed"] == 5
    assert logs[-1].startswith("plots not written (OSError: disk full)")
    assert (tmp_path / "summary.json").exists()


@settings(max_examples=25)
@given(st.integers(1, 600))
def test_round_ticks_are_integers(rounds):
    fig = plots._figure(6.4, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([1, rounds], [0, 1])
    plots._round_axis(ax, 1, rounds)
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks)


# ---- fedmef compare --plot --------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, smoke):
    d = tmp_path_factory.mktemp("pg") / "pg"
    run(load_config("smoke", sets=["run.method=prune_grow", "run.rounds=4",
                                   "sparse.t_end=4"]), d, progress=False, plots=False,
        log=lambda *a: None)
    return smoke[0], d


def test_compare_plot_writes_one_overlay(two_runs, tmp_path):
    a, b = two_runs
    out = tmp_path / "sub" / "acc.png"
    rc, lines = _cli("compare", a, b, "--plot", out)
    assert rc == 0
    assert lines[-1].endswith(str(out)) and "run" in lines[0]
    w, h = plots.SIZES["overlay"]
    size = (round(w * plots.DPI), round(h * plots.DPI))
    assert _png_size(out) == size
    _decoded(out, size)
    out2 = tmp_path / "acc2.png"
    _cli("compare", a, b, "--plot", out2)
    assert out2.read_bytes() == out.read_bytes()
    rc, _ = _cli("compare", a, b, "--plot", tmp_path / "acc.svg")
    assert rc == 0 and (tmp_path / "acc.svg").read_bytes().lstrip().startswith(b"<?xml")


def test_compare_series_are_the_runs_curves(two_runs):
    from refimpl.fl.compare import accuracy_series

    series = accuracy_series(two_runs)
    for s, d in zip(series, two_runs):
        recs = read_metrics(d / "metrics.jsonl")
        evals = [r for r in recs if r["test_accuracy"] is not None]
        assert s["rounds"] == [r["round"] for r in evals]
        assert s["accuracy"] == [r["test_accuracy"] for r in evals]
        assert s["adjustments"] == [r["round"] for r in recs if r["adjustment"]]
        assert s["label"].startswith(d.name + ": ")
    assert [s["method"] for s in series] == ["fedmef", "prune_grow"]


def test_compare_plot_errors_are_clear(two_runs, tmp_path, capsys):
    a, _ = two_runs
    rc = cli.main(["compare", str(a), "--plot", str(tmp_path / "acc.txt")])
    err = capsys.readouterr()
    assert rc == 2 and ".png, .svg, .pdf" in err.err and "acc.txt" in err.err
    assert err.out == "" and not (tmp_path / "acc.txt").exists()
    rc = cli.main(["compare", str(a), str(tmp_path), "--plot", str(tmp_path / "x.png")])
    assert rc == 2 and "not a run directory" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


# ---- the footprint plot: labels where they collide with nothing --------------------------------
def _cluster(rng, n_cluster: int, n_far: int) -> list[dict]:
    """About ``n_cluster`` runs within a few percent of one footprint (the experiment grid's
    FedMef variants around 1,000 KiB) and a few far away."""
    methods = ("fedavg", "static", "prune_grow", "fedmef")
    pts = []
    for i in range(n_cluster):
        pts.append({"label": f"fedmef-variant{i}", "method": "fedmef",
                    "density": (0.1, 0.05)[i % 2],
                    "footprint": 1000 * 1024 * (1 + 0.03 * rng.random()),
                    "accuracy": 0.34 + 0.08 * rng.random(), "filled": i < 2,
                    "priority": 0 if i < 2 else 1})
    for i in range(n_far):
        pts.append({"label": f"{methods[i % 4]}-far{i}", "method": methods[i % 4],
                    "density": (1.0, 0.1, 0.05)[i % 3],
                    "footprint": 7000 * 1024 * (1 + 0.05 * rng.random()),
                    "accuracy": 0.45 + 0.2 * rng.random()})
    return pts


def _check_labels(points):
    fig, ax, xy = plots._footprint_axes(points, "t\nu", "footprint", "acc (%)", None, "")
    placed, skipped = plots.place_labels(ax, xy, [p["label"] for p in points])
    assert sorted([i for i, _ in placed] + skipped) == list(range(len(points)))
    frame = ax.get_window_extent(fig.canvas.get_renderer())
    marks = [ax.transData.transform(p) for p in xy]
    boxes = [b for _, b in placed]
    for k, (i, b) in enumerate(placed):
        assert frame.x0 <= b[0] and b[2] <= frame.x1 and frame.y0 <= b[1] and b[3] <= frame.y1
        for other in boxes[k + 1:]:
            assert not plots._boxes_overlap(b, other, pad=0), "two labels overlap"
        for j, (mx, my) in enumerate(marks):
            if j != i:
                assert not (b[0] < mx < b[2] and b[1] < my < b[3]), "a label covers a marker"
    return placed, skipped


def test_labels_of_the_grid_cluster_never_collide(tmp_path):
    points = _cluster(np.random.default_rng(0), 20, 6)
    placed, _ = _check_labels(points)
    assert {0, 1} <= {i for i, _ in placed}, "the main rows (first priority) get their labels"
    path, skipped = plots.save_footprint_accuracy(points, tmp_path / "fp.png", "cluster\nof 20",
                                                  fill_labels=("main", "ablation"))
    w, h = plots.SIZES["footprint"]
    _decoded(path, (round(w * plots.DPI), round(h * plots.DPI)))
    assert all(0 <= i < len(points) for i in skipped)


@settings(max_examples=15)
@given(st.integers(0, 2**32 - 1), st.integers(2, 30), st.integers(0, 6))
def test_labels_never_collide(seed, n_cluster, n_far):
    _check_labels(_cluster(np.random.default_rng(seed), n_cluster, n_far))
