"""The run directory as a thing on disk: how it is recognised, locked, built and swapped in, and
how its ``metrics.jsonl`` is read and verified (docs/federated.md, "Run directories").

- **Marker.** ``run.json`` (``{"format": "fedmef-run/1", "config_sha256": ...}``) is written
  into every run directory before anything else. ``--overwrite`` removes only a directory that
  holds this marker *and* nothing but the files a run writes (:data:`RUN_FILES`); a folder that
  merely has a ``config.toml`` (a blog, a thesis) is refused, and so is a run directory into
  which someone saved their own files.
- **Lock.** ``PARENT/.NAME.lock`` (beside the directory, so it also covers the directory's
  creation and its replacement) is held with ``flock`` while a process writes the run. The OS
  drops the lock when the process dies, so a run killed with ``kill -9`` never blocks its resume;
  a clean exit also removes the file.
- **Build beside, swap in.** A new run (fresh or ``--overwrite``) is written into a hidden
  sibling ``.NAME.new-PID-XXXX`` and moved to ``NAME`` once its first round is done; until then
  ``NAME`` is untouched, and a failure or Ctrl-C discards the sibling.
- **Metrics.** A record per round, appended, flushed and fsynced; :func:`verify_metrics` checks
  that the file holds rounds 1..t intact before a resume from the checkpoint of round t.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["RunDirError", "MetricsError", "MARKER", "RUN_FORMAT", "RUN_FILES", "DirLock",
           "check_target", "check_resumable", "write_marker", "read_marker", "new_sibling",
           "swap_in", "deferred_sigint", "discard", "sweep_tmp", "parse_metrics", "verify_metrics",
           "metrics_digest", "REQUIRED_KEYS"]

MARKER = "run.json"
RUN_FORMAT = "fedmef-run/1"
#: What a run writes at the top of its directory: files, and directories with the pattern their
#: files follow. ``--overwrite`` refuses a directory holding anything else; a new output file
#: of the runner must be listed here.
RUN_FILES = {
    MARKER: None, "config.toml": None, "partition.json": None, "partition.txt": None,
    "partition.png": None, "metrics.jsonl": None, "summary.json": None, "model.npz": None,
    "transport.jsonl": None,
    "checkpoints": re.compile(r"round_\d+\.npz"),
    "plots": re.compile(r"[\w.-]+\.(png|svg|pdf)"),
}
#: Keys every metrics record has (the summary, compare and the plots read them).
REQUIRED_KEYS = ("round", "train_loss", "test_accuracy", "test_loss", "density",
                 "activation_bytes", "bytes_up", "bytes_down", "adjustment")


def _is_tmp(name: str, pattern) -> bool:
    """Whether ``name`` is the temporary file of an atomic write (``.NAME.tmp``, left by a kill)
    of a file a run writes: a top-level file (``pattern`` None) or one matching ``pattern``."""
    if not (name.startswith(".") and name.endswith(".tmp")):
        return False
    target = name[1:-len(".tmp")]
    if pattern is None:
        return RUN_FILES.get(target, "dir") is None
    return bool(pattern.fullmatch(target))


class RunDirError(ValueError):
    """The output directory cannot be used as asked; the message says how to proceed."""


class MetricsError(RunDirError):
    """metrics.jsonl is damaged or does not match the checkpoint; the message names the line."""


# ---- recognising a run directory ---------------------------------------------------------------
def read_marker(d: Path) -> dict | None:
    """The marker of run directory ``d``, or None when it has none (or not ours)."""
    try:
        m = json.loads((d / MARKER).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("format") == RUN_FORMAT else None


def write_marker(d: Path, config_sha: str) -> None:
    from .store import atomic_write_text

    atomic_write_text(d / MARKER, json.dumps({"format": RUN_FORMAT, "config_sha256": config_sha,
                                              "written_by": "fedmef run"}, indent=1) + "\n")


def _foreign(d: Path) -> list[str]:
    """Entries of ``d`` that a run does not write (relative paths, sorted)."""
    out = []
    for p in sorted(d.iterdir()):
        if _is_tmp(p.name, None) and p.is_file():
            continue
        if p.name not in RUN_FILES:
            out.append(p.name)
            continue
        pattern = RUN_FILES[p.name]
        if (pattern is None) != p.is_file() or p.is_symlink():
            out.append(p.name)
            continue
        if pattern is not None:
            out += [f"{p.name}/{q.name}" for q in sorted(p.iterdir())
                    if not (q.is_file() and (pattern.fullmatch(q.name)
                                             or _is_tmp(q.name, pattern)))]
    return out


def _is_empty(d: Path) -> bool:
    return not any(d.iterdir())


def _existing_ancestor(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_target(out: Path, overwrite: bool) -> bool:
    """Whether a new run may be written to ``out``; True when it replaces an existing run.

    Raises :class:`RunDirError` when ``out`` is a file or lies under one, holds files without
    ``--overwrite``, or is not a run directory this project wrote (no marker, or files a run
    does not write)."""
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {str(out)!r} is a file, not a directory; choose a directory")
    if not out.exists():
        top = _existing_ancestor(out)
        if not top.is_dir():
            raise RunDirError(f"--out {str(out)!r} cannot be made: {str(top)!r} is a file, not "
                              f"a directory; choose another --out")
        return False
    if _is_empty(out):
        return False
    if not overwrite:
        raise RunDirError(f"output directory {str(out)!r} already exists and is not empty; "
                          f"pass --overwrite to replace it or --resume {out} to continue it")
    if read_marker(out) is None:
        why = ("it holds files but no config.toml, so it is not a run directory"
               if not (out / "config.toml").exists() else
               f"it has no {MARKER} marker with format {RUN_FORMAT!r}, so fedmef run did not "
               f"write it (or a version before the marker did)")
        raise RunDirError(f"refusing to overwrite {str(out)!r}: {why}; choose another --out, or "
                          f"delete it yourself if you are sure")
    foreign = _foreign(out)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5
                                          else "")
        raise RunDirError(f"refusing to overwrite {str(out)!r}: besides the run it holds files "
                          f"a run does not write ({shown}); move them out or choose another --out")
    return True


def check_resumable(out: Path) -> None:
    if not out.is_dir():
        raise RunDirError(f"cannot resume {str(out)!r}: " + (
            "it is a file, not a run directory" if out.exists() else "it does not exist"))
    if not (out / "config.toml").is_file():
        raise RunDirError(f"cannot resume {str(out)!r}: it has no config.toml (not a run "
                          f"directory)")


# ---- the lock ----------------------------------------------------------------------------------
class DirLock:
    """An exclusive, non-blocking lock on run directory ``out``: the file ``.NAME.lock`` beside
    it, held with ``flock`` (``msvcrt.locking`` on Windows) and holding the owner's PID. The
    lock dies with its process; the file is removed on release. Use as a context manager."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.path = self.out.absolute().parent / f".{self.out.name}.lock"
        self.fd: int | None = None

    def __enter__(self) -> DirLock:
        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:  # name the run directory, not only the lock file beside it
                raise OSError(e.errno, f"{e.strerror} (creating its lock file "
                              f"{self.path.name} beside it)", str(self.out)) from e
            try:
                _lock(fd)
            except OSError as e:
                if e.errno not in _BUSY:
                    os.close(fd)
                    raise
                owner = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise RunDirError(f"{str(self.out)!r} is in use by another fedmef run (process "
                                  f"{owner}; lock file {self.path}); wait for it to finish or "
                                  f"stop it, then try again") from None
            # the holder before us may have removed the file between our open and our lock:
            # then we hold a lock on a deleted file and must start over
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink()  # while still holding the lock (see __enter__)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES, errno.EDEADLK)  # held by another


