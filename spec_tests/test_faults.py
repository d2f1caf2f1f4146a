# covers: RNG-1, MASK-3, PG-2, PG-3, LT-1, MEM-1, CONV-7, DATA-1
"""Nothing lost, nothing silently wrong (issue 13; docs/federated.md "Run directories",
docs/decisions.md "Masks at the functional boundary"): --overwrite removes only a run this
project wrote and only once the new run has started, resume verifies metrics.jsonl and its
checkpoint before trusting them, bad inputs are clear errors at the public boundary, and the
command line turns OS errors and Ctrl-C (also inside a Numba kernel) into one-line messages and
exit codes, leaving no temporary files. Kill -9, Ctrl-C and a full disk still resume
byte-identically."""

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import refimpl
from refimpl import functional as F
from refimpl import sparsity as S
from refimpl.cli import main
from refimpl.conformance import scenario
from refimpl.conformance.cli import run_check
from refimpl.conformance.dump import DumpError
from refimpl.conformance.export import export
from refimpl.fl import ConfigError, RunDirError, load_config, run
from refimpl.fl import runner as R
from refimpl.fl.compare import compare_rows
from refimpl.fl.rundir import DirLock, MetricsError, deferred_sigint
from refimpl.fl.store import CheckpointError, list_checkpoints
from refimpl.memory import ledger

from .tolerances import REORDERED_SUM, max_rel_err

ROOT = Path(__file__).resolve().parents[1]
SETS = ["run.rounds=6"]  # smoke: checkpoints at rounds 2, 4, 6


def _run(out, *sets, **kw):
    return run(load_config("smoke", sets=SETS + list(sets)), out, progress=False, plots=False,
               log=kw.pop("log", lambda *a: None), **kw)


def _resume(out, log=lambda *a: None):
    return run(None, out, resume=True, progress=False, plots=False, log=log)


