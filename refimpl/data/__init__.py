"""Datasets and client partitions for the FedMef reference implementation (SPEC §10).

- :func:`load_dataset` (names: fashion-mnist, fashion-mnist-bundled, mnist, mnist-pureml,
  cifar10, digits, synthetic) returns a :class:`Dataset`: uint8 NCHW images, int64 labels.
- :func:`partition` (iid, dirichlet, pathological; DATA-1) returns per-client sorted int64 index
  arrays; :func:`partition_report` / :func:`format_report` / :func:`save_heatmap` record them
  (DATA-2).

The whole package imports with NumPy alone; matplotlib, numcodecs and scikit-learn are used
only by the functions that need them. See docs/data.md.
"""

from .dataset import DataFileError, Dataset, channel_stats, content_keys
from .loaders import DATASETS, load_dataset
from .partitioners import (
    METHODS,
    PartitionInfo,
    partition,
    partition_with_info,
    validation_split,
)
from .report import format_report, partition_hash, partition_report, save_heatmap

__all__ = ["Dataset", "DataFileError", "DATASETS", "METHODS", "PartitionInfo", "channel_stats",
           "content_keys", "format_report", "load_dataset", "partition", "partition_hash",
           "partition_report", "partition_with_info", "save_heatmap", "validation_split"]
