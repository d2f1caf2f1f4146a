"""A whole run and its directory: fresh start, ``--overwrite`` and bit-identical ``--resume``
(RNG-1), metrics, checkpoints, the final model, the summary and the plots.

Run directory layout (docs/federated.md has the schemas)::

    config.toml        resolved configuration (loadable with --config)
    partition.json     partition report (DATA-2); partition.txt, partition.png beside it
    metrics.jsonl      one JSON record per round, deterministic (no wall times)
    checkpoints/       round_NNNNN.npz, the two newest kept, written atomically
    model.npz          final global model: param/<name>, buffer/<name>, mask/<name>
    summary.json       final results and wall time
    plots/             accuracy.png, loss.png, memory.png (refimpl.fl.plots)
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .config import Config, load_config, to_toml
from .data import load_fed_data
from .engine import run_round
from .state import GlobalState, build_model, init_state
from .store import (
    CheckpointError,
    atomic_write_text,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    write_npz,
)

__all__ = ["run", "RunDirError", "read_metrics", "human_bytes"]


class RunDirError(ValueError):
    """The output directory cannot be used as asked; the message says how to proceed."""


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
    """The records of a metrics.jsonl; a torn last line (an interrupted write) is dropped."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text("utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def _check_out(out: Path, overwrite: bool) -> bool:
    """Whether ``out`` holds a run to replace; raises when it may not be used."""
    if not (out.exists() and any(out.iterdir())):
        return False
    if not overwrite:
        raise RunDirError(f"output directory {str(out)!r} already exists and is not empty; "
                          f"pass --overwrite to replace it or --resume {out} to continue it")
    if not (out / "config.toml").exists():
        raise RunDirError(f"refusing to overwrite {str(out)!r}: it holds files but no "
                          f"config.toml, so it is not a run directory; choose another --out")
    return True


def _prepare_dir(out: Path, overwrite: bool) -> None:
    if _check_out(out, overwrite):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _config_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _restore(out: Path, config_sha: str, model, cfg: Config, log) -> GlobalState | None:
    """The state of the newest checkpoint, or None when the run has none yet."""
    cps = list_checkpoints(out / "checkpoints")
    if not cps:
        return None
    t, path = cps[-1]
    try:
        header, arrays = load_checkpoint(path, config_sha)
    except CheckpointError as e:
        hint = (f"; the previous checkpoint {cps[-2][1].name} (round {cps[-2][0]}) is intact: "
                f"delete {path.name} to resume from it" if len(cps) > 1 else
                "; no earlier checkpoint exists: start again with --overwrite")
        raise CheckpointError(f"{e}{hint}") from None
    log(f"resuming {out} from {path.name} (round {t})")
    return GlobalState.from_arrays(int(header["round"]), int(header["mask_version"]), arrays,
                                   model, dense=not cfg.sparse_masks)


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


def summarize(cfg: Config, records: list[dict], seconds: float, rounds_run: int) -> dict:
    """summary.json: final and best accuracy, memory and communication totals, timing."""
    evals = [r for r in records if r["test_accuracy"] is not None]
    last = records[-1] if records else {}
    best = max(evals, key=lambda r: (r["test_accuracy"], -r["round"])) if evals else None
    return {
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


def run(cfg: Config | None, out, *, resume: bool = False, overwrite: bool = False,
        progress: bool = True, stop_after: int | None = None, plots: bool = True,
        log=print) -> dict:
    """Run (or resume) a federated run into directory ``out``; return the summary.

    ``resume=True`` reads ``out/config.toml`` (``cfg`` must be None) and continues from the
    newest checkpoint, bit-identically to an uninterrupted run. ``stop_after`` ends the run after
    that round without the final outputs (an interruption, for tests). ``plots=False`` skips
    the PNG files (they take a second or two); a picture that cannot be drawn is reported in
    one ``log`` line and the run goes on.
    """
    from tqdm import tqdm

    out = Path(out)
    if resume:
        if cfg is not None:
            raise RunDirError("--resume continues a run with its own config.toml; do not pass "
                              "--preset, --config or --set with it")
        if not (out / "config.toml").exists():
            raise RunDirError(f"cannot resume {str(out)!r}: it has no config.toml (not a run "
                              f"directory)")
        text = (out / "config.toml").read_text("utf-8")
        cfg = load_config(path=out / "config.toml")
    else:
        _check_out(out, overwrite)
    # data, model and initial masks first: their errors (a missing dataset, a density too
    # small for a layer) must not leave a half-made run directory behind
    data = load_fed_data(cfg)
    model = build_model(cfg, data.input_shape[0], data.num_classes)
    initial = init_state(cfg, model)
    if not resume:
        _prepare_dir(out, overwrite)
        text = to_toml(cfg)
        atomic_write_text(out / "config.toml", text)
    sha = _config_sha(text)
    _write_partition(out, data, plots, log)
    state = _restore(out, sha, model, cfg, log) if resume else None
    if state is None:
        state = initial
    # metrics of rounds after the checkpoint are recomputed (identically) below
    records = [r for r in read_metrics(out / "metrics.jsonl") if r["round"] <= state.round]
    atomic_write_text(out / "metrics.jsonl",
                      "".join(json.dumps(r) + "\n" for r in records))

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
    try:
        with _threads(cfg.run.threads), open(out / "metrics.jsonl", "a", encoding="utf-8") as mf:
            for t in range(start + 1, last + 1):
                state, rec = run_round(cfg, model, state, data, t)
                rec = _jsonable(rec)
                mf.write(json.dumps(rec) + "\n")
                mf.flush()
                records.append(rec)
                if t % cfg.run.checkpoint_every == 0 or t == cfg.run.rounds:
                    save_checkpoint(out / "checkpoints", t, state.to_arrays(), sha,
                                    {"mask_version": state.mask_version})
                acc = rec["test_accuracy"] if rec["test_accuracy"] is not None else acc
                bar.set_postfix(_postfix(rec, acc), refresh=False)
                bar.update(1)
    except KeyboardInterrupt:
        bar.close()
        cps = list_checkpoints(out / "checkpoints")
        where = f"round {cps[-1][0]}" if cps else "the start (no checkpoint yet)"
        log(f"interrupted; `fedmef run --resume {out}` continues from {where}")
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    summary = summarize(cfg, records, seconds, last - start)
    if last < cfg.run.rounds:
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
