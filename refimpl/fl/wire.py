"""A round's messages as named arrays (SPEC MEM-4): what a client downloads and uploads when its
update is computed in another process or on another machine (the Flower engine,
:mod:`refimpl.fl.flower`). No transport here: a :class:`Packet` is a dict of NumPy arrays (the
payload) and a dict of scalars (the header); the adapter turns them into its own records.

The payload is exactly what the communication ledger counts (:func:`refimpl.fl.server.bytes_down`,
:func:`~refimpl.fl.server.bytes_up`): :func:`payload_nbytes` of a download equals ``bytes_down``
of that client and of an upload ``bytes_up`` (``spec_tests/test_flower.py`` checks both for
every method). Arrays, with ``<name>`` a parameter or buffer name of the model:

=====================  ===================================================================
``value/<name>``       (nnz,) the active values of a masked weight in C order (``w[mask]``)
``param/<name>``       a parameter without a mask, whole
``buffer/<name>``      a buffer (BatchNorm running statistics), whole
``mask/<name>``        (ceil(N/8),) uint8, ``numpy.packbits`` of the flat mask (big-endian bit
                       order): downloads only, when the client does not hold the current mask
``grow_index/<name>``  (k_l,) uploads of an adjustment round: PG-5 flat indices, the narrowest
                       unsigned type that holds N − 1 (:func:`refimpl.sap.index_dtype`)
``grow_value/<name>``  (k_l,) their scores, in the model's dtype
=====================  ===================================================================

Header of a download: ``round``, ``client``, ``mask_version``, ``mask_sha256`` (of the packed
masks) and ``plan_sha256``; of an upload: ``client``, ``n``, ``loss``, ``iterations``,
``activation_bytes``, ``max_lr`` (Python scalars: a float travels as a float64, exactly).

A client rebuilds the global model with zeros off the mask and recomputes the round's plan
from it (:func:`refimpl.fl.engine.round_plan`: η_t, the BAE-1 marked set, the PG-3 counts), so
the marked set costs no bytes; ``plan_sha256`` checks that it computed the server's plan. The
server rebuilds each update the same way. Zeros off the mask are +0.0 where the server may hold
−0.0 (a weight pruned or masked while negative); FedAvg accumulates from +0.0 in float64
(AGG-1), so the aggregate and everything the server keeps are the same bytes either way.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from .. import models
from ..sap import index_dtype
from .client import ClientUpdate, LocalClients, RoundPlan, RoundTask
from .config import Config
from .data import FedData
from .engine import round_plan

__all__ = ["Packet", "WireError", "encode_download", "decode_download", "encode_upload",
           "decode_upload", "client_round", "payload_nbytes", "masks_sha256", "plan_sha256",
           "unpack_masks"]



class WireError(ValueError):
    """A message does not fit the round or the model; the message says which array or field
    and what was expected."""


@dataclass(frozen=True)
class Packet:
    """One message: ``arrays`` (the payload, name -> array) and ``header`` (name -> int, float
    or str)."""

    arrays: dict
    header: dict


def payload_nbytes(arrays: dict) -> int:
    """Bytes of the numbers a message carries (the ledger's unit, MEM-4)."""
    return int(sum(np.asarray(a).nbytes for a in arrays.values()))


def masks_sha256(masks: dict | None) -> str:
    """SHA-256 of the packed masks (in the dict's order; empty string for a dense run)."""
    if masks is None:
        return ""
    h = hashlib.sha256()
    for name, m in masks.items():
        h.update(name.encode("utf-8") + b"\0")
        h.update(np.packbits(np.asarray(m, dtype=bool).reshape(-1)).tobytes())
    return h.hexdigest()


def plan_sha256(plan: RoundPlan) -> str:
    """SHA-256 of what a RoundPlan tells a client: t, η_t (exact), the marked set, k_l."""
    h = hashlib.sha256(f"{plan.t};{float(plan.lr).hex()};".encode())
    if plan.marked is not None:
        for idx in plan.marked:
            h.update(b"marked;" + np.ascontiguousarray(idx, dtype=np.int64).tobytes())
    if plan.grow_counts is not None:
        h.update(("grow;" + ",".join(str(int(k)) for k in plan.grow_counts)).encode())
    return h.hexdigest()


def _model_arrays(params: dict, buffers: dict, masks: dict | None) -> dict:
    out = {}
    for name, a in params.items():
        if masks is not None and name in masks:
            out[f"value/{name}"] = np.ascontiguousarray(a[masks[name]])
        else:
            out[f"param/{name}"] = np.ascontiguousarray(a)
    out.update({f"buffer/{name}": np.ascontiguousarray(b) for name, b in buffers.items()})
    return out


def encode_download(task: RoundTask, client: int, with_masks: bool) -> Packet:
    """The download of ``client`` in ``task``: the global model's nonzero values and dense
    tensors, and the mask bitmaps when ``with_masks`` (``task.send_mask`` says when the ledger
    counts them; a transport may resend them to a node that lost them)."""
    if client not in task.clients:
        raise WireError(f"round {task.t}: client {client} is not sampled ({list(task.clients)})")
    arrays = _model_arrays(task.params, task.buffers, task.masks)
    if with_masks and task.masks is not None:
        arrays.update({f"mask/{name}": np.packbits(m.reshape(-1))
                       for name, m in task.masks.items()})
    header = {"round": task.t, "client": int(client), "mask_version": int(task.mask_version),
              "mask_sha256": masks_sha256(task.masks), "plan_sha256": plan_sha256(task.plan)}
    return Packet(arrays, header)


def _take(arrays: dict, key: str, shape: tuple, dtype, what: str) -> np.ndarray:
    if key not in arrays:
        raise WireError(f"{what}: array {key!r} is missing")
    a = np.asarray(arrays[key])
    if a.dtype != np.dtype(dtype) or a.shape != tuple(shape):
        raise WireError(f"{what}: array {key!r} has shape {a.shape} dtype {a.dtype}, expected "
                        f"shape {tuple(shape)} dtype {np.dtype(dtype)}")
    return a


def _expected_keys(model: models.Model, masks: dict | None) -> set:
    keys = {f"value/{n}" if masks is not None and n in masks else f"param/{n}"
            for n in model.params}
    return keys | {f"buffer/{n}" for n in model.buffers}


def _rebuild(model: models.Model, arrays: dict, masks: dict | None, what: str):
    """Parameters (zeros off the mask) and buffers from a message's model arrays."""
    params = {}
    for name, ref in model.params.items():
        if masks is not None and name in masks:
            m = masks[name]
            val = _take(arrays, f"value/{name}", (int(m.sum()),), ref.dtype, what)
            a = np.zeros(ref.shape, dtype=ref.dtype)
            a[m] = val
            params[name] = a
        else:
            params[name] = _take(arrays, f"param/{name}", ref.shape, ref.dtype, what).copy()
    buffers = {name: _take(arrays, f"buffer/{name}", ref.shape, ref.dtype, what).copy()
               for name, ref in model.buffers.items()}
    return params, buffers


def unpack_masks(model: models.Model, arrays: dict, what: str) -> dict:
    """The masks carried by a download (``mask/<name>`` of every prunable layer)."""
    out = {}
    for name in model.prunable:
        shape = model.params[name].shape
        n = math.prod(shape)
        packed = _take(arrays, f"mask/{name}", (math.ceil(n / 8),), np.uint8, what)
        out[name] = np.unpackbits(packed, count=n).astype(bool).reshape(shape)
    return out


def decode_download(packet: Packet, cfg: Config, model: models.Model,
                    held_masks: dict | None = None) -> tuple[RoundTask, dict | None]:
    """The one-client RoundTask a download describes, and the masks it carried (None when it
    carried none). ``model`` gives names, shapes and dtypes; ``held_masks`` are the masks the
    receiving node kept from an earlier download, used when this one carries none.

    The plan is recomputed from the rebuilt model (:func:`refimpl.fl.engine.round_plan`) and
    checked against the server's ``plan_sha256``; the masks against ``mask_sha256``."""
    h = packet.header
    t, client = int(h["round"]), int(h["client"])
    what = f"download of client {client} in round {t}"
    carried = None
    if cfg.sparse_masks:
        if any(k.startswith("mask/") for k in packet.arrays):
            carried = masks = unpack_masks(model, packet.arrays, what)
        elif held_masks is None:
            raise WireError(f"{what}: it carries no mask bitmaps and this node holds no mask of "
                            f"version {h['mask_version']}")
        else:
            masks = held_masks
        if masks_sha256(masks) != h["mask_sha256"]:
            raise WireError(f"{what}: the masks {'it carries' if carried else 'this node holds'}"
                            f" are not the server's of version {h['mask_version']} (SHA-256 "
                            f"differs)")
    else:
        masks = None
    expected = _expected_keys(model, masks) | ({f"mask/{n}" for n in model.prunable}
                                               if carried is not None else set())
    if set(packet.arrays) != expected:
        extra, missing = set(packet.arrays) - expected, expected - set(packet.arrays)
        raise WireError(f"{what}: unexpected arrays {sorted(extra)}, missing {sorted(missing)}")
    params, buffers = _rebuild(model, packet.arrays, masks, what)
    mask_list = [masks[n] for n in model.prunable] if masks is not None else None
    plan, _ = round_plan(cfg, [params[n] for n in model.prunable], mask_list, t)
    if plan_sha256(plan) != h["plan_sha256"]:
        raise WireError(f"{what}: the round plan computed from it differs from the server's "
                        f"(η_t, marked set or counts): client and server do not run the same "
                        f"configuration or the same fedmef-refimpl")
    task = RoundTask(t, (client,), params, buffers, masks, int(h["mask_version"]), plan,
                     (carried is not None,))
    return task, carried


def encode_upload(update: ClientUpdate, masks: dict | None, prunable: list) -> Packet:
    """The upload of one client: its model's nonzero values and dense tensors and, in an
    adjustment round, the PG-5 growth pairs of each prunable layer."""
    arrays = _model_arrays(update.params, update.buffers, masks)
    if update.growth is not None:
        for name, (idx, val) in zip(prunable, update.growth, strict=True):
            arrays[f"grow_index/{name}"] = np.asarray(idx).astype(
                index_dtype(update.params[name].size))
            arrays[f"grow_value/{name}"] = np.ascontiguousarray(val)
    header = {"client": int(update.client), "n": int(update.n), "loss": float(update.loss),
              "iterations": int(update.iterations),
              "activation_bytes": int(update.activation_bytes), "max_lr": float(update.max_lr)}
    return Packet(arrays, header)


def decode_upload(packet: Packet, model: models.Model, masks: dict | None, t: int,
                  client: int, grow_counts: list | None) -> ClientUpdate:
    """The ClientUpdate an upload describes, checked against the round: the expected client,
    every array of the model with its shape and dtype, and ``grow_counts[l]`` growth pairs per
    layer when the round adjusts (indices in range)."""
    h = packet.header
    what = f"upload of client {client} in round {t}"
    if int(h["client"]) != client:
        raise WireError(f"{what}: it says it is client {h['client']}")
    expected = _expected_keys(model, masks)
    if grow_counts is not None:
        expected |= {f"grow_{kind}/{n}" for n in model.prunable for kind in ("index", "value")}
    if set(packet.arrays) != expected:
        extra, missing = set(packet.arrays) - expected, expected - set(packet.arrays)
        raise WireError(f"{what}: unexpected arrays {sorted(extra)}, missing {sorted(missing)}")
    params, buffers = _rebuild(model, packet.arrays, masks, what)
    growth = None
    if grow_counts is not None:
        growth = []
        for name, k in zip(model.prunable, grow_counts, strict=True):
            ref = model.params[name]
            idx = _take(packet.arrays, f"grow_index/{name}", (int(k),), index_dtype(ref.size),
                        what).astype(np.int64)
            if idx.size and int(idx.max()) >= ref.size:
                raise WireError(f"{what}: grow_index/{name} holds {int(idx.max())}, beyond the "
                                f"{ref.size} entries of the layer")
            val = _take(packet.arrays, f"grow_value/{name}", (int(k),), ref.dtype, what).copy()
            growth.append((idx, val))
    return ClientUpdate(client, int(h["n"]), params, buffers, float(h["loss"]),
                        int(h["iterations"]), int(h["activation_bytes"]), float(h["max_lr"]),
                        growth)


def client_round(packet: Packet, cfg: Config, model: models.Model, data: FedData,
                 held_masks: dict | None = None) -> tuple[Packet, dict | None]:
    """What a remote client does with its download: rebuild the round's task
    (:func:`decode_download`), train with :class:`~refimpl.fl.client.LocalClients` (the local
    engine's own code) and encode the upload. Returns the upload and the masks the download
    carried (for the node to keep), or None."""
    task, carried = decode_download(packet, cfg, model, held_masks)
    [update] = LocalClients(model, data, cfg).train(task)
    return encode_upload(update, task.masks, model.prunable), carried
