# covers: CONV-1
"""CIFAR-10 loader (issue 5; docs/data.md) on small files written in both real formats (python
pickle batches and the binary records), as directories and as .tar.gz archives: uint8
(N, 3, 32, 32) (CONV-1), int64 labels, and bad files rejected with the promised messages."""

import io
import pickle
import tarfile

import numpy as np
import pytest

from refimpl.data import DataFileError, load_dataset
from refimpl.data import cifar as C

BATCHES = C.TRAIN_BATCHES + C.TEST_BATCHES


def make_data(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return {b: (rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                [int(v) for v in rng.integers(0, 10, n)]) for b in BATCHES}


def py_batch_bytes(x, labels, legacy=False):
    """A batch pickled as the originals (protocol 2, bytes keys); ``legacy`` names NumPy's
    array reconstructor as NumPy 1.x did (numpy.core.multiarray), as the real files do."""
    obj = {b"batch_label": b"test", b"labels": labels, b"data": x,
           b"filenames": [b"f%d.png" % i for i in range(len(labels))]}
    data = pickle.dumps(obj, protocol=2)
    if legacy:
        assert b"numpy._core.multiarray" in data
        data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    return data


def write_python(root, data, legacy=True, names=None):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for b, (x, y) in data.items():
        (d / b).write_bytes(py_batch_bytes(x, y, legacy))
    meta = {b"label_names": [n.encode() for n in (names or C.CIFAR10_CLASSES)],
            b"num_cases_per_batch": 12, b"num_vis": 3072}
    (d / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return d


def write_binary(root, data):
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    for b, (x, y) in data.items():
        rec = np.concatenate([np.asarray(y, np.uint8)[:, None], x], axis=1)
        (d / f"{b}.bin").write_bytes(rec.tobytes())
    (d / "batches.meta.txt").write_text("\n".join(C.CIFAR10_CLASSES) + "\n\n")
    return d


def expected(data):
    xs = {s: np.concatenate([data[b][0] for b in bs]).reshape(-1, 3, 32, 32)
          for s, bs in (("train", C.TRAIN_BATCHES), ("test", C.TEST_BATCHES))}
    ys = {s: np.concatenate([data[b][1] for b in bs]).astype(np.int64)
          for s, bs in (("train", C.TRAIN_BATCHES), ("test", C.TEST_BATCHES))}
    return xs, ys


def check(ds, data):
    xs, ys = expected(data)
    assert ds.x_train.dtype == np.uint8 and ds.x_train.shape == (60, 3, 32, 32)
    assert ds.y_train.dtype == np.int64 and ds.x_test.shape == (12, 3, 32, 32)
    assert np.array_equal(ds.x_train, xs["train"]) and np.array_equal(ds.y_train, ys["train"])
    assert np.array_equal(ds.x_test, xs["test"]) and np.array_equal(ds.y_test, ys["test"])
    # CHW: channel 0 of the first image is the first 1,024 values (red plane), row-major.
    first = data["data_batch_1"][0][0]
    assert np.array_equal(ds.x_train[0, 0], first[:1024].reshape(32, 32))
    assert np.array_equal(ds.x_train[0, 2, 31], first[-32:])
    assert ds.classes == C.CIFAR10_CLASSES and not ds.verified


@pytest.mark.parametrize("legacy", [True, False])
def test_python_batches_from_directory(tmp_path, legacy):
    data = make_data()
    write_python(tmp_path, data, legacy=legacy)
    check(load_dataset("cifar10", root=tmp_path), data)
    check(load_dataset("cifar10", root=tmp_path / "cifar-10-batches-py"), data)


def test_binary_batches_equal_python_batches(tmp_path):
    data = make_data()
    write_binary(tmp_path, data)
    check(load_dataset("cifar10", root=tmp_path), data)
    ds = load_dataset("cifar10", root=tmp_path, fmt="binary")
    assert "binary" in ds.source


@pytest.mark.parametrize("kind", ["python", "binary"])
def test_tar_gz_archives_read_in_place(tmp_path, kind):
    data = make_data()
    src = (write_python if kind == "python" else write_binary)(tmp_path / "src", data)
    archive = tmp_path / f"cifar-10-{kind}.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src, arcname=src.name)
    check(load_dataset("cifar10", root=archive), data)
    holder = tmp_path / "holder"
    holder.mkdir()
    archive.rename(holder / archive.name)
    check(load_dataset("cifar10", root=holder), data)


def _expect(exc, path, *needles, **kw):
    with pytest.raises(exc) as e:
        load_dataset("cifar10", **kw)
    msg = str(e.value)
    assert str(path) in msg, msg
    for s in needles + ("cifar.html",):
        assert s in msg, msg


def test_missing_root_or_batch(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar.html"):
        load_dataset("cifar10")
    _expect(FileNotFoundError, tmp_path, "looked for", root=tmp_path)
    d = write_python(tmp_path, make_data())
    (d / "data_batch_4").unlink()
    _expect(FileNotFoundError, d / "data_batch_4", "python batch", root=tmp_path)


def test_hostile_pickle_is_refused_without_running_it(tmp_path):
    d = write_python(tmp_path, make_data())
    marker = tmp_path / "ran"
    payload = pickle.dumps({b"data": _Boom(str(marker))}, protocol=2)
    (d / "data_batch_3").write_bytes(payload)
    _expect(DataFileError, d / "data_batch_3", "refusing to load global", root=tmp_path)
    assert not marker.exists()


class _Boom:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("damage, needle", [
    ("not_pickle", "not a CIFAR-10 python batch"),
    ("wrong_shape", "'data' must be uint8 of shape (N, 3072)"),
    ("bad_label", "labels outside 0..9"),
    ("few_labels", "11 labels for 12 images"),
    ("no_labels", "no 'labels' entry"),
])
def test_bad_python_batches(tmp_path, damage, needle):
    data = make_data()
    d = write_python(tmp_path, data)
    x, y = data["data_batch_2"]
    if damage == "not_pickle":
        blob = b"\x00garbage"
    elif damage == "wrong_shape":
        blob = py_batch_bytes(x[:, :3000].copy(), y)
    elif damage == "bad_label":
        blob = py_batch_bytes(x, y[:-1] + [10])
    elif damage == "few_labels":
        blob = py_batch_bytes(x, y[:-1])
    else:
        blob = pickle.dumps({b"data": x}, protocol=2)
    (d / "data_batch_2").write_bytes(blob)
    _expect(DataFileError, d / "data_batch_2", needle, root=tmp_path)


def test_official_size_batch_must_match_the_official_md5(tmp_path):
    data = make_data()
    d = write_python(tmp_path, data)
    rng = np.random.default_rng(1)
    big = rng.integers(0, 256, (10000, 3072), dtype=np.uint8)
    (d / "data_batch_1").write_bytes(py_batch_bytes(big, [int(v) for v in
                                                          rng.integers(0, 10, 10000)]))
    _expect(DataFileError, d / "data_batch_1", "checksum mismatch",
            C.CIFAR10_PY_MD5["data_batch_1"], "verify=False", root=tmp_path)
    assert load_dataset("cifar10", root=tmp_path, verify=False).x_train.shape[0] == 10048


@pytest.mark.parametrize("damage, needle", [
    ("odd_size", "not a multiple of 3073"),
    ("bad_label", "labels outside 0..9"),
])
def test_bad_binary_batches(tmp_path, damage, needle):
    data = make_data()
    d = write_binary(tmp_path, data)
    f = d / "test_batch.bin"
    raw = bytearray(f.read_bytes())
    if damage == "odd_size":
        raw = raw[:-5]
    else:
        raw[3073] = 10  # label byte of the second record
    f.write_bytes(bytes(raw))
    _expect(DataFileError, f, needle, root=tmp_path)


def test_class_names_from_meta_files(tmp_path):
    names = [f"n{i}" for i in range(10)]
    write_python(tmp_path, make_data(), names=names)
    assert load_dataset("cifar10", root=tmp_path).classes == names
    d = tmp_path / "cifar-10-batches-py"
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a", b"b"]}, protocol=2))
    _expect(DataFileError, d / "batches.meta", "expected 10 class names", root=tmp_path)
    with pytest.raises(ValueError, match="fmt must be"):
        load_dataset("cifar10", root=tmp_path, fmt="png")


def test_pickles_with_str_keys_load_too(tmp_path):
    """A batch re-pickled under Python 3 (str keys, protocol 4) is read the same way."""
    data = make_data()
    d = write_python(tmp_path, data)
    x, y = data["test_batch"]
    buf = io.BytesIO()
    pickle.dump({"data": x, "labels": y}, buf, protocol=4)
    (d / "test_batch").write_bytes(buf.getvalue())
    check(load_dataset("cifar10", root=tmp_path), data)