def _digest(d: Path) -> dict[str, str]:
    """SHA-256 of every file under ``d`` (relative path -> digest)."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def _same_run(a: Path, b: Path) -> bool:
    return all((a / n).read_bytes() == (b / n).read_bytes()
               for n in ("metrics.jsonl", "model.npz", "config.toml"))


def _tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.name.endswith(".tmp") or ".new-" in p.name
            or ".old-" in p.name]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """An uninterrupted run: the bytes every interrupted-and-resumed run must reproduce."""
    d = tmp_path_factory.mktemp("faults") / "full"
    _run(d)
    return d


@pytest.fixture
def killed_at_5(tmp_path):
    """A run stopped after round 5 (checkpoints of rounds 2 and 4)."""
    d = tmp_path / "run"
    _run(d, stop_after=5)
    return d


# ---- --overwrite: only our own run directories, replaced only once the new run started -------
def test_overwrite_refuses_a_folder_that_merely_has_a_config_toml(tmp_path):
    blog = tmp_path / "blog"
    blog.mkdir()
    (blog / "config.toml").write_text('title = "my blog"\n')
    (blog / "post.md").write_text("hello")
    before = _digest(blog)
    with pytest.raises(RunDirError, match="no run.json marker.*did not write it"):
        _run(blog, overwrite=True)
    assert _digest(blog) == before


def test_overwrite_refuses_a_run_directory_holding_other_files(full, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(full, d)
    (d / "thesis.tex").write_text("chapter 1")
    (d / "plots").mkdir()
    (d / "plots" / "notes.txt").write_text("mine")
    before = _digest(d)
    with pytest.raises(RunDirError, match=r"files a run does not write \(plots/notes.txt, "
                                          r"thesis.tex\)"):
        _run(d, overwrite=True)
    assert _digest(d) == before


def test_conformance_export_overwrite_refuses_a_foreign_manifest(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "manifest.json").write_text('{"name": "my web app"}')
    (site / "index.html").write_text("<html>")
    before = _digest(site)
    with pytest.raises(DumpError, match="not of format 'fedmef-conformance/1'"):
        export(site, overwrite=True)
    assert _digest(site) == before


def test_overwrite_keeps_the_old_run_when_the_new_one_cannot_start(full, tmp_path):
    """Shapes that do not fit the model fail before any file is touched; a failure inside the
    first round discards the new run and leaves the old one byte for byte."""
    d = tmp_path / "run"
    shutil.copytree(full, d)
    before = _digest(d)
    with pytest.raises(RunDirError, match=r"data.synthetic_shape = \[1, 2, 2\] does not fit "
                                          r"model.name = 'cnn'.*height and width >= 4"):
        _run(d, "data.synthetic_shape=[1,2,2]", overwrite=True)
    assert _digest(d) == before and not _tmp_files(tmp_path)


def test_overwrite_swaps_only_after_the_first_round(full, tmp_path, monkeypatch):
    d = tmp_path / "run"
    shutil.copytree(full, d)
    before = _digest(d)
    real = R.run_round
    seen, fail = [], [True]

    def watched(cfg, model, state, data, t, **kw):
        seen.append((t, _digest(d) == before))
        if fail[0]:
            raise RuntimeError("the new run fails in its first round")
        return real(cfg, model, state, data, t, **kw)

    monkeypatch.setattr(R, "run_round", watched)
    with pytest.raises(RuntimeError, match="first round"):
        _run(d, "train.lr=0.05", overwrite=True)
    assert _digest(d) == before and not _tmp_files(tmp_path)
    seen.clear()
    fail[0] = False
    _run(d, "train.lr=0.05", overwrite=True)
    assert seen[0] == (1, True)  # the old run was intact while round 1 ran
    assert seen[1] == (2, False)  # replaced once round 1 was done
    assert "lr = 0.05" in (d / "config.toml").read_text() and not _tmp_files(tmp_path)


# ---- resume trusts nothing it has not verified -----------------------------------------------
def _cut_line_2(d):
    lines = (d / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[1] = lines[1][: len(lines[1]) // 2] + "\n"
    (d / "metrics.jsonl").write_text("".join(lines))


def _keep_2_lines(d):
    lines = (d / "metrics.jsonl").read_text().splitlines(keepends=True)
    (d / "metrics.jsonl").write_text("".join(lines[:2]))


def _edit_a_value(d):
    lines = (d / "metrics.jsonl").read_text().splitlines(keepends=True)
    rec = json.loads(lines[2])
    rec["train_loss"] += 1.0
    lines[2] = json.dumps(rec) + "\n"
    (d / "metrics.jsonl").write_text("".join(lines))


@pytest.mark.parametrize("damage, message", [
    (_cut_line_2, r"metrics.jsonl' line 2 is damaged"),
    (_keep_2_lines, r"the checkpoint is of round 4, so the file must hold the records of rounds "
                    r"1..4; it holds 2 record"),
    (lambda d: (d / "metrics.jsonl").unlink(), r"it holds no metrics.jsonl"),
    (_edit_a_value, r"the records of rounds 1..4 differ from the ones the run wrote"),
])
def test_resume_refuses_metrics_that_do_not_hold_the_checkpoint_rounds(
        killed_at_5, full, damage, message):
    d = killed_at_5
    good = (d / "metrics.jsonl").read_bytes()
    damage(d)
    before = _digest(d)
    with pytest.raises(MetricsError, match=message + r".*To recover.*--overwrite"):
        _resume(d)
    assert _digest(d) == before  # nothing rewritten
    (d / "metrics.jsonl").write_bytes(good)  # as the message says: put the original back
    _resume(d)
    assert _same_run(d, full)


def test_resume_drops_a_torn_record_after_the_checkpoint(killed_at_5, full):
    """Records after the checkpoint are recomputed: a torn last line (a kill during the write)
    is no damage."""
    d = killed_at_5
    with open(d / "metrics.jsonl", "ab") as fh:
        fh.write(b'{"round": 6, "train_lo')
    _resume(d)
    assert _same_run(d, full)


def test_metrics_are_fsynced_every_round(tmp_path, monkeypatch):
    path = tmp_path / "run" / "metrics.jsonl"
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.fstat(fd).st_ino)
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    _run(tmp_path / "run", "run.rounds=3", "run.checkpoint_every=10")
    assert synced.count(path.stat().st_ino) >= 3


def _corrupt(p: Path):
    raw = bytearray(p.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 16] = bytes(b ^ 0xFF for b in raw[mid:mid + 16])
    p.write_bytes(bytes(raw))


def test_checkpoint_advice_names_only_a_verified_checkpoint(full, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(full, d)
    (_, prev), (_, last) = list_checkpoints(d / "checkpoints")
    for p in (prev, last):
        _corrupt(p)
    before = _digest(d)
    with pytest.raises(CheckpointError) as e:
        _resume(d)
    msg = str(e.value)
    assert "no other checkpoint loads and matches" in msg and "--overwrite" in msg
    assert "delete" not in msg and _digest(d) == before


def test_edited_config_is_named_and_no_checkpoint_is_offered(full, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(full, d)
    cfg = d / "config.toml"
    cfg.write_text(cfg.read_text().replace("lr = 0.1", "lr = 0.2"))
    before = _digest(d)
    with pytest.raises(RunDirError, match="config.toml was edited after the run started") as e:
        _resume(d)
    assert "delete" not in str(e.value) and _digest(d) == before
    (d / "run.json").unlink()  # a directory from before the marker: the checkpoints tell
    with pytest.raises(CheckpointError, match="edited after the checkpoints were written") as e:
        _resume(d)
    assert "delete" not in str(e.value)


def test_renamed_checkpoint_is_named_not_misread(killed_at_5, full):
    cp = killed_at_5 / "checkpoints"
    (cp / "round_00004.npz").rename(cp / "round_00005.npz")
    with pytest.raises(CheckpointError, match=r"round_00005.npz' holds round 4 \(its header\), "
                                              r"not round 5.*rename it back to round_00004.npz"):
        _resume(killed_at_5)
    (cp / "round_00005.npz").rename(cp / "round_00004.npz")
    logs = []
    _resume(killed_at_5, log=logs.append)
    assert "from round_00004.npz (round 4)" in logs[0] and _same_run(killed_at_5, full)


def test_ctrl_c_waits_for_the_swap_to_finish():
    """A Ctrl-C during the renames of a swap is raised after them, never between them."""
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_sigint():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("both renames")
    assert done == ["both renames"]


def test_out_may_be_a_symlink_to_a_directory(full, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    _run(tmp_path / "link", stop_after=3)
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "run.json").exists()
    _resume(tmp_path / "link")
    assert _same_run(tmp_path / "real", full)


# ---- locks: one writer per run directory; a killed run never blocks its resume -------------
def test_a_second_run_on_a_directory_in_use_is_refused(killed_at_5):
    before = _digest(killed_at_5)
    with DirLock(killed_at_5):  # another process writing the run
        with pytest.raises(RunDirError, match="is in use by another fedmef run"):
            _resume(killed_at_5)
        with pytest.raises(RunDirError, match="is in use by another fedmef run"):
            _run(killed_at_5, overwrite=True)
    assert _digest(killed_at_5) == before


def _interactive():
    """In the child: SIGINT as a terminal's Ctrl-C delivers it. A pytest-xdist worker ignores
    SIGINT and a child inherits an ignored signal (and Python keeps it ignored, as a background
    job of a shell should): the run would never see the signal and finish with exit 0."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _spawn(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "refimpl.cli", "run", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_interactive)


