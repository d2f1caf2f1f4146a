# covers: FL-1, FL-2, RNG-1, AGG-1, PG-1, PG-7, ERK-2, MASK-3, BAE-1, BAE-3, BAE-5, MEM-2
"""Whole runs of the ``smoke`` preset: byte-identical repeats, bit-identical resume, exact nnz
per layer, BaE against no BaE, every method, checkpoints and the run directory rules."""

import hashlib
import json
import math

import numpy as np
import pytest

from refimpl.fl import ConfigError, RunDirError, load_config, run
from refimpl.fl.store import CheckpointError, list_checkpoints, read_npz
from refimpl.sparsity import layer_counts


def _run(out, *sets, plots=False, **kw):
    return run(load_config("smoke", sets=list(sets)), out, progress=False, log=lambda *a: None,
               plots=plots, **kw)


def _resume(out):
    return run(None, out, resume=True, progress=False, plots=False, log=lambda *a: None)


def _bytes(d, name):
    return (d / name).read_bytes()


def _records(d):
    return [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """One uninterrupted smoke run (fedmef: NSConv, BaE, SAP γ 0.7)."""
    d = tmp_path_factory.mktemp("full")
    _run(d, plots=True)
    return d


def test_same_config_gives_identical_bytes(full, tmp_path):
    """RNG-1: two runs with one config give byte-identical metrics and model."""
    _run(tmp_path)
    assert _bytes(tmp_path, "metrics.jsonl") == _bytes(full, "metrics.jsonl")
    assert _bytes(tmp_path, "model.npz") == _bytes(full, "model.npz")
    assert _bytes(tmp_path, "config.toml") == _bytes(full, "config.toml")


def test_thread_count_does_not_change_results(full, tmp_path):
    """run.threads only changes speed: the kernels write disjoint slices per thread."""
    try:
        _run(tmp_path, "run.threads=2")
    except ValueError as e:  # Numba limited to one thread on this machine
        pytest.skip(str(e))
    assert _bytes(tmp_path, "metrics.jsonl") == _bytes(full, "metrics.jsonl")
    assert _bytes(tmp_path, "model.npz") == _bytes(full, "model.npz")


def test_run_directory_contents(full):
    names = {p.name for p in full.iterdir()}
    assert {"config.toml", "partition.json", "partition.txt", "metrics.jsonl", "summary.json",
            "model.npz", "checkpoints", "partition.png", "plots"} <= names
    assert {p.name for p in (full / "plots").iterdir()} == {"accuracy.png", "loss.png",
                                                            "memory.png"}
    recs = _records(full)
    assert [r["round"] for r in recs] == [1, 2, 3, 4, 5]
    assert [r["test_accuracy"] is not None for r in recs] == [False, True, False, True, True]
    assert [r["adjustment"] for r in recs] == [False, True, False, True, False]
    assert [r["extrusion"] for r in recs] == [False, True, False, True, False]
    summary = json.loads(_bytes(full, "summary.json"))
    assert summary["rounds_completed"] == 5 and summary["adjustments"] == 2
    assert summary["final_test_accuracy"] == recs[-1]["test_accuracy"]
    assert [t for t, _ in list_checkpoints(full / "checkpoints")] == [4, 5]
    report = json.loads(_bytes(full, "partition.json"))
    assert sum(report["sizes"]) == 160 and "hash" in report


def test_exact_nnz_per_layer_across_rounds(full):
    """ERK-2 / PG-7 / MASK-3: every layer keeps its initial nnz in every round, the adjustments
    moved weights, and the final model satisfies W == W ⊙ M."""
    cfg = load_config("smoke")
    model = read_npz(full / "model.npz")
    names = sorted(k[len("mask/"):] for k in model if k.startswith("mask/"))
    recs = _records(full)
    order = list(recs[0]["layer_nnz"])
    counts = layer_counts([model[f"param/{n}"].shape for n in order], cfg.sparse.density)
    for r in recs:
        assert list(r["layer_nnz"].values()) == counts
        if r["adjustment"]:
            assert r["pruned"] == r["grown"]
    assert sum(sum(r["pruned"].values()) for r in recs if r["adjustment"]) > 0
    for n in names:
        w, m = model[f"param/{n}"], model[f"mask/{n}"]
        assert int(m.sum()) == counts[order.index(n)]
        assert np.array_equal(w, w * m)


def test_interrupted_and_resumed_equals_uninterrupted(full, tmp_path):
    """RNG-1: stop after round 3 (checkpoint at 2), resume: same metrics and model bytes."""
    _run(tmp_path, stop_after=3)
    assert not (tmp_path / "model.npz").exists()
    assert [r["round"] for r in _records(tmp_path)] == [1, 2, 3]
    _resume(tmp_path)
    assert _bytes(tmp_path, "metrics.jsonl") == _bytes(full, "metrics.jsonl")
    assert _bytes(tmp_path, "model.npz") == _bytes(full, "model.npz")


def test_ctrl_c_then_resume_equals_uninterrupted(full, tmp_path, monkeypatch):
    """A KeyboardInterrupt in round 4 (after the checkpoint of round 2 and the metrics of round
    3 were written) leaves a resumable directory."""
    from refimpl.fl import runner

    real = runner.run_round

    def interrupted(cfg, model, state, data, t, **kw):
        if t == 4:
            raise KeyboardInterrupt
        return real(cfg, model, state, data, t, **kw)

    monkeypatch.setattr(runner, "run_round", interrupted)
    logs = []
    with pytest.raises(KeyboardInterrupt):
        run(load_config("smoke"), tmp_path, progress=False, plots=False, log=logs.append)
    assert "continues from round 2" in logs[-1]
    monkeypatch.setattr(runner, "run_round", real)
    _resume(tmp_path)
    assert _bytes(tmp_path, "metrics.jsonl") == _bytes(full, "metrics.jsonl")
    assert _bytes(tmp_path, "model.npz") == _bytes(full, "model.npz")


def test_corrupt_checkpoint_is_a_clear_error_and_the_previous_stays(full, tmp_path):
    _run(tmp_path)
    cps = list_checkpoints(tmp_path / "checkpoints")
    (t_prev, prev), (t_last, last) = cps
    prev_digest = hashlib.sha256(prev.read_bytes()).hexdigest()
    raw = bytearray(last.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 16] = bytes(b ^ 0xFF for b in raw[mid:mid + 16])
    last.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError) as e:
        _resume(tmp_path)
    msg = str(e.value)
    assert last.name in msg and "corrupt" in msg and prev.name in msg and "delete" in msg
    assert hashlib.sha256(prev.read_bytes()).hexdigest() == prev_digest
    last.unlink()  # as the message says: resume from the previous checkpoint
    _resume(tmp_path)
    assert _bytes(tmp_path, "model.npz") == _bytes(full, "model.npz")
    assert _bytes(tmp_path, "metrics.jsonl") == _bytes(full, "metrics.jsonl")


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    _run(tmp_path, "run.rounds=2", "sparse.delta_t=2")
    (_, last), = list_checkpoints(tmp_path / "checkpoints")
    last.write_bytes(last.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"round_00002\.npz.*corrupt.*--overwrite"):
        _resume(tmp_path)


