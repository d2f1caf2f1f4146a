"""The ServerApp's client executor: the clients of a round computed on Flower SuperNodes.

:class:`FlowerClients` is a :class:`refimpl.fl.client.ClientExecutor`: the runner and the engine
call it exactly where the local engine calls :class:`~refimpl.fl.client.LocalClients`. It
sends each sampled client's download (:func:`refimpl.fl.wire.encode_download`) to a SuperNode
that serves that client, and turns the replies back into ClientUpdates. It decides nothing about
FedMef: the round's clients, plan and arrays come in the RoundTask.

SuperNodes and clients. Flower gives nodes random ids, so a handshake (a ``query`` message with
the run's configuration) asks every node what it serves, from its ``--node-config``:

- ``partition-id=K num-partitions=N``: a device holding client K's data; it trains only K.
- ``slot=J num-partitions=N``: a pool node (``fedmef run --engine flower`` on one machine
  starts one per client sampled per round); it trains whichever client it is sent.

A sampled client goes to the node of its partition, otherwise to a slot node (round-robin in
slot order). A node processes its messages one at a time (Flower's SuperNode), so a slot node
sent two clients trains them one after the other. Results do not depend on the assignment.

Masks. A node keeps the masks of its last download (Flower's per-run node state). The download
carries the bitmaps when the ledger says the *client* lacks the current mask (MEM-4); a node
standing in for several clients, or one restarted, may lack it although its client holds it: it
then gets them too, counted as ``mask_resend`` beside the ledger's figures.

Faults. An error reply (a crashed ClientApp, a node the SuperLink declared unavailable), a node
that leaves the federation while it holds a client's work, or a reply that does not fit the
round raises :class:`refimpl.fl.client.ClientError` naming the client, the round and the node.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from flwr.app import ConfigRecord, Message, RecordDict

from ..client import ClientError, ClientUpdate, RoundTask
from ..config import Config, to_toml
from ..server import bytes_down, bytes_up
from ..wire import WireError, decode_upload, encode_download, masks_sha256
from .messages import HEADER, PROTOCOL, carried, from_content, header_of, to_content

__all__ = ["FlowerClients", "FederationError"]


class FederationError(RuntimeError):
    """The SuperNodes cannot serve this run (none connected, a node started for another run,
    two nodes claiming one partition); the message says which node and how to fix it."""

    user_facing = True


@dataclass
class _Node:
    node_id: int
    role: str  # "partition" or "slot"
    index: int  # the partition id or the slot number
    mask: tuple | None = None  # (mask version, SHA-256) of the masks the node keeps

    def describe(self) -> str:
        return f"SuperNode {self.node_id} ({self.role} {self.index})"


class FlowerClients:
    """Clients of a round on the SuperNodes of ``grid`` (module docstring).

    ``node_timeout``: seconds to wait for a SuperNode that serves a sampled client (and for
    ``min_nodes`` SuperNodes at start) before the run stops with an error; ``poll``: seconds
    between two pulls of replies. ``log`` receives one line per round."""

    def __init__(self, grid, cfg: Config, model, data, *, node_timeout: float = 120.0,
                 min_nodes: int = 1, poll: float = 0.2, log=print):
        self.grid, self.cfg, self.model = grid, cfg, model
        self.node_timeout, self.poll, self.log = float(node_timeout), float(poll), log
        self.config_text = to_toml(cfg)
        self.config_sha = hashlib.sha256(self.config_text.encode("utf-8")).hexdigest()
        self.nodes: dict[int, _Node] = {}
        self._report: dict | None = None
        deadline = time.monotonic() + self.node_timeout
        while self._refresh() < max(1, int(min_nodes)):
            if time.monotonic() > deadline:
                raise FederationError(f"{len(self.nodes)} SuperNode(s) connected to the "
                                      f"SuperLink within {self.node_timeout:g} s, the run waits "
                                      f"for {max(1, int(min_nodes))}; start one per device with "
                                      f"`flower-supernode --node-config \"partition-id=K "
                                      f"num-partitions={cfg.data.num_clients}\" ...` "
                                      f"(docs/flower.md)")
            time.sleep(1.0)

    # ---- nodes ----------------------------------------------------------------------------
    def _refresh(self) -> int:
        """Handshake new nodes, forget departed ones; the number of nodes known."""
        ids = set(int(n) for n in self.grid.get_node_ids())
        for gone in set(self.nodes) - ids:
            del self.nodes[gone]
        new = sorted(ids - set(self.nodes))
        if new:
            self._handshake(new)
        return len(self.nodes)

    def _handshake(self, node_ids: list) -> None:
        header = {"protocol": PROTOCOL, "config": self.config_text,
                  "config_sha256": self.config_sha, "num_clients": self.cfg.data.num_clients}
        msgs = [Message(RecordDict({HEADER: ConfigRecord(header)}), n, "query",
                        group_id="handshake") for n in node_ids]
        replies = self._exchange(msgs, lambda i: f"the handshake of SuperNode {node_ids[i]}",
                                 timeout=self.node_timeout)
        for i, reply in enumerate(replies):
            node = node_ids[i]
            if reply.has_error():
                raise FederationError(f"SuperNode {node} failed the handshake: Flower error "
                                      f"{reply.error.code}: {reply.error.reason}")
            h = header_of(reply)
            if h.get("error"):
                raise FederationError(f"SuperNode {node} cannot serve this run: {h['error']}")
            self.nodes[node] = _Node(node, str(h["role"]), int(h["index"]))
        claims: dict[int, list] = {}
        for nd in self.nodes.values():
            if nd.role == "partition":
                claims.setdefault(nd.index, []).append(nd.node_id)
        for k, ns in claims.items():
            if len(ns) > 1:
                raise FederationError(f"SuperNodes {sorted(ns)} all say they hold partition {k}; "
                                      f"give each device its own --node-config "
                                      f"\"partition-id=K\"")

    def _serving(self, k: int):
        return next((n for n in self.nodes.values() if n.role == "partition" and n.index == k),
                    None)

    def _assign(self, task: RoundTask) -> list:
        """(client, node) for every client of the round (module docstring), waiting up to
        ``node_timeout`` for a node that serves a client none serves yet."""
        deadline = time.monotonic() + self.node_timeout
        while True:
            self._refresh()
            slots = sorted((n for n in self.nodes.values() if n.role == "slot"),
                           key=lambda n: n.index)
            pairs, missing, j = [], [], 0
            for k in task.clients:
                node = self._serving(k)
                if node is None and slots:
                    node, j = slots[j % len(slots)], j + 1
                if node is None:
                    missing.append(k)
                pairs.append((k, node))
            if not missing:
                return pairs
            if time.monotonic() > deadline:
                held = sorted(n.index for n in self.nodes.values() if n.role == "partition")
                raise ClientError(task.t, missing[0], (
                    f"no SuperNode serves it (waited {self.node_timeout:g} s; connected: "
                    f"partitions {held}, no slot node); start one with `flower-supernode "
                    f"--node-config \"partition-id={missing[0]} "
                    f"num-partitions={self.cfg.data.num_clients}\" ...`"))
            time.sleep(1.0)

    # ---- messages -------------------------------------------------------------------------
    def _exchange(self, messages: list, name, watch: list | None = None,
                  timeout: float | None = None) -> list:
        """Push ``messages`` and pull one reply each (in the order of ``messages``). ``name(i)``
        names message i in errors. ``watch[i]``: the node whose departure from the federation
        fails message i at once (else the SuperLink's own error reply does, after its
        heartbeat patience). ``timeout``: seconds after which a missing reply is an error."""
        ids = list(self.grid.push_messages(messages))
        if len(ids) != len(messages) or any(not i for i in ids):
            raise RuntimeError(f"the SuperLink did not accept every message of "
                               f"{name(0)} (message ids {ids})")
        where = {mid: i for i, mid in enumerate(ids)}
        replies: list = [None] * len(messages)
        start = last_check = time.monotonic()
        pending = set(ids)
        while pending:
            for reply in self.grid.pull_messages(sorted(pending)):
                mid = reply.metadata.reply_to_message_id
                if mid in pending:
                    replies[where[mid]] = reply
                    pending.discard(mid)
            if not pending:
                break
            if timeout is not None and time.monotonic() - start > timeout:
                late = sorted(where[mid] for mid in pending)
                raise FederationError(f"no reply to {name(late[0])} within {timeout:g} s")
            if watch is not None and time.monotonic() - last_check >= 1.0:
                last_check = time.monotonic()
                online = set(int(n) for n in self.grid.get_node_ids())
                for mid in pending:
                    i = where[mid]
                    if watch[i] not in online:
                        raise _Departed(i, watch[i])
            time.sleep(self.poll)
        return replies

    def train(self, task: RoundTask) -> list[ClientUpdate]:
        t0 = time.perf_counter()
        pairs = self._assign(task)
        sha = masks_sha256(task.masks)
        msgs, meta = [], []
        for i, (k, node) in enumerate(pairs):
            ledger_mask = bool(task.send_mask[i])
            resend = (task.masks is not None and not ledger_mask
                      and node.mask != (task.mask_version, sha))
            packet = encode_download(task, k, ledger_mask or resend)
            msgs.append(Message(to_content(packet, {"config_sha256": self.config_sha}),
                                node.node_id, "train", group_id=str(task.t)))
            resent = (sum(a.nbytes for name, a in packet.arrays.items()
                          if name.startswith("mask/")) if resend else 0)
            meta.append((k, node, ledger_mask or resend, resent))
        try:
            replies = self._exchange(msgs, lambda i: f"round {task.t}",
                                     watch=[node.node_id for _, node in pairs])
        except _Departed as e:
            k, node = pairs[e.index]
            raise ClientError(task.t, k, f"{node.describe()} left the federation before "
                                         f"replying (stopped or lost)") from None
        shapes = {n: task.params[n].shape for n in self.model.prunable}
        updates, report = [], _Report(task.t)
        for (k, node, got_masks, resent), reply in zip(meta, replies):
            update, down, up = self._receive(task, k, node, reply)
            if got_masks:
                node.mask = (task.mask_version, sha)
            updates.append(update)
            i = task.clients.index(k)
            report.add(k, node, down, up, resent,
                       bytes_down(task.params, task.buffers, task.masks, task.send_mask[i]),
                       bytes_up(update, task.masks, shapes))
        self._report = report.finish(time.perf_counter() - t0)
        self.log(report.line())
        return updates

    def _receive(self, task: RoundTask, k: int, node: _Node, reply) -> tuple:
        """The update of client ``k`` from its reply, and what the download and the upload
        carried."""
        if reply.has_error():
            raise ClientError(task.t, k, f"{node.describe()} failed: Flower error "
                                         f"{reply.error.code}: {reply.error.reason}")
        h = header_of(reply)
        if h.get("error"):
            raise ClientError(task.t, k, f"{node.describe()}: {h['error']}")
        try:
            packet = from_content(reply.content)
            update = decode_upload(packet, self.model, task.masks, task.t, k,
                                   task.plan.grow_counts)
        except (WireError, ValueError) as e:
            raise ClientError(task.t, k, f"{node.describe()} sent an unusable upload: {e}"
                              ) from None
        down = {"payload": int(h["received_payload"]), "message": int(h["received_message"])}
        return update, down, carried(reply, packet)

    def round_report(self) -> dict | None:
        return self._report


class _Departed(Exception):
    def __init__(self, index: int, node_id: int):
        super().__init__(index, node_id)
        self.index, self.node_id = index, node_id


class _Report:
    """transport.jsonl record of one round: per direction the payload Flower delivered (down:
    as measured by each ClientApp on arrival; up: by this ServerApp), the ledger's bytes
    (MEM-4, :mod:`refimpl.fl.server`), Flower's message bytes, and mask bitmaps resent beside
    the ledger. A payload that is not the ledger plus the resent bitmaps is a transport bug and
    stops the run."""

    def __init__(self, t: int):
        self.t, self.nodes = t, {}
        self.sums = dict.fromkeys(("payload_down", "ledger_down", "message_down", "mask_resend",
                                   "payload_up", "ledger_up", "message_up"), 0)

    def add(self, k, node, down, up, resent, ledger_down, ledger_up) -> None:
        self.nodes[str(k)] = node.node_id
        s = self.sums
        s["payload_down"] += down["payload"]
        s["message_down"] += down["message"]
        s["ledger_down"] += ledger_down
        s["mask_resend"] += resent
        s["payload_up"] += up["payload"]
        s["message_up"] += up["message"]
        s["ledger_up"] += ledger_up

    def finish(self, seconds: float) -> dict:
        s = self.sums
        if s["payload_down"] != s["ledger_down"] + s["mask_resend"] or \
                s["payload_up"] != s["ledger_up"]:
            raise RuntimeError(f"round {self.t}: Flower carried {s['payload_down']} B down and "
                               f"{s['payload_up']} B up, the ledger counts {s['ledger_down']} B "
                               f"(+{s['mask_resend']} B resent masks) and {s['ledger_up']} B "
                               f"(MEM-4): the message encoding is wrong")
        self.record = {"round": self.t, "engine": "flower", "nodes": self.nodes, **s,
                       "framing_down": s["message_down"] - s["payload_down"],
                       "framing_up": s["message_up"] - s["payload_up"],
                       "seconds": round(seconds, 3)}
        return self.record

    def line(self) -> str:
        r = self.record
        return (f"round {self.t}: {len(self.nodes)} client(s) on SuperNodes in {r['seconds']:.1f} "
                f"s; payload down {r['payload_down']} B (ledger {r['ledger_down']} B + "
                f"{r['mask_resend']} B resent masks), up {r['payload_up']} B (ledger "
                f"{r['ledger_up']} B); Flower framing {r['framing_down']} B down, "
                f"{r['framing_up']} B up")