def _wait_for_rounds(p, d: Path, n: int, timeout=180):
    t0 = time.time()
    while time.time() - t0 < timeout and p.poll() is None:
        m = d / "metrics.jsonl"
        if m.exists() and m.read_bytes().count(b"\n") >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"the run did not reach round {n}: {p.communicate()}")


LONG = "run.rounds=40"  # a smoke round takes tens of ms: a signal must land before the end


@pytest.fixture(scope="module")
def full_long(tmp_path_factory):
    """An uninterrupted run long enough that a signal sent after a few rounds lands mid-run."""
    d = tmp_path_factory.mktemp("faults") / "full_long"
    _run(d, LONG)
    return d


@pytest.mark.parametrize("rounds_done", [2, 3])
def test_kill_9_then_resume_is_byte_identical(full_long, tmp_path, rounds_done):
    """The OS drops the lock of a killed run: resume is not blocked and ends byte-identical."""
    d = tmp_path / "run"
    p = _spawn("--preset", "smoke", "--quiet", "--set", LONG, "--out", str(d), cwd=tmp_path)
    _wait_for_rounds(p, d, rounds_done)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert (tmp_path / ".run.lock").exists()  # left by the killed run, no longer locked
    _resume(d)
    assert _same_run(d, full_long) and not _tmp_files(tmp_path)
    assert not (tmp_path / ".run.lock").exists()


