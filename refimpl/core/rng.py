"""Named random streams (SPEC RNG-1).

Every random draw in refimpl comes from

    numpy.random.Generator(PCG64(SeedSequence(seed, spawn_key=(purpose, round, client, extra))))

with a fixed integer code per purpose. There is no global random state anywhere: a function
that draws takes a ``Generator`` argument, and the caller builds it with :func:`stream`. Two
draws with the same (seed, purpose, round, client, extra) are identical; changing any part
gives an independent stream. Because a stream depends only on these integers (not on how many
draws happened before), a run resumed from a checkpoint draws exactly what an uninterrupted run
draws.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

__all__ = ["Purpose", "stream", "seed_sequence"]


class Purpose(IntEnum):
    """Fixed purpose codes (part of the on-disk contract: never renumber)."""

    PARTITION = 1
    MODEL_INIT = 2
    MASK_INIT = 3
    SAMPLE = 4
    SHUFFLE = 5
    GROW = 6
    EVAL = 7
    DATA_SYNTH = 8
    CONFORMANCE = 9


def _check(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 0:
        raise ValueError(f"rng stream: {name} must be a non-negative int, received {v!r}")
    return int(v)


def seed_sequence(seed: int, purpose: Purpose, round: int = 0, client: int = 0,
                  extra: int = 0) -> np.random.SeedSequence:
    """The SeedSequence of RNG-1 for one (purpose, round, client, extra)."""
    key = (int(Purpose(purpose)), _check("round", round), _check("client", client),
           _check("extra", extra))
    return np.random.SeedSequence(_check("seed", seed), spawn_key=key)


def stream(seed: int, purpose: Purpose, round: int = 0, client: int = 0,
           extra: int = 0) -> np.random.Generator:
    """A fresh generator for one purpose (RNG-1). ``round`` is t (1..R, 0 outside rounds),
    ``client`` the client id, ``extra`` a further index (layer, epoch, ...)."""
    return np.random.Generator(np.random.PCG64(seed_sequence(seed, purpose, round, client,
                                                             extra)))