def _lock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:  # pragma: no cover - Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)


# ---- building beside and swapping in -----------------------------------------------------------
def _siblings(out: Path) -> list[Path]:
    parent = out.absolute().parent
    if not parent.is_dir():
        return []
    pat = re.compile(re.escape(f".{out.name}.") + r"(new|old)-\d+-[0-9a-f]{8}")
    return [p for p in parent.iterdir() if pat.fullmatch(p.name) and p.is_dir()]


def new_sibling(out: Path) -> Path:
    """A fresh hidden directory beside ``out`` to build the new run in. Call under the lock of
    ``out``: siblings left by a killed run are removed first (only ones this module made)."""
    for p in _siblings(out):
        if _is_empty(p) or (read_marker(p) is not None and not _foreign(p)):
            shutil.rmtree(p)
    work = out.absolute().parent / f".{out.name}.new-{os.getpid()}-{secrets.token_hex(4)}"
    work.mkdir(parents=True)
    return work


@contextmanager
def deferred_sigint():
    """Hold Ctrl-C back for the few renames of a swap (so it never lands between them, with the
    old run set aside and the new one not yet in place); raised once the block is done."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield  # signal handlers belong to the main thread; None: installed outside Python
        return
    got = []
    signal.signal(signal.SIGINT, lambda *a: got.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if got:
        raise KeyboardInterrupt


def swap_in(work: Path, out: Path) -> None:
    """Move the built run ``work`` to ``out``; an old run at ``out`` (checked by
    :func:`check_target`) is renamed aside first, put back if the second rename fails, and
    removed after. Call inside :func:`deferred_sigint`."""
    old = None
    if out.exists():
        if _is_empty(out):
            out.rmdir()
        else:
            old = out.absolute().parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            os.rename(out, old)
    try:
        os.rename(work, out)
    except BaseException:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old)


def discard(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)


def sweep_tmp(d: Path) -> None:
    """Remove temporary files of interrupted atomic writes of the run's own files (call under
    the lock); any other file stays."""
    for sub, pattern in ((d, None), (d / "checkpoints", RUN_FILES["checkpoints"]),
                         (d / "plots", RUN_FILES["plots"])):
        if sub.is_dir() and not sub.is_symlink():
            for p in sub.iterdir():
                if _is_tmp(p.name, pattern) and p.is_file():
                    p.unlink()


# ---- metrics.jsonl -----------------------------------------------------------------------------
def _record(line: bytes, n: int, path: Path) -> dict:
    """Line ``n`` (1-based) of metrics.jsonl as the record of round n, or MetricsError."""
    where = f"{str(path)!r} line {n}"
    if not line.endswith(b"\n"):
        raise MetricsError(f"{where} is cut short (no line end): the record of round {n} is "
                           f"incomplete")
    try:
        rec = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MetricsError(f"{where} is damaged: not a JSON record ({e})") from None
    if not isinstance(rec, dict):
        raise MetricsError(f"{where} is damaged: expected a JSON object, found "
                           f"{type(rec).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in rec]
    if missing:
        raise MetricsError(f"{where} is damaged: the record lacks {', '.join(missing)}")
    if rec["round"] != n:
        raise MetricsError(f"{where} holds round {rec['round']!r}, expected round {n}: records "
                           f"are missing or out of order")
    return rec


def parse_metrics(path) -> list[dict]:
    """Every record of a metrics.jsonl, verified to be rounds 1, 2, ... in order, each a
    complete JSON object with :data:`REQUIRED_KEYS`; :class:`MetricsError` names the first bad
    line. A missing file holds no records."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_bytes().splitlines(keepends=True)
    return [_record(line, i + 1, path) for i, line in enumerate(lines)]