@pytest.mark.parametrize("rounds_done", [1, 3])
def test_ctrl_c_exits_130_with_the_resume_message(full_long, tmp_path, rounds_done):
    """A real SIGINT lands wherever the run is, often inside a Numba kernel: always exit 130,
    the message, no traceback, and the run resumes byte-identically."""
    d = tmp_path / "run"
    p = _spawn("--preset", "smoke", "--quiet", "--set", LONG, "--out", str(d), cwd=tmp_path)
    _wait_for_rounds(p, d, rounds_done)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "Traceback" not in err, err
    assert f"`fedmef run --resume {d}` continues from" in out
    _resume(d)
    assert _same_run(d, full_long)


def test_interrupt_inside_a_numba_kernel_is_a_ctrl_c(full, tmp_path, monkeypatch, capsys):
    """numba re-raises a KeyboardInterrupt that arrives inside a kernel as SystemError(...
    returned a result with an exception set) caused by it."""
    real = R.run_round

    def interrupted(cfg, model, state, data, t, **kw):
        if t == 4:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt as e:
                raise SystemError("CPUDispatcher(<function k>) returned a result with an "
                                  "exception set") from e
        return real(cfg, model, state, data, t, **kw)

    monkeypatch.setattr(R, "run_round", interrupted)
    d = tmp_path / "run"
    assert main(["run", "--preset", "smoke", "--quiet", "--set", SETS[0], "--out", str(d)]) == 130
    out, err = capsys.readouterr()
    assert f"`fedmef run --resume {d}` continues from round 2" in out and "Traceback" not in err
    monkeypatch.setattr(R, "run_round", real)
    _resume(d)
    assert _same_run(d, full)


