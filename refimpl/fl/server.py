"""The server's side of a round: sampling (FL-1), FedAvg aggregation (AGG-1), averaging of the
uploaded growth scores (PG-5), prune-and-grow (PG-1..PG-7) and the communication ledger (MEM-4).
"""

from __future__ import annotations

import math

import numpy as np

from ..core.rng import Purpose, stream
from ..sap import index_dtype
from ..sparsity import adjust
from .client import ClientUpdate

__all__ = ["sample_clients", "aggregate", "average_growth", "prune_and_grow",
           "bytes_down", "bytes_up"]


def sample_clients(seed: int, t: int, num_clients: int, per_round: int) -> np.ndarray:
    """FL-1: C of K clients uniformly without replacement from stream SAMPLE (round t),
    sorted ascending (int64)."""
    rng = stream(seed, Purpose.SAMPLE, t)
    return np.sort(rng.choice(num_clients, size=per_round, replace=False)).astype(np.int64)


def _weights(updates: list[ClientUpdate]) -> list[tuple[ClientUpdate, float]]:
    """Updates in ascending client id with their weights n_k / Σn (float64)."""
    ordered = sorted(updates, key=lambda u: u.client)
    ids = [u.client for u in ordered]
    if len(set(ids)) != len(ids):
        raise ValueError(f"aggregate: duplicate client ids in {ids}")
    total = float(sum(u.n for u in ordered))
    return [(u, u.n / total) for u in ordered]


def aggregate(updates: list[ClientUpdate], masks: dict | None) -> tuple[dict, dict]:
    """AGG-1: θ ← Σ_k (n_k/Σn)·θ_k for every parameter and buffer (BatchNorm running
    statistics), accumulated in float64 in ascending client id whatever the order of
    ``updates``, cast back to each tensor's dtype; then θ ← θ ⊙ M. Returns (params, buffers)."""
    if not updates:
        raise ValueError("aggregate: no client updates")
    weighted = _weights(updates)
    out = []
    for attr in ("params", "buffers"):
        first = getattr(weighted[0][0], attr)
        acc = {name: np.zeros(a.shape, dtype=np.float64) for name, a in first.items()}
        for u, w in weighted:
            tensors = getattr(u, attr)
            if tensors.keys() != acc.keys():
                raise ValueError(f"aggregate: client {u.client} uploaded {attr} "
                                 f"{sorted(tensors)}, expected {sorted(acc)}")
            for name, a in tensors.items():
                acc[name] += w * a.astype(np.float64)
        res = {name: acc[name].astype(first[name].dtype) for name in acc}
        out.append(res)
    params, buffers = out
    if masks is not None:
        for name, m in masks.items():
            params[name] *= m
    return params, buffers


def average_growth(updates: list[ClientUpdate], shapes: list[tuple]) -> list[np.ndarray]:
    """PG-5 on the server: ḡ_l = Σ_k (n_k/Σn)·scatter(pairs_k,l), missing entries 0, float64,
    accumulated in ascending client id."""
    scores = [np.zeros(math.prod(sh), dtype=np.float64) for sh in shapes]
    for u, w in _weights(updates):
        if u.growth is None:
            raise ValueError(f"average_growth: client {u.client} uploaded no growth scores")
        for s, (idx, val) in zip(scores, u.growth, strict=True):
            s[idx] += w * val.astype(np.float64)
    return [s.reshape(sh) for s, sh in zip(scores, shapes, strict=True)]


def prune_and_grow(params: dict, masks: dict, prunable: list[str], scores: list[np.ndarray],
                   alpha_t: float, prune: str, marked: list | None,
                   grow_alpha: float | None = None):
    """PG-3..PG-7 through :func:`refimpl.sparsity.adjust`: per layer prune k_l, grow k_l of the
    positions inactive before pruning, zero the grown weights; every layer keeps its nnz
    (unless ``grow_alpha`` sets a separate grow rate: compat count drift, docs/DEVIATIONS.md).
    Returns new (params, masks, report); the inputs are not modified."""
    weights = [params[n] for n in prunable]
    mask_list = [masks[n] for n in prunable]
    new_w, new_m, report = adjust(weights, mask_list, scores, alpha_t, prune=prune,
                                  marked=marked, grow_alpha=grow_alpha)
    for name, m, old in zip(prunable, new_m, mask_list, strict=True):
        if grow_alpha is None and int(m.sum()) != int(old.sum()):  # PG-7, guarded
            raise AssertionError(f"prune_and_grow: {name} changed nnz {int(old.sum())} -> "
                                 f"{int(m.sum())}")
    new_params = dict(params)
    new_params.update(zip(prunable, new_w, strict=True))
    return new_params, dict(zip(prunable, new_m, strict=True)), report


def _model_bytes(params: dict, buffers: dict, masks: dict | None) -> int:
    """Nonzero values of masked tensors (one value per active entry) plus every dense tensor."""
    total = 0
    for name, a in params.items():
        if masks is not None and name in masks:
            total += int(masks[name].sum()) * a.itemsize
        else:
            total += a.nbytes
    return total + sum(b.nbytes for b in buffers.values())


def bytes_down(params: dict, buffers: dict, masks: dict | None, send_mask: bool) -> int:
    """MEM-4 download of one client: nonzero values, dense tensors, and the mask bitmaps
    (ceil(N_l/8) bytes per layer) when the client does not hold the current mask."""
    total = _model_bytes(params, buffers, masks)
    if masks is not None and send_mask:
        total += sum(math.ceil(m.size / 8) for m in masks.values())
    return total


def bytes_up(update: ClientUpdate, masks: dict | None, shapes: dict) -> int:
    """MEM-4 upload of one client: nonzero values and dense tensors (the client never changes
    the mask, so no bitmap), plus per layer k_l (index, value) growth pairs in an adjustment
    round."""
    total = _model_bytes(update.params, update.buffers, masks)
    if update.growth is not None:
        for shape, (idx, val) in zip(shapes.values(), update.growth, strict=True):
            total += idx.size * index_dtype(math.prod(shape)).itemsize + val.nbytes
    return total