def metrics_digest(lines) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line)
    return h.hexdigest()


def verify_metrics(path: Path, t: int, expected_sha: str | None, recover: str
                   ) -> tuple[bytes, list[dict]]:
    """The bytes and records of rounds 1..t of ``path``, for a resume from the checkpoint of
    round t: each record intact and, when the checkpoint recorded it, their SHA-256 equal to
    ``expected_sha``. Lines after round t are dropped (the resume recomputes them). Raises
    :class:`MetricsError` saying what is wrong and, with ``recover``, how to recover."""
    lines = path.read_bytes().splitlines(keepends=True) if path.exists() else []
    try:
        if len(lines) < t:
            have = "no metrics.jsonl" if not path.exists() else f"{len(lines)} record(s)"
            raise MetricsError(f"{str(path)!r}: the checkpoint is of round {t}, so the file must "
                               f"hold the records of rounds 1..{t}; it holds {have}")
        records = [_record(line, i + 1, path) for i, line in enumerate(lines[:t])]
        if expected_sha is not None and metrics_digest(lines[:t]) != expected_sha:
            raise MetricsError(f"{str(path)!r}: the records of rounds 1..{t} differ from the ones "
                               f"the run wrote (their SHA-256 is recorded in the checkpoint)")
    except MetricsError as e:
        raise MetricsError(f"cannot resume: {e}. {recover}") from None
    return b"".join(lines[:t]), records