# ---- OS errors: one line naming the path, exit 2, no temporary file left --------------------
def test_config_and_out_paths_that_are_not_what_they_should_be(tmp_path, capsys):
    (tmp_path / "cfgdir").mkdir()
    (tmp_path / "afile").write_text("x")
    cases = [(["--config", str(tmp_path / "cfgdir")], "cfgdir' is a directory; expected a TOML"),
             (["--preset", "smoke", "--out", str(tmp_path / "afile")],
              "afile' is a file, not a directory"),
             (["--preset", "smoke", "--out", str(tmp_path / "afile" / "sub")],
              "afile' is a file, not a directory")]
    for args, message in cases:
        assert main(["run", "--quiet", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_read_only_output_is_one_line_naming_the_directory(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        (ro / "probe").touch()  # root ignores permissions: fake the read-only file system
        (ro / "probe").unlink()
        real = os.open

        def read_only(path, *a, **k):
            if str(path).startswith(str(ro)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real(path, *a, **k)

        monkeypatch.setattr(os, "open", read_only)
    except PermissionError:
        pass
    try:
        assert main(["run", "--preset", "smoke", "--quiet", "--out", str(ro / "run")]) == 2
    finally:
        monkeypatch.undo()
        ro.chmod(0o755)
    err = capsys.readouterr().err
    assert f"fedmef run: error: {ro / 'run'}: " in err and "lock file" in err
    assert "Traceback" not in err and not list(ro.iterdir())


def test_full_disk_is_one_line_no_tmp_file_and_resume_is_identical(full, tmp_path, monkeypatch,
                                                                    capsys):
    from refimpl.fl import store

    def full_disk(path, mode="r", *a, **k):
        if "round_00004" in str(path):
            Path(path).touch()  # the temporary file exists when the disk fills up
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return open(path, mode, *a, **k)

    monkeypatch.setattr(store, "open", full_disk, raising=False)
    d = tmp_path / "run"
    assert main(["run", "--preset", "smoke", "--quiet", "--set", SETS[0], "--out", str(d)]) == 2
    out, err = capsys.readouterr()
    target = d / "checkpoints" / "round_00004.npz"
    assert f"fedmef run: error: {target}: No space left on device" in err
    assert "continues from round 2" in out and not _tmp_files(tmp_path)
    monkeypatch.undo()
    _resume(d)
    assert _same_run(d, full)


def test_stale_tmp_files_from_a_kill_are_swept_and_do_not_block(killed_at_5, full):
    """Temporary files of atomic writes that a kill -9 interrupted (names no later write of
    this run reuses) are removed by resume and do not stop --overwrite."""
    (killed_at_5 / "checkpoints" / ".round_00003.npz.tmp").write_bytes(b"PK")
    (killed_at_5 / "plots").mkdir()
    (killed_at_5 / "plots" / ".loss.png.tmp").write_bytes(b"\x89PNG")
    _resume(killed_at_5)
    assert _same_run(killed_at_5, full) and not _tmp_files(killed_at_5)
    (killed_at_5 / ".config.toml.tmp").write_text("[run]")
    _run(killed_at_5, overwrite=True)
    assert _same_run(killed_at_5, full) and not _tmp_files(killed_at_5)


# ---- inputs validated at the public boundary -------------------------------------------------
@pytest.mark.parametrize("value", [0.5, -1.0, float("nan"), 2.0, "x"])
@pytest.mark.parametrize("op", ["conv2d", "nsconv2d"])
def test_masks_are_bool_or_exactly_0_1(value, op):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 2, 5, 5)), rng.standard_normal((3, 2, 3, 3))
    m = np.ones(w.shape, dtype=object)
    m[0, 0, 0, 0] = value
    m = m.astype(str if isinstance(value, str) else float)
    call = (lambda mask: F.conv2d(x, w, mask=mask)) if op == "conv2d" else \
        (lambda mask: F.nsconv2d(x, w, mask, np.ones(3)))
    with pytest.raises(ValueError, match=f"{op}: a mask must be bool or"):
        call(m)
    bool_mask = rng.random(w.shape) < 0.5
    for same in (bool_mask.astype(np.int64), bool_mask.astype(np.float32)):
        np.testing.assert_array_equal(call(same), call(bool_mask))


@pytest.mark.parametrize("jit", [True, False])
def test_mask3_is_enforced_identically_on_every_kernel_path(jit, monkeypatch):
    """A weight nonzero (even NaN) where the mask is False computes conv2d(x, where(M, W, 0))
    with the masked kernels and with the dense fallback (what runs without Numba)."""
    from refimpl.ops import conv as C

    monkeypatch.setattr(C, "JIT_ENABLED", jit)
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 4, 6, 6)), rng.standard_normal((6, 2, 3, 3))
    m = rng.random(w.shape) < 0.4
    w[tuple(np.argwhere(~m)[0])] = np.nan
    wz = np.where(m, w, 0.0)
    g = rng.standard_normal((2, 6, 6, 6))
    y, vjp = refimpl.vjp(lambda x, w: F.conv2d(x, w, padding=1, groups=2, mask=m), x, w)
    dx, dw = vjp(g)
    y0, vjp0 = refimpl.vjp(lambda x, w: F.conv2d(x, w, padding=1, groups=2), x, wz)
    dx0, dw0 = vjp0(g)
    rtol = REORDERED_SUM[np.dtype(np.float64)][0]
    assert max_rel_err(y, y0) < rtol and max_rel_err(dx, dx0) < rtol
    assert max_rel_err(dw, dw0 * m) < rtol and np.all(dw[~m] == 0)


