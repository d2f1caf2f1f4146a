"""The ``Dataset`` record every loader returns, the data-file error, and content keys.

A ``Dataset`` holds uint8 images in NCHW (CONV-1) and int64 labels, both read-only. Its per-channel
``mean``/``std`` are computed exactly from ``x_train`` (integer sums, then one float division), so
they are the same bytes on every machine.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Dataset", "DataFileError", "content_keys", "channel_stats"]


class DataFileError(ValueError):
    """A data file exists but is not what was expected (bad magic, shape, size or checksum).

    The message names the file, what was expected, and how to obtain a good copy.
    """


def channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of ``x / 255``.

    ``x`` is uint8 (N, C, H, W). The sums are exact Python integers, accumulated over chunks of
    ``chunk`` images in uint64 (no float64 copy of the whole array), so the result does not depend
    on summation order. An empty ``x`` gives mean 0 and std 0.
    """
    n, c = x.shape[0], x.shape[1]
    count = n * int(np.prod(x.shape[2:], dtype=np.int64))
    s = [0] * c
    s2 = [0] * c
    for start in range(0, n, chunk):
        block = x[start:start + chunk]
        for ch in range(c):
            plane = block[:, ch]
            s[ch] += int(plane.sum(dtype=np.uint64))
            s2[ch] += int(np.square(plane, dtype=np.uint32).sum(dtype=np.uint64))
    if count == 0:
        return (0.0,) * c, (0.0,) * c
    mean = tuple(si / count / 255.0 for si in s)
    # var * count^2 = count*s2 - s^2, exact in integers.
    std = tuple(float(np.sqrt((count * s2i - si * si) / (count * count))) / 255.0
                for si, s2i in zip(s, s2, strict=True))
    return mean, std


def content_keys(images: np.ndarray) -> np.ndarray:
    """A content key per sample: the first 8 bytes of BLAKE2b over the sample's bytes, as uint64.

    ``images`` is any array whose first axis indexes samples (uint8 (N, C, H, W) for a Dataset).
    Returns uint64 (N,). Passing these as ``keys`` to :func:`refimpl.data.partition` makes the
    partition independent of the dataset's order (DATA-1): identical samples get identical keys
    and are interchangeable.
    """
    a = np.ascontiguousarray(images)
    flat = a.reshape(a.shape[0], -1).view(np.uint8) if a.size else a.reshape(a.shape[0], 0)
    out = np.empty(a.shape[0], dtype=np.uint64)
    for i in range(a.shape[0]):
        out[i] = int.from_bytes(hashlib.blake2b(flat[i].tobytes(), digest_size=8).digest(), "big")
    return out


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class Dataset:
    """An image classification dataset split into train and test (images NCHW, CONV-1).

    Fields:
      name      the registry name it was loaded under (``load_dataset(name)``).
      x_train   uint8 (N, C, H, W), read-only.
      y_train   int64 (N,), values in [0, len(classes)), read-only.
      x_test    uint8 (M, C, H, W), read-only.
      y_test    int64 (M,), read-only.
      classes   class names, index = label.
      source    where the data came from (paths, package), for run records.
      checksums file or array role -> sha256 hex of what it names (see docs/data.md).
      verified  True when every file matched a published or recorded checksum.
      mean, std per-channel statistics of ``x_train / 255`` (float, exact; :func:`channel_stats`).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    source: str = ""
    checksums: dict[str, str] = field(default_factory=dict)
    verified: bool = False
    mean: tuple[float, ...] = field(init=False)
    std: tuple[float, ...] = field(init=False)

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 4):
                raise ValueError(f"Dataset {self.name!r}: x_{split} must be a uint8 array "
                                 f"(N, C, H, W), received {getattr(x, 'dtype', type(x))} "
                                 f"{getattr(x, 'shape', '')}")
            if not (isinstance(y, np.ndarray) and y.dtype == np.int64 and y.shape == x.shape[:1]):
                raise ValueError(f"Dataset {self.name!r}: y_{split} must be int64 of shape "
                                 f"({x.shape[0]},), received {getattr(y, 'dtype', type(y))} "
                                 f"{getattr(y, 'shape', '')}")
            if y.size and (y.min() < 0 or y.max() >= len(self.classes)):
                raise ValueError(f"Dataset {self.name!r}: y_{split} has labels outside "
                                 f"[0, {len(self.classes)}) (classes: {self.classes})")
            _readonly(x)
            _readonly(y)
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"Dataset {self.name!r}: train images {self.x_train.shape[1:]} and "
                             f"test images {self.x_test.shape[1:]} differ in shape")
        object.__setattr__(self, "classes", [str(c) for c in self.classes])
        mean, std = channel_stats(self.x_train)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return tuple(int(v) for v in self.x_train.shape[1:])

    def normalize(self, x: np.ndarray, dtype=np.float32) -> np.ndarray:
        """uint8 (N, C, H, W) -> ``dtype`` (N, C, H, W): ``(x/255 - mean_c) / std_c`` per channel
        with this dataset's training statistics (a channel with std 0 is only centred)."""
        dt = np.dtype(dtype)
        mean = np.asarray(self.mean, dtype=dt).reshape(1, -1, 1, 1)
        std = np.asarray([s if s > 0 else 1.0 for s in self.std], dtype=dt).reshape(1, -1, 1, 1)
        return (x.astype(dt) / dt.type(255) - mean) / std

    def train_keys(self) -> np.ndarray:
        """:func:`content_keys` of ``x_train``: uint64 (N,), for order-independent partitions."""
        return content_keys(self.x_train)

    def summary(self) -> str:
        """One line: name, shapes, classes, verification."""
        return (f"{self.name}: train {self.x_train.shape[0]:,} test {self.x_test.shape[0]:,} "
                f"images {self.image_shape} uint8, {self.num_classes} classes, "
                f"{'verified' if self.verified else 'unverified'} ({self.source})")
