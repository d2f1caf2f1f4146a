"""The on-disk layout of a conformance dump, its writer and its reader (docs/conformance.md).

    DIR/manifest.json          scenario, seeds, software versions, quantity classes (rules,
                               tolerances), and the steps in order with their [key, class] lists
    DIR/steps/NNN_<step>.npz   one uncompressed .npz per step (numpy.load), byte-deterministic
    DIR/conformance.bin        every tensor again as ``<step>/<key>`` in the little-endian tensor
                               file of :mod:`refimpl.conformance.binfile`, the manifest as its
                               metadata, for readers without Python

A dump written by another implementation may hold either the ``steps/`` files or only
``conformance.bin`` (or be that file itself); its manifest is optional when the reference is
given. Missing or damaged files raise :class:`DumpError` with the file and the cause.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import zipfile
from pathlib import Path

import numpy as np

from ..fl.store import atomic_write_bytes, atomic_write_text
from . import binfile
from .quantities import KINDS

__all__ = ["FORMAT", "MANIFEST", "BINFILE", "DumpError", "Dump", "step_file", "write_dump",
           "validate_manifest", "check_target"]

FORMAT = "fedmef-conformance/1"
MANIFEST = "manifest.json"
BINFILE = "conformance.bin"
STEPS = "steps"


_NO_MANIFEST = ("{path!r} has no manifest (no manifest.json, no metadata in its tensor file), "
                "so its scenario is unknown: pass --against REF to compare it with a given "
                "reference dump")


class DumpError(ValueError):
    """A dump cannot be read or is not a conformance dump; the message names the file."""


def step_file(index: int, name: str) -> str:
    return f"{STEPS}/{index:03d}_{name}.npz"


_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed .npz of ``arrays`` in the given order with fixed zip timestamps, so equal
    arrays give equal bytes; 0-d arrays stay 0-d (``numpy.savez`` stamps the current time)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, a in arrays.items():
            entry = io.BytesIO()
            np.lib.format.write_array(entry, np.require(a, requirements="C"),
                                      allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            zf.writestr(info, entry.getvalue())
    return buf.getvalue()


def manifest_text(manifest: dict) -> str:
    return json.dumps(manifest, indent=1, ensure_ascii=False) + "\n"


_DUMP_FILE = re.compile(rf"({re.escape(MANIFEST)}|{re.escape(BINFILE)}|\..+\.tmp)")
_STEP_FILE = re.compile(r"\d{3}_\w+\.npz|\..+\.tmp")


def _ours(out: Path) -> str | None:
    """None when ``out`` is a dump this project wrote (a manifest of format :data:`FORMAT` and
    nothing but dump files), else why not."""
    try:
        m = json.loads((out / MANIFEST).read_text("utf-8"))
    except FileNotFoundError:
        return f"it holds no {MANIFEST}, so it is not a conformance dump"
    except (OSError, ValueError):
        return f"its {MANIFEST} is not JSON, so it is not a conformance dump"
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        return f"its {MANIFEST} is not of format {FORMAT!r}, so this project did not write it"
    foreign = []
    for p in sorted(out.iterdir()):
        if p.name == STEPS and p.is_dir() and not p.is_symlink():
            foreign += [f"{STEPS}/{q.name}" for q in sorted(p.iterdir())
                        if not (q.is_file() and _STEP_FILE.fullmatch(q.name))]
        elif not (p.is_file() and _DUMP_FILE.fullmatch(p.name)):
            foreign.append(p.name)
    if foreign:
        return (f"besides the dump it holds other files ({', '.join(foreign[:5])}"
                f"{' and more' if len(foreign) > 5 else ''}); move them out")
    return None


def check_target(directory, overwrite: bool) -> bool:
    """Whether a dump may be written to ``directory``; True when it replaces an existing dump.
    An existing directory is replaced only with ``overwrite`` and only when it is a dump this
    project wrote (:func:`_ours`); anything else raises :class:`DumpError`."""
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise DumpError(f"{str(out)!r} is a file, not a directory; choose a directory")
    if not out.exists() or not any(out.iterdir()):
        return False
    if not overwrite:
        raise DumpError(f"{str(out)!r} already exists and is not empty; pass --overwrite to "
                        f"replace it")
    why = _ours(out)
    if why is not None:
        raise DumpError(f"refusing to overwrite {str(out)!r}: {why}; choose another directory")
    return True


def write_dump(directory, head: dict, steps: list, overwrite: bool = False,
               npz: bool = True) -> dict:
    """Write ``steps`` (:class:`refimpl.conformance.recorder.Step`) under ``directory`` and return
    the manifest. The dump is assembled in a temporary sibling directory, every file written
    atomically, then renamed into place (an old dump is renamed aside first and removed last),
    so ``directory`` never holds half a dump. ``npz=False`` writes only manifest.json and
    conformance.bin (the committed golden dump)."""
    out = Path(directory)
    check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    manifest = {**head, "steps": [s.entry(step_file(i, s.name)) for i, s in enumerate(steps)]}
    # a fresh sibling (same file system, so the final rename is atomic), created with the
    # user's umask like any directory (tempfile.mkdtemp would make it private)
    tmp = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        if npz:
            (tmp / STEPS).mkdir()
        tensors = {}
        for s, entry in zip(steps, manifest["steps"], strict=True):
            if npz:
                atomic_write_bytes(tmp / entry["file"], npz_bytes(s.arrays))
            tensors.update({f"{s.name}/{k}": a for k, a in s.arrays.items()})
        atomic_write_bytes(tmp / BINFILE, binfile.encode(tensors, manifest))
        atomic_write_text(tmp / MANIFEST, manifest_text(manifest))
        old = None
        if out.exists():
            if check_target(out, overwrite):  # checked again: still an empty dir or our dump
                old = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.old"
                os.rename(out, old)
            else:
                out.rmdir()  # empty
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old)
    return manifest


def validate_manifest(m, source: str) -> dict:
    """Check the structure of a manifest; return it. Raises :class:`DumpError`."""
    def bad(msg):
        raise DumpError(f"{source}: not a valid conformance manifest: {msg}")

    if not isinstance(m, dict):
        bad("expected a JSON object")
    if m.get("format") != FORMAT:
        bad(f"format {m.get('format')!r}, expected {FORMAT!r}")
    quantities = m.get("quantities")
    if not isinstance(quantities, dict):
        bad("no 'quantities' table")
    for cls, q in quantities.items():
        if not isinstance(q, dict) or q.get("kind") not in KINDS or not isinstance(
                q.get("rules"), list):
            bad(f"quantity class {cls!r} needs a kind in {KINDS} and a list of rules")
        if q["kind"] == "float" and not all(isinstance(q.get(t), (int, float))
                                            for t in ("rtol", "atol")):
            bad(f"float quantity class {cls!r} needs numeric rtol and atol")
    steps = m.get("steps")
    if not isinstance(steps, list) or not steps:
        bad("no 'steps' list")
    names = set()
    for s in steps:
        if not (isinstance(s, dict) and isinstance(s.get("name"), str)
                and isinstance(s.get("file"), str) and isinstance(s.get("keys"), list)):
            bad(f"step entry {str(s)[:80]} needs name, file and keys")
        if s["name"] in names:
            bad(f"step {s['name']!r} listed twice")
        names.add(s["name"])
        for pair in s["keys"]:
            if not (isinstance(pair, list) and len(pair) == 2 and pair[1] in quantities):
                bad(f"step {s['name']!r}: key entry {pair!r} needs [key, known class]")
    return m


class Dump:
    """A dump opened for reading: its manifest (None for a foreign dump without one) and its
    steps, from ``steps/*.npz`` or from ``conformance.bin``."""

    def __init__(self, path: Path, manifest: dict | None, source: str,
                 tensors: dict | None = None):
        self.path, self.manifest, self.source = path, manifest, source
        self._tensors = tensors

    @classmethod
    def open(cls, path, need_manifest: bool = True) -> Dump:
        p = Path(path)
        if not p.exists():
            raise DumpError(f"{str(p)!r} does not exist")
        if p.is_file():
            return cls._open_bin(p, p, need_manifest)
        manifest = None
        if (p / MANIFEST).exists():
            try:
                raw = json.loads((p / MANIFEST).read_text("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise DumpError(f"{str(p / MANIFEST)!r} is not valid JSON: {e}") from None
            manifest = validate_manifest(raw, str(p / MANIFEST))
        if (p / STEPS).is_dir():
            if manifest is None and need_manifest:
                raise DumpError(_NO_MANIFEST.format(path=str(p)))
            return cls(p, manifest, "npz")
        if (p / BINFILE).is_file():
            dump = cls._open_bin(p, p / BINFILE, need_manifest and manifest is None)
            dump.manifest = manifest or dump.manifest
            return dump
        raise DumpError(f"{str(p)!r} is not a conformance dump: it holds neither {STEPS}/*.npz "
                        f"nor {BINFILE} (write one with `fedmef conformance export DIR`)")

    @classmethod
    def _open_bin(cls, root: Path, file: Path, need_manifest: bool) -> Dump:
        try:
            tensors, meta = binfile.read(str(file))
        except (ValueError, UnicodeDecodeError) as e:
            raise DumpError(f"{str(file)!r} is damaged: {e}") from None
        if not meta and need_manifest:
            raise DumpError(_NO_MANIFEST.format(path=str(file)))
        manifest = validate_manifest(meta, str(file)) if meta else None
        return cls(root, manifest, "bin", tensors)

    def load(self, entry: dict) -> dict[str, np.ndarray] | None:
        """The arrays of the step ``entry`` (a manifest step), or None when this dump lacks the
        step. A damaged step file raises :class:`DumpError`."""
        name = entry["name"]
        if self._tensors is not None:
            prefix = f"{name}/"
            arrays = {k[len(prefix):]: v for k, v in self._tensors.items()
                      if k.startswith(prefix)}
            return arrays or None
        f = self.path / entry["file"]
        if not f.exists():
            return None
        try:
            with np.load(f, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception as e:  # zip, CRC, npy header damage all mean "corrupt"
            raise DumpError(f"{str(f)!r} is damaged or not an .npz file "
                            f"({type(e).__name__}: {e})") from None