def test_adjust_takes_0_1_int_masks_like_bool_masks_and_checks_alpha():
    rng = np.random.default_rng(0)
    m = rng.random((8, 12)) < 0.5
    w, s = rng.standard_normal((8, 12)) * m, rng.standard_normal((8, 12))
    nw, nm, rep = S.adjust([w], [m], [s], 0.3)
    nwi, nmi, repi = S.adjust([w], [m.astype(np.int64)], [s], 0.3)
    assert int(nmi[0].sum()) == int(m.sum()) and np.array_equal(nmi[0], nm[0])
    assert np.array_equal(nwi[0], nw[0]) and repi.counts == rep.counts
    for alpha in (-0.5, float("nan"), 1.5, float("inf")):
        with pytest.raises(ValueError, match="alpha_t must be a finite number in \\[0, 1\\]"):
            S.adjust([w], [m], [s], alpha)
    with pytest.raises(ValueError, match="adjust: layer 0: a mask must be bool or exactly 0/1"):
        S.adjust([w], [m * 0.5], [s], 0.3)


def test_lr_min_above_lr_is_refused_for_the_exponential_schedule():
    with pytest.raises(ConfigError, match="train.lr_min = 0.5 exceeds train.lr = 0.1"):
        load_config("smoke", sets=["train.lr_min=0.5"])
    assert load_config("smoke", sets=["train.lr_min=0.5", "train.lr_schedule=constant"])


def test_memory_ledger_inputs(capsys):
    with pytest.raises(ValueError, match=r"density must lie in \(0, 1\]"):
        ledger("cnn", (1, 28, 28), 8, density=1.5)
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        ledger("cnn", (1, 28, 28), 8, num_classes=0)
    with pytest.raises(ValueError, match="input 3x2x2 is too small for model cnn: .*it needs "
                                         "height and width >= 4"):
        ledger("cnn", (3, 2, 2), 8)
    assert ledger("cnn", (3, 4, 4), 8).totals["footprint"] > 0  # the size it names does fit
    base = ["memory", "--model", "cnn", "--input"]
    assert main(base + ["1x28x28", "--density", "1.5"]) == 2
    assert "density must lie in (0, 1]" in capsys.readouterr().err
    assert main(base + ["3x2x2"]) == 2
    assert "error: input 3x2x2 is too small for model cnn" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(base + ["1x28x28", "--classes", "0"])
    assert e.value.code == 2
    assert "--classes: expected an integer >= 1, received '0'" in capsys.readouterr().err


def test_conformance_scenario_needs_its_adjustment_round():
    for sets in (["run.rounds=1"], ["run.rounds=2"], ["sparse.t_end=2"]):
        with pytest.raises(ValueError, match="needs run.rounds > 2 and sparse.t_end = 0 or > 2"):
            scenario.scenario_config(sets)


def test_bad_manifest_values_name_the_manifest(tmp_path):
    golden = Path(refimpl.__file__).parent / "conformance" / "golden"
    d = tmp_path / "dump"
    shutil.copytree(golden, d)
    m = json.loads((d / "manifest.json").read_text())
    m["scenario"]["sets"] = ["train.lr=-1"]
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DumpError, match=r"dump/manifest.json: its scenario.sets "
                                        r"\['train.lr=-1'\] cannot be exported: train.lr must"):
        run_check(d)
    m["scenario"]["sets"] = "train.lr=0.1"
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DumpError, match="manifest.json: scenario.sets must be a list"):
        run_check(d)


# ---- compare and config files say which file is damaged -------------------------------------
def test_compare_names_damaged_metrics_and_summary(killed_at_5, full, tmp_path):
    assert compare_rows([killed_at_5])[0][6] == "5/6"
    (killed_at_5 / "metrics.jsonl").write_text("garbage\n{not json\n")
    with pytest.raises(ValueError, match="metrics.jsonl' line 1 is damaged"):
        compare_rows([killed_at_5])
    d = tmp_path / "done"
    shutil.copytree(full, d)
    (d / "summary.json").write_text("{broken")
    with pytest.raises(ValueError, match="done/summary.json' is damaged"):
        compare_rows([d])
    (d / "summary.json").write_text("{}")
    with pytest.raises(ValueError, match="summary.json' is damaged: it lacks method"):
        compare_rows([d])


def test_config_file_that_is_not_utf8_is_named(tmp_path):
    f = tmp_path / "latin1.toml"
    f.write_bytes("[run]\n# r\xe9sum\xe9\nseed = 1\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.toml' is not UTF-8 text"):
        load_config(path=f)
