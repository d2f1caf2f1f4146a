"""Files of a run, written atomically and byte-deterministically (RNG-1: same config, same bytes).

- :func:`atomic_write_bytes` / :func:`atomic_write_text`: a temporary file in the same directory,
  flushed and fsynced, then ``os.replace`` onto the target, so a reader sees the old file or the
  new one, never half of one.
- :func:`write_npz`: an uncompressed ``.npz`` (readable by ``numpy.load``) whose zip entries carry
  a fixed timestamp, so equal arrays give equal bytes (``numpy.savez`` stamps the current time).
- Checkpoints (:func:`save_checkpoint`, :func:`load_checkpoint`): the global state after round t
  plus a JSON header with the format version, the round, the SHA-256 of the run's config and a
  SHA-256 of the arrays; loading verifies all of it and raises :class:`CheckpointError` with the
  file name and the cause.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = ["atomic_write_bytes", "atomic_write_text", "naming", "write_npz", "read_npz",
           "CheckpointError", "save_checkpoint", "load_checkpoint", "list_checkpoints",
           "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "fedmef-checkpoint/1"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@contextmanager
def naming(path):
    """An OSError raised inside without a file name (a write or an fsync on a descriptor, as on
    a full disk) is raised again naming ``path``, so the message says which file failed."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically; on any failure (a full disk, Ctrl-C) the temporary
    file is removed and ``path`` keeps its old content. An OSError names ``path`` (not the
    temporary file, which no longer exists)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(e, OSError) and e.errno is not None and e.filename in (None, str(tmp)):
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The bytes of an uncompressed .npz of ``arrays`` (in the given order), deterministic."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, a in arrays.items():
            entry = io.BytesIO()
            np.lib.format.write_array(entry, np.ascontiguousarray(a), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            zf.writestr(info, entry.getvalue())
    return buf.getvalue()


def write_npz(path, arrays: dict[str, np.ndarray]) -> None:
    atomic_write_bytes(path, npz_bytes(arrays))


def read_npz(path) -> dict[str, np.ndarray]:
    """All arrays of an .npz, read fully (zip CRCs checked); no pickles."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names the file and says why. ``kind`` is
    ``"corrupt"`` (unreadable, bad format or digest), ``"config"`` (written for another
    configuration) or ``"round"`` (its file name does not match the round it holds)."""

    def __init__(self, message: str, kind: str = "corrupt"):
        super().__init__(message)
        self.kind = kind


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def checkpoint_path(directory, t: int) -> Path:
    return Path(directory) / f"round_{t:05d}.npz"


def list_checkpoints(directory) -> list[tuple[int, Path]]:
    """(round, path) of the checkpoint files in ``directory``, by ascending round."""
    d = Path(directory)
    if not d.is_dir():
        return []
    out = []
    for p in d.glob("round_*.npz"):
        stem = p.stem[len("round_"):]
        if stem.isdigit():
            out.append((int(stem), p))
    return sorted(out)


def save_checkpoint(directory, t: int, arrays: dict[str, np.ndarray], config_sha: str,
                    extra: dict, keep: int = 2) -> Path:
    """Write the checkpoint of round t atomically, then delete all but the ``keep`` newest
    (the previous one stays until the new one is complete on disk)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    header = {"format": CHECKPOINT_FORMAT, "round": t, "config_sha256": config_sha,
              "arrays_sha256": _digest(arrays), **extra}
    payload = {"header": np.frombuffer(json.dumps(header, sort_keys=True).encode(), np.uint8),
               **arrays}
    path = checkpoint_path(d, t)
    write_npz(path, payload)
    for _, old in list_checkpoints(d)[:-keep]:
        old.unlink()
    return path


def load_checkpoint(path, config_sha: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and verify one checkpoint; returns (header, arrays)."""
    path = Path(path)
    try:
        arrays = read_npz(path)
        header = json.loads(bytes(arrays.pop("header")).decode())
    except Exception as e:  # zip, CRC, npy header or JSON damage: all mean "corrupt"
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or unreadable "
                              f"({type(e).__name__}: {e})") from e
    if header.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} has format {header.get('format')!r}, "
                              f"expected {CHECKPOINT_FORMAT!r}")
    if header.get("arrays_sha256") != _digest(arrays):
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt: its arrays do not match the "
                              f"SHA-256 recorded in its header")
    if header.get("config_sha256") != config_sha:
        raise CheckpointError(f"checkpoint {str(path)!r} was written for another configuration "
                              f"(config.toml of the run directory changed since)", "config")
    t = header.get("round")
    if isinstance(t, bool) or not isinstance(t, int) or t < 1:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt: its header holds round "
                              f"{t!r}")
    stem = path.stem[len("round_"):] if path.stem.startswith("round_") else ""
    if stem.isdigit() and t != int(stem):
        raise CheckpointError(f"checkpoint {str(path)!r} holds round {t} (its header), not "
                              f"round {int(stem)} as its name says: it was renamed; rename it "
                              f"back to {checkpoint_path(path.parent, t).name}", "round")
    return header, arrays
