"""Reading the authors' fixtures (spec_tests/fixtures/authors, see its README.md and
PROVENANCE.md) and comparing the project's outputs with them.

Comparisons follow the issue that introduced them: integers and index sets exactly, index sets
the README marks *tie-dependent* as sets (the part above the tie exactly, the tied part by its
size and tie value), floats by ``max_rel_err`` within ``tolerances.AUTHORS`` of the dtype, NaN
exactly where theirs is NaN. Every comparison records its error in :data:`MEASURED` (fixture ->
what was compared -> relative error; 0 for exact comparisons), which a reader can print to see
how close the switches come.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .tolerances import AUTHORS, max_rel_err

DIR = Path(__file__).resolve().parent / "fixtures" / "authors"

#: fixture file -> what was compared -> relative error measured in this process
MEASURED: dict[str, dict[str, float]] = {}


def load(name: str):
    """The arrays of ``DIR/name`` (never pickles)."""
    with np.load(DIR / name, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def cases(z: dict) -> list[tuple[str, dict]]:
    """[(case name, {array name: array})] of a file with ``case_names`` (README "Conventions")."""
    out = []
    for i, name in enumerate(z["case_names"]):
        prefix = f"c{i:02d}_"
        out.append((str(name), {k[len(prefix):]: v for k, v in z.items()
                                if k.startswith(prefix)}))
    return out


def _note(fixture: str, what: str, err: float) -> float:
    MEASURED.setdefault(fixture, {})[what] = err
    return err


def close(fixture: str, what: str, ours, theirs, dtype=None) -> float:
    """Assert ``ours`` equals ``theirs`` within the tolerance of ``dtype`` (default: theirs'
    dtype; a float32 case whose scalars were stored as float64 passes float32), NaN exactly
    where theirs is NaN; return the relative error."""
    theirs = np.asarray(theirs)
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape, f"{fixture} {what}: shape {ours.shape} != {theirs.shape}"
    nan = np.isnan(theirs)
    assert np.array_equal(np.isnan(ours), nan), f"{fixture} {what}: NaN positions differ"
    err = max_rel_err(ours[~nan], theirs[~nan]) if (~nan).any() else 0.0
    if dtype is None:
        dtype = theirs.dtype if theirs.dtype.kind == "f" else np.float64
    rtol = AUTHORS[np.dtype(dtype)]
    assert err <= rtol, f"{fixture} {what}: relative error {err:.3g} > {rtol:g}"
    return _note(fixture, what, err)


def equal(fixture: str, what: str, ours, theirs) -> None:
    """Integers, counts, index sets: exactly equal."""
    assert np.array_equal(np.asarray(ours), np.asarray(theirs)), \
        f"{fixture} {what}: {np.asarray(ours)} != {np.asarray(theirs)}"
    _note(fixture, what, 0.0)


def same_set_up_to_ties(fixture: str, what: str, ours, theirs, scores, largest: bool) -> None:
    """Two selections of k indices by ``scores`` (k largest or k smallest) that may break ties
    differently: equal sizes, equal where the score is strictly beyond the k-th score, and the
    rest all at the k-th score (so the selected score multisets are equal)."""
    ours, theirs = np.sort(np.asarray(ours)), np.sort(np.asarray(theirs))
    s = np.asarray(scores).reshape(-1)
    assert ours.size == theirs.size, f"{fixture} {what}: {ours.size} != {theirs.size} entries"
    if ours.size == 0:
        return
    edge = s[theirs].min() if largest else s[theirs].max()
    beyond = (lambda i: s[i] > edge) if largest else (lambda i: s[i] < edge)
    equal(fixture, f"{what} (beyond the tie)", ours[beyond(ours)], theirs[beyond(theirs)])
    assert np.all(s[ours[~beyond(ours)]] == edge), f"{fixture} {what}: tied part differs"
