"""The data of a run: dataset, input normalisation and the client partition (DATA-1, DATA-2).

Images stay uint8 in memory; each mini-batch is converted on the fly
``x = (u8 / 255 − mean_c) / std_c`` in the run's dtype, with the exact per-channel statistics of
the whole training set (``Dataset.mean``/``std``; a fixed preprocessing choice, see
docs/federated.md). The partition uses content keys, so it does not depend on the dataset's order
(DATA-1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .config import Config

__all__ = ["FedData", "load_fed_data"]


@dataclass(frozen=True)
class FedData:
    """Training and test arrays, per-channel normalisation and the client partition.

    ``parts[k]``: sorted int64 indices into ``x_train`` of client k's examples.
    ``val_idx``: sorted int64 indices into ``x_train`` of the validation split
    (``data.validation``; empty without one), disjoint from every client's examples.
    """

    name: str
    x_train: np.ndarray  # uint8 (N, C, H, W)
    y_train: np.ndarray  # int64 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list
    parts: list
    mean: np.ndarray  # (1, C, 1, 1) in the run's dtype
    std: np.ndarray
    report: dict
    val_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 images, int64 labels) of the ``test`` set or the ``validation`` split."""
        if name == "test":
            return self.x_test, self.y_test
        if name == "validation":
            if self.val_idx.size == 0:
                raise ValueError("this run holds out no validation split (data.validation = 0)")
            return self.x_train[self.val_idx], self.y_train[self.val_idx]
        raise ValueError(f"unknown split {name!r}; valid: 'test', 'validation'")

    def batch(self, images: np.ndarray) -> np.ndarray:
        """uint8 images -> normalised float batch of the run's dtype."""
        x = images.astype(self.mean.dtype) / self.mean.dtype.type(255.0)
        return (x - self.mean) / self.std


def _channel_stats(ds, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(1, C, 1, 1) mean and std in ``dtype``, as ``Dataset.normalize`` uses them (a channel
    with std 0 is only centred)."""
    mean = np.asarray(ds.mean, dtype=dtype).reshape(1, -1, 1, 1)
    std = np.asarray([s if s > 0 else 1.0 for s in ds.std], dtype=dtype).reshape(1, -1, 1, 1)
    return mean, std


def load_fed_data(cfg: Config) -> FedData:
    """Load ``data.dataset``, hold out the ``data.validation`` split
    (:func:`refimpl.data.validation_split`), partition the remaining training labels over
    ``data.num_clients`` clients (DATA-1, stream PARTITION via ``run.seed``) and build the
    partition report (DATA-2; of the remaining examples, with the split's size and classes)."""
    from .. import data as data_tools

    d = cfg.data
    kw = {}
    if d.dataset == "synthetic":
        kw = dict(n_train=d.synthetic_train, n_test=d.synthetic_test,
                  num_classes=d.synthetic_classes, shape=tuple(d.synthetic_shape),
                  seed=cfg.run.seed)
    ds = data_tools.load_dataset(d.dataset, root=d.root or None, **kw)
    if ds.x_train.ndim != 4 or ds.x_train.dtype != np.uint8:
        raise ValueError(f"dataset {d.dataset!r}: expected uint8 images (N, C, H, W), received "
                         f"{ds.x_train.dtype} {ds.x_train.shape}")
    keys = ds.train_keys()
    y_all = np.asarray(ds.y_train, dtype=np.int64)
    rest, held = data_tools.validation_split(y_all, d.validation, keys, len(ds.classes))
    if d.num_clients > len(rest):
        raise ValueError(f"data.num_clients = {d.num_clients} exceeds the {len(rest)} "
                         f"training examples of {d.dataset!r}"
                         + (f" left after the validation split ({held.size} held out)"
                            if held.size else ""))
    parts, info = data_tools.partition_with_info(
        y_all[rest], d.num_clients, method=d.partition, alpha=d.dirichlet_alpha,
        classes_per_client=d.classes_per_client, min_size=d.min_client_size, seed=cfg.run.seed,
        keys=keys[rest], num_classes=len(ds.classes))
    parts = [np.asarray(p, dtype=np.int64) for p in parts]
    empty = [k for k, p in enumerate(parts) if p.size == 0]
    if empty:
        raise ValueError(f"the partition left client(s) {empty[:10]} without data; lower "
                         f"data.num_clients or raise data.dirichlet_alpha")
    report = data_tools.partition_report(y_all[rest], parts, len(ds.classes), info)
    if held.size:  # the report describes the clients' data; the split is named beside it
        report["validation"] = {"fraction": d.validation, "size": int(held.size),
                                "histogram": np.bincount(y_all[held],
                                                         minlength=len(ds.classes)).tolist()}
        parts = [rest[p] for p in parts]  # indices into x_train
    mean, std = _channel_stats(ds, np.dtype(cfg.run.dtype))
    return FedData(d.dataset, ds.x_train, y_all, ds.x_test,
                   np.asarray(ds.y_test, dtype=np.int64), list(ds.classes), parts, mean, std,
                   report, held)
