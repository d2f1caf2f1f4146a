"""Small datasets for tests and quick runs: scikit-learn's 8x8 digits (when scikit-learn is
installed; it is not a dependency) and a seeded synthetic class-conditional set (RNG-1)."""

from __future__ import annotations

import numpy as np

from ..core.rng import Purpose, stream
from .dataset import Dataset

__all__ = ["load_digits", "make_synthetic", "DIGITS_TEST_EVERY"]

#: digits: sample i goes to the test split when i % DIGITS_TEST_EVERY == DIGITS_TEST_EVERY - 1.
DIGITS_TEST_EVERY = 6

#: ``extra`` codes of the DATA_SYNTH streams used by :func:`make_synthetic`.
_SYNTH_PROTOTYPES, _SYNTH_TRAIN, _SYNTH_TEST = 0, 1, 2


def load_digits(root=None) -> Dataset:
    """scikit-learn's 8x8 digits (1,797 images, shipped inside scikit-learn; no download).

    Pixel values 0..16 become uint8 ``rint(v * 255 / 16)``; x (N, 1, 8, 8). Split without
    randomness: sample i is a test sample when i % 6 == 5 (1,498 train, 299 test). ``root`` is
    not used (accepted so every loader has the same signature).
    """
    if root is not None:
        raise ValueError("digits: takes no root (the data ship inside scikit-learn)")
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ModuleNotFoundError as e:
        if e.name not in ("sklearn", "sklearn.datasets"):
            raise  # scikit-learn is there but one of its own dependencies is missing
        raise ModuleNotFoundError("dataset 'digits' needs scikit-learn, which is not a "
                                  "dependency: `pip install scikit-learn`.",
                                  name="sklearn") from e
    bunch = sk_load_digits()
    images = np.asarray(bunch.images, dtype=np.float64)
    x = np.rint(images * 255.0 / 16.0).astype(np.uint8)[:, None]
    y = np.asarray(bunch.target, dtype=np.int64)
    test = np.arange(len(y)) % DIGITS_TEST_EVERY == DIGITS_TEST_EVERY - 1
    return Dataset(name="digits", x_train=x[~test].copy(), y_train=y[~test].copy(),
                   x_test=x[test].copy(), y_test=y[test].copy(),
                   classes=[str(d) for d in range(10)], source="sklearn.datasets.load_digits")


def _draw(n: int, prototypes: np.ndarray, noise: float, rng: np.random.Generator):
    k = prototypes.shape[0]
    y = rng.permutation(np.arange(n, dtype=np.int64) % k)
    z = rng.standard_normal((n,) + prototypes.shape[1:])
    x = np.clip(np.rint(prototypes[y] + noise * z), 0, 255).astype(np.uint8)
    return x, y


def make_synthetic(root=None, n_train: int = 600, n_test: int = 100, num_classes: int = 10,
                   shape=(1, 28, 28), seed: int = 0, noise: float = 48.0) -> Dataset:
    """A class-conditional set: class c has a prototype image with uniform pixels in [0, 255];
    a sample is ``clip(rint(prototype + noise * N(0, 1)))`` as uint8 (N, *shape). Labels are
    balanced (i % num_classes, then shuffled). Streams (RNG-1): purpose DATA_SYNTH with
    extra 0 (prototypes), 1 (train), 2 (test); same arguments, same bytes."""
    if root is not None:
        raise ValueError("synthetic: takes no root (the data are generated)")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"synthetic: shape must be (C, H, W) with positive sizes, received "
                         f"{shape}")
    if num_classes < 1 or n_train < 0 or n_test < 0:
        raise ValueError(f"synthetic: need num_classes >= 1 and non-negative sizes, received "
                         f"num_classes={num_classes}, n_train={n_train}, n_test={n_test}")
    if not (noise >= 0 and np.isfinite(noise)):
        raise ValueError(f"synthetic: noise must be finite and >= 0, received {noise}")
    protos = stream(seed, Purpose.DATA_SYNTH, extra=_SYNTH_PROTOTYPES).integers(
        0, 256, size=(num_classes,) + shape).astype(np.float64)
    x_train, y_train = _draw(n_train, protos, noise,
                             stream(seed, Purpose.DATA_SYNTH, extra=_SYNTH_TRAIN))
    x_test, y_test = _draw(n_test, protos, noise,
                           stream(seed, Purpose.DATA_SYNTH, extra=_SYNTH_TEST))
    return Dataset(name="synthetic", x_train=x_train, y_train=y_train, x_test=x_test,
                   y_test=y_test, classes=[f"class {c}" for c in range(num_classes)],
                   source=f"make_synthetic(seed={seed}, shape={shape}, noise={noise})")
