"""The data of a run: dataset, input normalisation and the client partition (DATA-1, DATA-2).

Images stay uint8 in memory; each mini-batch is converted on the fly
``x = (u8 / 255 − mean_c) / std_c`` in the run's dtype, with the exact per-channel statistics of
the whole training set (``Dataset.mean``/``std``; a fixed preprocessing choice, see
docs/federated.md). The partition uses content keys, so it does not depend on the dataset's order
(DATA-1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import Config

__all__ = ["FedData", "load_fed_data"]


@dataclass(frozen=True)
class FedData:
    """Training and test arrays, per-channel normalisation and the client partition.

    ``parts[k]``: sorted int64 indices into ``x_train`` of client k's examples.
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

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

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
    """Load ``data.dataset``, partition its training labels over ``data.num_clients`` clients
    (DATA-1, stream PARTITION via ``run.seed``) and build the partition report (DATA-2)."""
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
    if d.num_clients > len(ds.y_train):
        raise ValueError(f"data.num_clients = {d.num_clients} exceeds the {len(ds.y_train)} "
                         f"training examples of {d.dataset!r}")
    parts, info = data_tools.partition_with_info(
        ds.y_train, d.num_clients, method=d.partition, alpha=d.dirichlet_alpha,
        classes_per_client=d.classes_per_client, min_size=d.min_client_size, seed=cfg.run.seed,
        keys=ds.train_keys(), num_classes=len(ds.classes))
    parts = [np.asarray(p, dtype=np.int64) for p in parts]
    empty = [k for k, p in enumerate(parts) if p.size == 0]
    if empty:
        raise ValueError(f"the partition left client(s) {empty[:10]} without data; lower "
                         f"data.num_clients or raise data.dirichlet_alpha")
    report = data_tools.partition_report(ds.y_train, parts, len(ds.classes), info)
    mean, std = _channel_stats(ds, np.dtype(cfg.run.dtype))
    return FedData(d.dataset, ds.x_train, np.asarray(ds.y_train, dtype=np.int64), ds.x_test,
                   np.asarray(ds.y_test, dtype=np.int64), list(ds.classes), parts, mean, std,
                   report)
