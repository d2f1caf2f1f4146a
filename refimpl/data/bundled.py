"""The bundled default: a balanced, deterministic subset of Fashion-MNIST shipped in the
repository (``refimpl/data/bundled/fashion_mnist_subset.npz``, MIT license, see the LICENSE text
beside it), so the main job runs on a machine without apt or network.

Subset rule (no randomness): for each class, the first 1,000 training and the first 200 test
images in the official files' order; the kept images stay in that order. The ``.npz`` is written
by :func:`npz_bytes`, a zip with fixed timestamps and attributes, so regenerating it from the
official files (``python -m refimpl.data.make_bundled``) reproduces the committed bytes exactly.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

from .dataset import DataFileError, Dataset

__all__ = ["BUNDLED_NPZ", "PER_CLASS", "CONTENT_SHA256", "select_balanced", "subset_arrays",
           "npz_bytes", "content_sha256", "load_bundled"]

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
BUNDLED_NPZ = BUNDLED_DIR / "fashion_mnist_subset.npz"
PER_CLASS = {"train": 1000, "test": 200}
#: Member order of the archive (part of the byte-exact format).
MEMBERS = ("x_train", "y_train", "x_test", "y_test", "index_train", "index_test", "classes")
#: sha256 over the uncompressed members (see :func:`content_sha256`); checked on every load.
CONTENT_SHA256 = "2e207102337641d0248d45e079d56ace31fd12dead62f8c4c927eba60e8b3121"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
HINT = ("Restore it with `git checkout -- refimpl/data/bundled/` or regenerate it with "
        "`python -m refimpl.data.make_bundled` (needs `apt-get install dataset-fashion-mnist`).")


def select_balanced(labels: np.ndarray, per_class: int, num_classes: int) -> np.ndarray:
    """int64 indices of the first ``per_class`` samples of each class, ascending (file order).

    Raises ValueError when a class has fewer than ``per_class`` samples.
    """
    labels = np.asarray(labels)
    keep = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            raise ValueError(f"select_balanced: class {c} has {len(idx)} samples, fewer than "
                             f"{per_class}")
        keep.append(idx[:per_class])
    return np.sort(np.concatenate(keep)).astype(np.int64)


def subset_arrays(full: Dataset) -> dict[str, np.ndarray]:
    """The arrays of the bundled file, in MEMBERS order, from the full Fashion-MNIST."""
    k = full.num_classes
    i_tr = select_balanced(full.y_train, PER_CLASS["train"], k)
    i_te = select_balanced(full.y_test, PER_CLASS["test"], k)
    return {"x_train": full.x_train[i_tr], "y_train": full.y_train[i_tr],
            "x_test": full.x_test[i_te], "y_test": full.y_test[i_te],
            "index_train": i_tr, "index_test": i_te, "classes": np.array(full.classes)}


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(a), version=(1, 0), allow_pickle=False)
    return buf.getvalue()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A byte-stable ``.npz``: members ``NAME.npy`` in the dict's order, npy format 1.0, DEFLATE
    level 6 (level 9 is 8x slower for 1% less), timestamp 1980-01-01, Unix mode 0644.
    ``np.load`` reads it like any npz.

    (``np.savez_compressed`` stamps the current time into the zip, so its bytes differ per run.)
    The deflate stream is zlib's: the same zlib version gives the same bytes.
    """
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, a in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            zf.writestr(info, _npy(a), compress_type=zipfile.ZIP_DEFLATED, compresslevel=6)
    return out.getvalue()


def content_sha256(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over the npy bytes of the members in order: independent of the compressor."""
    h = hashlib.sha256()
    for name, a in arrays.items():
        h.update(name.encode() + b"\0")
        h.update(_npy(a))
    return h.hexdigest()


def load_bundled(root=None, verify: bool = True) -> Dataset:
    """The bundled subset: x uint8 (10000, 1, 28, 28) / (2000, 1, 28, 28), y int64, 10 classes.

    ``root`` overrides the file (a path to the .npz or a directory holding it). ``verify``
    checks :data:`CONTENT_SHA256` (a truncated or Git-LFS-pointer file fails with a clear error).
    """
    path = BUNDLED_NPZ if root is None else Path(root)
    if path.is_dir():
        path = path / BUNDLED_NPZ.name
    if not path.is_file():
        raise FileNotFoundError(f"fashion-mnist-bundled: missing {path} (expected the bundled "
                                f"Fashion-MNIST subset .npz). {HINT}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {m: z[m] for m in MEMBERS}
    except (KeyError, ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataFileError(f"{path}: not the bundled subset (expected an .npz with members "
                            f"{', '.join(MEMBERS)}; {type(e).__name__}: {e}). {HINT}") from e
    digest = content_sha256(arrays)
    if verify and digest != CONTENT_SHA256:
        raise DataFileError(f"{path}: content checksum mismatch: sha256 {digest}, expected "
                            f"{CONTENT_SHA256}. {HINT}")
    return Dataset(name="fashion-mnist-bundled", x_train=arrays["x_train"],
                   y_train=arrays["y_train"], x_test=arrays["x_test"], y_test=arrays["y_test"],
                   classes=[str(c) for c in arrays["classes"]],
                   source=f"{path} (first {PER_CLASS['train']}/{PER_CLASS['test']} per class of "
                          f"Fashion-MNIST train/test)",
                   checksums={"content": digest}, verified=digest == CONTENT_SHA256)