def test_bae_lowers_the_marked_norm_within_the_same_budget(tmp_path):
    """BAE-1..BAE-3: same seed with and without BaE; rounds before the extrusion round are
    identical; after it the marked set's norm is lower with BaE, with the same local
    iterations. (Runs stop after the extrusion round 2.)"""
    _run(tmp_path / "on", "bae.enabled=true", stop_after=2)
    _run(tmp_path / "off", "bae.enabled=false", stop_after=2)
    on, off = _records(tmp_path / "on"), _records(tmp_path / "off")
    assert on[0] == off[0]
    a, b = on[1], off[1]
    assert a["extrusion"] and not b["extrusion"]
    assert a["marked_norm_before"] == b["marked_norm_before"] > 0
    assert a["marked_count"] == b["marked_count"] > 0
    assert a["marked_norm_after"] < b["marked_norm_after"]
    assert a["local_iterations"] == b["local_iterations"]


def test_bae_rounds_before_the_adjustment(tmp_path):
    """BAE-5 option: with bae.rounds = 1 the round before the adjustment extrudes and the
    adjustment round does not; prune = marked still prunes the round's marked set size."""
    _run(tmp_path, "run.rounds=4", "sparse.delta_t=2", "bae.rounds=1", "sparse.prune=marked")
    recs = _records(tmp_path)
    assert [r["extrusion"] for r in recs] == [True, False, True, False]
    assert [r["adjustment"] for r in recs] == [False, True, False, True]
    assert recs[0]["marked_count"] == sum(recs[1]["pruned"].values())


