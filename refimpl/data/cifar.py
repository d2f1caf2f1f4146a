"""CIFAR-10 from a user's copy: the Python pickle batches or the binary version, as directories
or as the original ``.tar.gz`` archives (read in place, nothing is extracted).

Python version (``cifar-10-batches-py``): ``data_batch_1..5`` and ``test_batch`` are pickled dicts
with ``data`` uint8 (N, 3072) (1024 red, 1024 green, 1024 blue values, each a 32x32 image in
row-major order, i.e. already CHW) and ``labels`` (N ints in 0..9); ``batches.meta`` holds
``label_names``. They are unpickled with a restricted unpickler that accepts only NumPy's array
reconstruction, so a hostile file cannot run code. A batch of the official size (10,000 images)
must match the official md5 (the values published with the dataset, also used by torchvision).

Binary version (``cifar-10-batches-bin``): ``data_batch_1.bin..5`` and ``test_batch.bin`` are
records of 3,073 bytes (1 label byte, then 3,072 pixel bytes as above); ``batches.meta.txt`` lists
the class names. No per-file checksums are published for it: the structure is checked, and a
complete set must have the official 5,000 (train) and 1,000 (test) images per class.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from .dataset import DataFileError, Dataset

__all__ = ["load_cifar10", "CIFAR10_CLASSES", "CIFAR10_PY_MD5", "RECORD_BYTES"]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]
CIFAR10_PY_MD5 = {"data_batch_1": "c99cafc152244af753f735de768cd75f",
                  "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
                  "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
                  "data_batch_4": "634d18415352ddfa80567beed471001a",
                  "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
                  "test_batch": "40351d587109b95175f43aff81a1287e"}
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCHES = ["test_batch"]
RECORD_BYTES = 1 + 3 * 32 * 32
OFFICIAL_PER_CLASS = {"train": 5000, "test": 1000}
OFFICIAL_BATCH = 10000
HINT = ("Download CIFAR-10 (python or binary version) from "
        "https://www.cs.toronto.edu/~kriz/cifar.html on a machine with network access and pass "
        "root=DIR holding cifar-10-batches-py/ or cifar-10-batches-bin/ (or the .tar.gz).")
_WANTED = set(TRAIN_BATCHES + TEST_BATCHES + ["batches.meta", "batches.meta.txt"]
              + [b + ".bin" for b in TRAIN_BATCHES + TEST_BATCHES])


class _Dir:
    def __init__(self, path: Path):
        self.path = path

    def has(self, name):
        return (self.path / name).is_file()

    def read(self, name):
        return (self.path / name).read_bytes()

    def where(self, name):
        return str(self.path / name)


class _Tar:
    """The CIFAR members of a tar archive, read in one pass (by base name)."""

    def __init__(self, path: Path):
        self.path, self.files = path, {}
        try:
            with tarfile.open(path, "r:*") as tf:
                for m in tf:
                    base = m.name.rsplit("/", 1)[-1]
                    if m.isfile() and base in _WANTED:
                        self.files[base] = tf.extractfile(m).read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataFileError(f"{path}: not a readable tar archive ({e}). {HINT}") from e

    def has(self, name):
        return name in self.files

    def read(self, name):
        return self.files[name]

    def where(self, name):
        return f"{self.path}!{name}"


def _source(root):
    if root is None:
        raise FileNotFoundError(f"cifar10: no root given (CIFAR-10 cannot be downloaded here). "
                                f"{HINT}")
    root = Path(root)
    if root.is_file():
        return _Tar(root)
    if not root.is_dir():
        raise FileNotFoundError(f"cifar10: {root} does not exist. {HINT}")
    for sub in ("cifar-10-batches-py", "cifar-10-batches-bin", "."):
        d = _Dir(root / sub)
        if d.has("data_batch_1") or d.has("data_batch_1.bin"):
            return d
    for archive in ("cifar-10-python.tar.gz", "cifar-10-binary.tar.gz"):
        if (root / archive).is_file():
            return _Tar(root / archive)
    raise FileNotFoundError(f"cifar10: no CIFAR-10 files in {root} (looked for "
                            f"cifar-10-batches-py/data_batch_1, cifar-10-batches-bin/"
                            f"data_batch_1.bin, data_batch_1[.bin], cifar-10-python.tar.gz, "
                            f"cifar-10-binary.tar.gz). {HINT}")


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct as f
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import _reconstruct as f
    return f


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that resolves only what a CIFAR batch needs (ndarray reconstruction)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
                ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
                ("numpy", "ndarray"): lambda: np.ndarray,
                ("numpy", "dtype"): lambda: np.dtype,
                ("_codecs", "encode"): lambda: codecs.encode}

    def find_class(self, module, name):
        get = self._ALLOWED.get((module, name))
        if get is None:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return get()


def _unpickle(data: bytes, where: str) -> dict:
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as e:  # any unpickling failure means the file is not a CIFAR batch
        raise DataFileError(f"{where}: not a CIFAR-10 python batch (unpickling failed: {e}). "
                            f"{HINT}") from e
    if not isinstance(obj, dict):
        raise DataFileError(f"{where}: expected a pickled dict, found {type(obj).__name__}. "
                            f"{HINT}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _check_labels(labels: np.ndarray, n: int, where: str) -> np.ndarray:
    if labels.shape != (n,):
        raise DataFileError(f"{where}: {labels.shape[0] if labels.ndim else 0} labels for {n} "
                            f"images. {HINT}")
    if n and (labels.min() < 0 or labels.max() > 9):
        raise DataFileError(f"{where}: labels outside 0..9 (found {int(labels.min())}.."
                            f"{int(labels.max())}). {HINT}")
    return labels.astype(np.int64)


def _python_batch(src, name: str, verify: bool) -> tuple[np.ndarray, np.ndarray, bool]:
    where, raw = src.where(name), src.read(name)
    d = _unpickle(raw, where)
    x = d.get("data")
    if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 2
            and x.shape[1] == RECORD_BYTES - 1):
        raise DataFileError(f"{where}: 'data' must be uint8 of shape (N, 3072), found "
                            f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}. "
                            f"{HINT}")
    if "labels" not in d:
        raise DataFileError(f"{where}: no 'labels' entry (keys: {sorted(map(str, d))}). {HINT}")
    try:
        labels = np.asarray(d["labels"], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise DataFileError(f"{where}: 'labels' is not a list of integers ({e}). {HINT}") from e
    y = _check_labels(labels, x.shape[0], where)
    md5 = hashlib.md5(raw).hexdigest()
    matched = md5 == CIFAR10_PY_MD5[name]
    if verify and x.shape[0] == OFFICIAL_BATCH and not matched:
        raise DataFileError(f"{where}: checksum mismatch for an official-size batch: md5 {md5}, "
                            f"expected {CIFAR10_PY_MD5[name]}. The file is corrupt or not the "
                            f"official release. {HINT} (verify=False loads it anyway.)")
    return x.reshape(-1, 3, 32, 32), y, matched


def _binary_batch(src, name: str) -> tuple[np.ndarray, np.ndarray]:
    where, raw = src.where(name), src.read(name)
    if len(raw) % RECORD_BYTES:
        raise DataFileError(f"{where}: size {len(raw):,} bytes is not a multiple of "
                            f"{RECORD_BYTES} (1 label byte + 3,072 pixel bytes per image; an "
                            f"official batch is {OFFICIAL_BATCH * RECORD_BYTES:,} bytes). {HINT}")
    rec = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    y = _check_labels(rec[:, 0].astype(np.int64), rec.shape[0], where)
    return rec[:, 1:].reshape(-1, 3, 32, 32), y


def _classes(src, fmt: str) -> list[str]:
    if fmt == "python" and src.has("batches.meta"):
        names = _unpickle(src.read("batches.meta"), src.where("batches.meta")).get("label_names")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in (names or [])]
    elif fmt == "binary" and src.has("batches.meta.txt"):
        names = [s.strip() for s in src.read("batches.meta.txt").decode().splitlines()
                 if s.strip()]
    else:
        return list(CIFAR10_CLASSES)
    meta = "batches.meta" if fmt == "python" else "batches.meta.txt"
    if len(names) != 10:
        raise DataFileError(f"{src.where(meta)}: expected 10 class names, found {len(names)}. "
                            f"{HINT}")
    return names


def load_cifar10(root=None, verify: bool = True, fmt: str = "auto") -> Dataset:
    """CIFAR-10 from ``root`` (a directory or a .tar.gz); ``fmt`` is "auto", "python" or "binary".

    Returns x uint8 (N, 3, 32, 32) in the files' order (batches 1..5, then the test batch),
    y int64, the 10 class names. ``checksums`` maps each file name to the sha256 of its bytes.
    """
    if fmt not in ("auto", "python", "binary"):
        raise ValueError(f"cifar10: fmt must be 'auto', 'python' or 'binary', received {fmt!r}")
    src = _source(root)
    if fmt == "auto":
        fmt = "python" if src.has("data_batch_1") else "binary"
    suffix = "" if fmt == "python" else ".bin"
    splits, digests, all_matched = {}, {}, fmt == "python"
    for split, names in (("train", TRAIN_BATCHES), ("test", TEST_BATCHES)):
        xs, ys = [], []
        for base in names:
            name = base + suffix
            if not src.has(name):
                raise FileNotFoundError(f"cifar10: missing {src.where(name)} (expected the "
                                        f"{fmt} batch {name}). {HINT}")
            if fmt == "python":
                x, y, matched = _python_batch(src, name, verify)
                all_matched &= matched
            else:
                x, y = _binary_batch(src, name)
            digests[name] = hashlib.sha256(src.read(name)).hexdigest()
            xs.append(x)
            ys.append(y)
        splits[split] = (np.concatenate(xs), np.concatenate(ys))
    for split, (_, y) in splits.items():
        counts = np.bincount(y, minlength=10)
        official_size = 10 * OFFICIAL_PER_CLASS[split]
        if verify and len(y) == official_size and not (counts == OFFICIAL_PER_CLASS[split]).all():
            raise DataFileError(f"cifar10 ({fmt}): {split} class counts {counts.tolist()} differ "
                                f"from the official {OFFICIAL_PER_CLASS[split]:,} per class. "
                                f"{HINT}")
    return Dataset(name="cifar10", x_train=splits["train"][0], y_train=splits["train"][1],
                   x_test=splits["test"][0], y_test=splits["test"][1],
                   classes=_classes(src, fmt), source=f"CIFAR-10 {fmt} files in {root}",
                   checksums=digests, verified=all_matched)
