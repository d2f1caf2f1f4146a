"""Input builders for gradient checks: values kept away from ties and kinks (STYLE 6).

Hypothesis draws the *structure* (shapes, seeds); these functions turn a seed into float arrays
whose finite-difference neighbourhood contains no kink (ReLU at 0) and no tie (max-pool).
Invariant tests use raw Hypothesis arrays instead, on purpose.
"""

from __future__ import annotations

import numpy as np


def smooth(rng: np.random.Generator, shape, dtype=np.float64, scale=1.0) -> np.ndarray:
    """Standard normal values."""
    return np.asarray(scale * rng.standard_normal(shape), dtype=dtype)


def away_from_zero(rng: np.random.Generator, shape, dtype=np.float64, margin=0.05) -> np.ndarray:
    """Values with |x| >= margin and random sign, so ReLU has no kink within a small step."""
    mag = margin + rng.random(shape)
    sign = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    return np.asarray(mag * sign, dtype=dtype)


def distinct(rng: np.random.Generator, shape, dtype=np.float64, gap=0.01) -> np.ndarray:
    """All values distinct, pairwise at least ``gap`` apart, and away from zero: no tie in any
    max-pool window and no ReLU kink within a small step."""
    n = int(np.prod(shape))
    vals = (np.arange(n) - n / 2 + 0.5) * gap
    vals = np.where(np.abs(vals) < gap / 4, gap / 2, vals)
    return rng.permutation(vals).reshape(shape).astype(dtype)