@pytest.mark.parametrize("method, norm", [("fedavg", "none"), ("static", "bn"),
                                          ("prune_grow", "bn"), ("fedmef", "none")])
def test_every_method_runs(tmp_path, method, norm):
    """FL-2: the methods share the loop; fedavg is dense, static keeps its mask, prune_grow
    adjusts without BaE."""
    _run(tmp_path, f"run.method={method}", f"model.norm={norm}", "run.rounds=2",
         "sparse.delta_t=2", "sparse.density=auto", "bae.enabled=auto", "sap.gamma=auto")
    recs = _records(tmp_path)
    model = read_npz(tmp_path / "model.npz")
    masks = [k for k in model if k.startswith("mask/")]
    if method == "fedavg":
        assert not masks and recs[-1]["density"] == 1.0 and not recs[-1]["adjustment"]
    else:
        assert masks and recs[-1]["density"] == pytest.approx(0.1, abs=0.01)
        assert recs[-1]["adjustment"] == (method in ("prune_grow", "fedmef"))
        assert recs[-1]["extrusion"] == (method == "fedmef")
    if norm == "bn":
        assert any(k.startswith("buffer/") for k in model)
    assert all(math.isfinite(r["train_loss"]) for r in recs)


def test_existing_directory_rules(full, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="already exists.*--overwrite.*--resume"):
        _run(tmp_path)
    with pytest.raises(RunDirError, match="no config.toml.*not a run directory"):
        _run(tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    out = tmp_path / "run"
    _run(out, "run.rounds=1")
    with pytest.raises(RunDirError, match="already exists"):
        _run(out, "run.rounds=1")
    _run(out, "run.rounds=1", overwrite=True)
    with pytest.raises(RunDirError, match="do not pass"):
        run(load_config("smoke"), out, resume=True, progress=False)


def test_cli_run_and_compare(full, tmp_path, capsys):
    from refimpl.cli import main

    out = tmp_path / "cli"
    assert main(["run", "--preset", "smoke", "--set", "run.rounds=1", "--out", str(out),
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "final test accuracy" in text and str(out) in text
    assert main(["compare", str(full), str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["run", "method", "norm"] and len(table) == 4
    assert main(["run", "--preset", "smoke", "--set", "sparse.densty=0.5", "--out",
                 str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) sparse.densty" in err and "density_kind" in err
    assert main(["run", "--resume", str(out)]) == 0  # already complete: nothing to run
    capsys.readouterr()


def test_config_errors_surface_before_any_file(tmp_path):
    with pytest.raises(ConfigError):
        load_config("smoke", sets=["sparse.density=2"])
    assert not any(tmp_path.iterdir())


def test_model_errors_leave_no_run_directory(tmp_path):
    """ERK-2: a density too small for a layer is a clear error, raised before the run
    directory is made."""
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="too small.*would keep no weight"):
        _run(out, "sparse.density=0.0001", "sparse.density_kind=uniform")
    assert not out.exists()
