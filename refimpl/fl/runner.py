"""A whole run and its directory: fresh start, ``--overwrite`` and bit-identical ``--resume``
(RNG-1), metrics, checkpoints, the final model, the summary and the plots.

Run directory layout (docs/federated.md has the schemas)::

    run.json           marker: format fedmef-run/1 and the config's SHA-256 (rundir.py)
    config.toml        resolved configuration (loadable with --config)
    partition.json     partition report (DATA-2); partition.txt, partition.png beside it
    metrics.jsonl      one JSON record per round, deterministic (no wall times), fsynced
    checkpoints/       round_NNNNN.npz, the two newest kept, written atomically; each records
                       the SHA-256 of metrics.jsonl up to its round
    model.npz          final global model: param/<name>, buffer/<name>, mask/<name>
    summary.json       final results and wall time
    plots/             accuracy.png, loss.png, memory.png (refimpl.fl.plots)
    transport.jsonl    per round, what a non-local engine carried (refimpl.fl.flower); absent
                       for the local engine

Where the clients compute their updates is the ``clients`` argument of :func:`run` (a factory of
a :class:`~refimpl.fl.client.ClientExecutor`); everything else is this module and the engine.

How the directory is recognised, locked, built beside and swapped in: :mod:`.rundir`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

from ..core._jit import interrupted
from .client import ClientError, Diverged, LocalClients
from .config import Config, load_config, to_toml
from .data import load_fed_data
from .engine import run_round
from .rundir import (
    DirLock,
    MetricsError,
    RunDirError,
    check_resumable,
    check_target,
    deferred_sigint,
    discard,
    new_sibling,
    read_marker,
    swap_in,
    sweep_tmp,
    verify_metrics,
    write_marker,
)
from .state import GlobalState, build_model, init_state
from .store import (
    CheckpointError,
    atomic_write_bytes,
    atomic_write_text,
    list_checkpoints,
    load_checkpoint,
    naming,
    save_checkpoint,
    write_npz,
)

__all__ = ["run", "RunDirError", "MetricsError", "RunInterrupted", "read_metrics",
           "human_bytes"]


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message (already logged, hence ``reported``) says what the
    directory now holds and how to continue."""

    reported = True


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    return obj


