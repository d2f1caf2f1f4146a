"""The ClientApp's two handlers: the handshake (``query``) and a client's round (``train``).

A SuperNode is started with ``--node-config "partition-id=K num-partitions=N"`` (a device with
client K's data) or ``"slot=J num-partitions=N"`` (a pool node, trains whichever client it is
sent). Flower starts a fresh ClientApp process for every message and keeps a per-run state
for the node (``context.state``), where the handshake leaves the run's configuration and a
round leaves the masks it received.

A round rebuilds the client's task from the download and runs the engine's own local training
(:func:`refimpl.fl.wire.client_round`: :class:`refimpl.fl.client.LocalClients`). The node loads
the run's dataset and takes the client's partition (DATA-1: the partition is a function of the
configuration), as every process of a run does.

A handshake or round that cannot be served replies with an ``error`` header field (what is
wrong and how to fix it), which the ServerApp raises naming the node and the client.
"""

from __future__ import annotations

import hashlib
import tomllib

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from ..config import ConfigError, config_from_dict
from ..data import load_fed_data
from ..runner import _threads
from ..state import build_model
from ..wire import Packet, WireError, client_round, unpack_masks
from .messages import HEADER, PROTOCOL, carried, from_content, header_of, to_content

__all__ = ["handshake", "train", "node_role"]

_CONFIG, _MASKS, _MASK_INFO = "fedmef.config", "fedmef.masks", "fedmef.mask_info"


def node_role(node_config, num_clients: int) -> tuple[str, int]:
    """("partition", K) or ("slot", J) from a SuperNode's ``--node-config``; ValueError saying
    what is wrong and what to pass otherwise."""
    cfg = dict(node_config)
    how = (f"start the SuperNode with --node-config \"partition-id=K "
           f"num-partitions={num_clients}\" (a device with client K's data) or \"slot=J "
           f"num-partitions={num_clients}\" (serves any client)")
    has_p, has_s = "partition-id" in cfg, "slot" in cfg
    if has_p == has_s:
        both = "both partition-id and slot" if has_p else "neither partition-id nor slot"
        raise ValueError(f"its --node-config {cfg} has {both}; {how}")
    n = cfg.get("num-partitions")
    if n != num_clients:
        raise ValueError(f"its --node-config says num-partitions={n!r}, this run has "
                         f"data.num_clients = {num_clients}; {how}")
    key = "partition-id" if has_p else "slot"
    value = cfg[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or \
            (has_p and value >= num_clients):
        limit = f"0..{num_clients - 1}" if has_p else "a whole number >= 0"
        raise ValueError(f"its --node-config {key}={value!r} must be {limit}; {how}")
    return ("partition", value) if has_p else ("slot", value)


def _reply(msg: Message, header: dict, packet: Packet | None = None) -> Message:
    if packet is None:
        return Message(RecordDict({HEADER: ConfigRecord(header)}), reply_to=msg)
    return Message(to_content(packet, header), reply_to=msg)


def handshake(msg: Message, context: Context) -> Message:
    """Check the node's ``--node-config`` against the run, keep the run's configuration in the
    node state, and answer the node's role."""
    h = header_of(msg)
    if h.get("protocol") != PROTOCOL:
        return _reply(msg, {"error": f"the server speaks {h.get('protocol')!r}, this node "
                                     f"{PROTOCOL!r}: install the same fedmef-refimpl"})
    try:
        role, index = node_role(context.node_config, int(h["num_clients"]))
    except ValueError as e:
        return _reply(msg, {"error": str(e)})
    text = str(h["config"])
    if hashlib.sha256(text.encode("utf-8")).hexdigest() != h["config_sha256"]:
        return _reply(msg, {"error": "the configuration arrived damaged (SHA-256 differs)"})
    context.state[_CONFIG] = ConfigRecord({"config": text, "sha256": h["config_sha256"]})
    return _reply(msg, {"role": role, "index": index})


def train(msg: Message, context: Context) -> Message:
    """One client's round (module docstring); the reply carries the upload and what the
    download carried on arrival."""
    h = header_of(msg)
    try:
        packet = from_content(msg.content)
        arrived = carried(msg, packet)
        cfg = _config(context, h)
        role, index = node_role(context.node_config, cfg.data.num_clients)
        if role == "partition" and int(h["client"]) != index:
            raise ValueError(f"this node holds partition {index}, it was sent client "
                             f"{h['client']}")
        data = load_fed_data(cfg)
        model = build_model(cfg, data.input_shape[0], data.num_classes)
        held = _held_masks(context, h, model)
        with _threads(cfg.run.threads):
            upload, masks = client_round(packet, cfg, model, data, held)
    except (WireError, ConfigError, ValueError) as e:
        return _reply(msg, {"error": str(e)})
    if masks is not None:
        context.state[_MASKS] = ArrayRecord({n: _packed(m) for n, m in masks.items()})
        context.state[_MASK_INFO] = ConfigRecord({"version": int(h["mask_version"]),
                                                  "sha256": str(h["mask_sha256"])})
    return _reply(msg, {"received_payload": arrived["payload"],
                        "received_message": arrived["message"]}, upload)


def _config(context: Context, h: dict):
    if _CONFIG not in context.state.config_records:
        raise ValueError("this SuperNode holds no configuration of the run (it missed the "
                         "handshake); restart it")
    rec = context.state[_CONFIG]
    if rec["sha256"] != h.get("config_sha256"):
        raise ValueError("this SuperNode holds another configuration than the server's")
    return config_from_dict(tomllib.loads(str(rec["config"])))


def _packed(mask):
    return Array(np.packbits(np.asarray(mask, dtype=bool).reshape(-1)))


def _held_masks(context: Context, h: dict, model):
    """The masks this node kept, when they are the ones the download names (else None)."""
    if _MASK_INFO not in context.state.config_records:
        return None
    info = context.state[_MASK_INFO]
    if info["version"] != h["mask_version"] or info["sha256"] != h["mask_sha256"]:
        return None
    arrays = {f"mask/{n}": a.numpy() for n, a in context.state[_MASKS].items()}
    return unpack_masks(model, arrays, "the masks this SuperNode kept")