def read_metrics(path) -> list[dict]:
    """The records of a metrics.jsonl up to the first line that is not a JSON record (lenient:
    for display; :func:`refimpl.fl.rundir.parse_metrics` is the verifying reader)."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text("utf-8", errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def _config_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_config_text(out: Path) -> str:
    path = out / "config.toml"
    try:
        return path.read_text("utf-8")
    except UnicodeDecodeError as e:
        raise RunDirError(f"cannot resume {str(out)!r}: {str(path)!r} is not UTF-8 text ({e})"
                          ) from None


def _load_state(path: Path, sha: str, model, cfg: Config) -> tuple[dict, GlobalState]:
    """Header and state of one checkpoint, verified against the config and the model."""
    header, arrays = load_checkpoint(path, sha)
    try:
        state = GlobalState.from_arrays(int(header["round"]), int(header["mask_version"]),
                                        arrays, model, dense=not cfg.sparse_masks)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit the configured model "
                              f"({e})") from None
    return header, state


def _advice(err: CheckpointError, newest: Path, earlier, sha: str, model, cfg: Config,
            out: Path) -> str:
    """How to recover from an unusable newest checkpoint, naming another checkpoint only after
    loading it and matching it against the configuration and the model."""
    if err.kind == "config":
        return (f"config.toml of {out} was edited after the checkpoints were written: put the "
                f"original back to resume, or start a new run from the edited file with "
                f"`fedmef run --config {out / 'config.toml'} --out OTHER_DIR`")
    if err.kind == "round":
        return "then resume again"
    for t, p in reversed(earlier):
        try:
            _load_state(p, sha, model, cfg)
        except CheckpointError:
            continue
        return (f"the previous checkpoint {p.name} (round {t}) loads and matches the "
                f"configuration: delete {newest.name} to resume from it")
    return (f"no other checkpoint loads and matches the configuration: start again with "
            f"`fedmef run --config {out / 'config.toml'} --out {out} --overwrite` (same config, "
            f"same bytes)")


def _restore(out: Path, sha: str, model, cfg: Config, log) -> tuple[GlobalState | None, dict]:
    """The state and header of the newest checkpoint, or (None, {}) when the run has none."""
    cps = list_checkpoints(out / "checkpoints")
    if not cps:
        return None, {}
    t, path = cps[-1]
    try:
        header, state = _load_state(path, sha, model, cfg)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; {_advice(e, path, cps[:-1], sha, model, cfg, out)}",
                              e.kind) from None
    log(f"resuming {out} from {path.name} (round {t})")
    return state, header


def _preflight(cfg: Config, model, data) -> None:
    """Data the model cannot take (images too small for its convolutions and pools) fail here,
    before any file is written: a shape-only walk of the model (the memory ledger's)."""
    from ..memory import ledger

    try:
        ledger(model, data.input_shape, 1, loss=False)
    except ValueError as e:
        what = (f"data.synthetic_shape = {list(data.input_shape)}"
                if cfg.data.dataset == "synthetic" else
                f"the images of {data.name} ({'x'.join(map(str, data.input_shape))})")
        raise RunDirError(f"{what} does not fit model.name = {cfg.model.name!r}: {e}") from None


def _one_line(e: Exception) -> str:
    """An exception as one line: its type and the first line of its message."""
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__


def _write_partition(out: Path, data, plots: bool, log) -> None:
    from .. import data as data_tools

    atomic_write_text(out / "partition.json", json.dumps(_jsonable(data.report), indent=1) + "\n")
    atomic_write_text(out / "partition.txt", data_tools.format_report(data.report) + "\n")
    if not plots:
        return
    try:
        data_tools.save_heatmap(data.report, out / "partition.png", class_names=data.classes)
    except Exception as e:  # a picture never costs the run its results; it says why it is absent
        log(f"partition.png not written ({_one_line(e)}); partition.txt holds the same table")


def summarize(cfg: Config, records: list[dict], seconds: float, rounds_run: int,
              diverged: Diverged | None = None) -> dict:
    """summary.json: final and best accuracy, memory and communication totals, timing. With
    ``run.stop_on_divergence``: ``diverged_round`` (null, or the round a client diverged in:
    the records end the round before) and ``diverged`` (what was seen); with a validation
    split, ``final_val_accuracy``."""
    evals = [r for r in records if r["test_accuracy"] is not None]
    last = records[-1] if records else {}
    best = max(evals, key=lambda r: (r["test_accuracy"], -r["round"])) if evals else None
    extra = {}
    if cfg.run.stop_on_divergence:
        extra["diverged_round"] = diverged.round if diverged is not None else None
        extra["diverged"] = str(diverged) if diverged is not None else None
    if cfg.data.validation > 0:
        vals = [r for r in records if r.get("val_accuracy") is not None]
        extra["final_val_accuracy"] = vals[-1]["val_accuracy"] if vals else None
    return extra | {
        "method": cfg.run.method,
        "norm": cfg.model.norm,
        "bae": cfg.bae.enabled,
        "sap_gamma": cfg.sap.gamma,
        "density": cfg.sparse.density,
        "rounds": cfg.run.rounds,
        "rounds_completed": last.get("round", 0),
        "final_test_accuracy": evals[-1]["test_accuracy"] if evals else None,
        "final_test_loss": evals[-1]["test_loss"] if evals else None,
        "best_test_accuracy": best["test_accuracy"] if best else None,
        "best_round": best["round"] if best else None,
        "final_train_loss": last.get("train_loss"),
        "final_density": last.get("density"),
        "activation_bytes_max": max((r["activation_bytes"] for r in records), default=None),
        "bytes_up_total": sum(r["bytes_up"] for r in records),
        "bytes_down_total": sum(r["bytes_down"] for r in records),
        "adjustments": sum(1 for r in records if r["adjustment"]),
        "seconds": round(seconds, 3),
        "seconds_per_round": round(seconds / rounds_run, 3) if rounds_run else None,
    }


def _postfix(rec: dict, acc) -> dict:
    return {"loss": f"{rec['train_loss']:.3f}",
            "acc": "-" if acc is None else f"{acc:.3f}",
            "density": f"{rec['density']:.3f}",
            "act": human_bytes(rec["activation_bytes"])}


def _log_transport(work: Path, executor) -> None:
    """Append the executor's report of the round, if any, to transport.jsonl (a log of what
    the transport carried and how long it took: not part of the run's deterministic bytes)."""
    report = executor.round_report()
    if report is None:
        return
    line = (json.dumps(_jsonable(report)) + "\n").encode("utf-8")
    path = work / "transport.jsonl"
    with naming(path), open(path, "ab") as fh:
        fh.write(line)
        fh.flush()


@contextmanager
def _threads(n: int):
    """Run with ``n`` Numba threads (0: unchanged), restoring the previous count after."""
    from ..core import _jit

    if n == 0 or not _jit.JIT_ENABLED:
        yield
        return
    before = _jit.get_num_threads()
    try:
        _jit.set_num_threads(n)
    except ValueError as e:  # more than the threads Numba started with
        raise ValueError(f"run.threads = {n} is not available ({e}); lower run.threads or set "
                         f"NUMBA_NUM_THREADS") from None
    try:
        yield
    finally:
        _jit.set_num_threads(before)


class _Where:
    """What the directory holds at a given moment of :func:`run`, for the interruption
    message: ``nothing`` (a new run not yet in place), ``unchanged`` (an ``--overwrite`` run not
    yet in place; the old run is intact) or ``run`` (a run that ``--resume`` continues)."""

    def __init__(self, out: Path, state: str):
        self.out, self.state = out, state

    def resume_point(self) -> str:
        cps = list_checkpoints(self.out / "checkpoints")
        return f"round {cps[-1][0]}" if cps else "the start (no checkpoint yet)"

    def interrupted(self) -> str:
        return self._says("interrupted")

    def stopped(self) -> str:
        return self._says("stopped by an error")

    def _says(self, what: str) -> str:
        if self.state == "nothing":
            return f"{what} before the first round finished; nothing was kept in {self.out}"
        if self.state == "unchanged":
            return f"{what} before the new run's first round finished; {self.out} is unchanged"
        return f"{what}; `fedmef run --resume {self.out}` continues from {self.resume_point()}"


def run(cfg: Config | None, out, *, resume: bool = False, overwrite: bool = False,
        progress: bool = True, stop_after: int | None = None, plots: bool = True,
        log=print, clients=None) -> dict:
    """Run (or resume) a federated run into directory ``out``; return the summary.

    ``resume=True`` reads ``out/config.toml`` (``cfg`` must be None) and continues from the
    newest checkpoint, bit-identically to an uninterrupted run, after verifying the checkpoint
    and that ``metrics.jsonl`` holds its rounds intact. A new run (fresh or ``overwrite=True``)
    is built beside ``out`` and moved into place after its first round; ``overwrite`` replaces
    only a run directory this project wrote (:mod:`refimpl.fl.rundir`). ``stop_after`` ends the
    run after that round without the final outputs (an interruption, for tests).
    ``plots=False`` skips the PNG files (they take a second or two); a picture that cannot be
    drawn is reported in one ``log`` line and the run goes on.

    ``clients(cfg, model, data)`` makes the :class:`~refimpl.fl.client.ClientExecutor` that
    computes the clients' updates (default: :class:`~refimpl.fl.client.LocalClients`, this
    process); it is called once the configuration, data and model are known. A non-None
    ``round_report()`` of the executor is appended to ``transport.jsonl`` after each round.

    Ctrl-C (also inside a compiled kernel) logs what the directory holds and how to continue,
    then raises :class:`RunInterrupted` (a KeyboardInterrupt). An operating-system error or a
    failed client (:class:`~refimpl.fl.client.ClientError`) logs the same and is raised again.
    """
    out = Path(out)
    if out.is_symlink():  # the directory it points to is the run (its lock and swap are there)
        out = out.resolve()
    if out.name in ("", ".", ".."):  # "." has no name to put a sibling or a lock beside
        out = Path(os.path.abspath(out))
    where = _Where(out, "run" if resume else "nothing")
    try:
        with ExitStack() as stack:
            return _run(stack, where, cfg, out, resume, overwrite, progress, stop_after, plots,
                        log, clients)
    except BaseException as e:
        if interrupted(e):
            msg = where.interrupted()
            log(msg)
            raise RunInterrupted(msg) from None
        if isinstance(e, (OSError, ClientError)):
            log(where.stopped())
        raise


def _run(stack: ExitStack, where: _Where, cfg, out: Path, resume, overwrite, progress,
         stop_after, plots, log, make_clients) -> dict:
    from tqdm import tqdm

    if resume:
        if cfg is not None:
            raise RunDirError("--resume continues a run with its own config.toml; do not pass "
                              "--preset, --config or --set with it")
        check_resumable(out)
        stack.enter_context(DirLock(out))
        sweep_tmp(out)
        text = _read_config_text(out)
        cfg = load_config(path=out / "config.toml")
        sha = _config_sha(text)
        marker = read_marker(out)
        if marker is not None and marker.get("config_sha256") != sha:
            raise RunDirError(f"cannot resume {str(out)!r}: its config.toml was edited after the "
                              f"run started (its SHA-256 no longer matches {out / 'run.json'}); "
                              f"put the original back, or start a new run from the edited file "
                              f"with `fedmef run --config {out / 'config.toml'} --out OTHER_DIR`")
    else:
        if check_target(out, overwrite):
            where.state = "unchanged"
        text = to_toml(cfg)
        sha = _config_sha(text)
    # data, model, initial masks and the shapes first: their errors (a missing dataset, a
    # density too small for a layer, images too small for the model) leave every file as it was
    data = load_fed_data(cfg)
    model = build_model(cfg, data.input_shape[0], data.num_classes)
    initial = init_state(cfg, model)
    _preflight(cfg, model, data)
    if resume:
        state, header = _restore(out, sha, model, cfg, log)
        state = state or initial
        kept, records = verify_metrics(
            out / "metrics.jsonl", state.round, header.get("metrics_sha256"),
            f"To recover, put the original metrics.jsonl back, or start the run again with "
            f"`fedmef run --config {out / 'config.toml'} --out {out} --overwrite` (same config, "
            f"same bytes)")
        if read_marker(out) is None:  # a run directory written before the marker existed
            write_marker(out, sha)
        atomic_write_bytes(out / "metrics.jsonl", kept)  # rounds after the checkpoint: redone
        work = out
    else:
        stack.enter_context(DirLock(out))
        if check_target(out, overwrite):  # again under the lock: another run may have written it
            where.state = "unchanged"
        work = new_sibling(out)
        stack.callback(lambda: work != out and discard(work))
        write_marker(work, sha)
        atomic_write_text(work / "config.toml", text)
        atomic_write_bytes(work / "metrics.jsonl", b"")
        state, records, kept = initial, [], b""
    _write_partition(work, data, plots, log)
    executor = (make_clients(cfg, model, data) if make_clients is not None
                else LocalClients(model, data, cfg))

    density = "dense" if state.masks is None else f"density {cfg.sparse.density:g}"
    log(f"{cfg.run.method} on {data.name}: {cfg.data.num_clients} clients, "
        f"{cfg.train.clients_per_round} per round, {cfg.run.rounds} rounds; {cfg.model.name} "
        f"({cfg.model.norm}, {model.num_params():,} parameters, {density}); writing {out}")
    start, t0 = state.round, time.perf_counter()
    bar = tqdm(total=cfg.run.rounds, initial=start, unit="round", disable=not progress,
               desc=cfg.run.method, dynamic_ncols=True)
    acc = next((r["test_accuracy"] for r in reversed(records)
                if r["test_accuracy"] is not None), None)
    last = cfg.run.rounds if stop_after is None else min(stop_after, cfg.run.rounds)
    digest = hashlib.sha256(kept)  # of metrics.jsonl so far; each checkpoint records it
    div = None
    try:
        with _threads(cfg.run.threads), open(work / "metrics.jsonl", "ab") as mf:
            for t in range(start + 1, last + 1):
                try:
                    state, rec = run_round(cfg, model, state, data, t, clients=executor)
                except Diverged as e:  # run.stop_on_divergence: the run ends at round t - 1
                    log(f"stopping: {e}")
                    div, last = e, t - 1
                    break
                _log_transport(work, executor)
                rec = _jsonable(rec)
                line = (json.dumps(rec) + "\n").encode("utf-8")
                with naming(work / "metrics.jsonl"):
                    mf.write(line)
                    mf.flush()
                    os.fsync(mf.fileno())  # on disk before a checkpoint can name this round
                digest.update(line)
                records.append(rec)
                if t % cfg.run.checkpoint_every == 0 or t == cfg.run.rounds:
                    save_checkpoint(work / "checkpoints", t, state.to_arrays(), sha,
                                    {"mask_version": state.mask_version,
                                     "metrics_sha256": digest.hexdigest()})
                if work != out:  # the new run has started: it takes the place of the old
                    with deferred_sigint():
                        swap_in(work, out)
                        work, where.state = out, "run"
                acc = rec["test_accuracy"] if rec["test_accuracy"] is not None else acc
                bar.set_postfix(_postfix(rec, acc), refresh=False)
                bar.update(1)
    finally:
        bar.close()
    if work != out:  # no round was asked for (stop_after = 0)
        with deferred_sigint():
            swap_in(work, out)
            work, where.state = out, "run"
    seconds = time.perf_counter() - t0
    summary = summarize(cfg, records, seconds, last - start, div)
    if last < cfg.run.rounds and div is None:
        return summary
    write_npz(out / "model.npz", {k: v for k, v in state.to_arrays().items()
                                  if k != "client_mask_version"})
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    if plots:
        from .plots import save_plots

        try:
            save_plots(records, out / "plots", cfg)
        except Exception as e:  # as for partition.png: say so in one line, keep the results
            log(f"plots not written ({_one_line(e)}); metrics.jsonl holds every number")
    return summary
