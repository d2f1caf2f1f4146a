"""An in-process Flower grid for tests: the real ServerApp and ClientApp, no SuperLink.

:class:`FakeGrid` implements Flower's ``Grid`` interface: each pushed message is serialised to
Flower's objects and back (so arrays cross Flower's own encoding, dtypes included), handed to
the real ClientApp with the node's own ``Context`` (node config, per-run state), and its reply
is serialised the same way. Nodes can be made to fail: ``kill(node_id, after=n)`` removes the
node from the federation when it receives its n-th train message (the reply never comes), as a
SuperNode that dies mid-round.
"""

from __future__ import annotations

import itertools

from flwr.app import Context, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.task_identity import TaskIdentity


def _roundtrip(message, message_id: str | None = None):
    """The message as the receiving side sees it after Flower's object encoding."""
    objects = get_all_nested_objects(message)
    contents = {oid: obj.deflate() for oid, obj in objects.items()}
    out = inflate_object_from_contents(message.object_id, contents)
    if message_id is not None:
        out.metadata.__dict__["_message_id"] = message_id
    return out


class FakeGrid(Grid):
    def __init__(self, client_app, node_configs: list[dict], run_id: int = 7):
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 0, 0
        self.client_app = client_app
        self._ids = itertools.count(1)
        ids = [9_000_000_000 + 7919 * i for i in range(len(node_configs))]  # not 0..n-1
        self.contexts = {nid: Context(run_id, nid, dict(c), RecordDict(), {})
                         for nid, c in zip(ids, node_configs)}
        self.replies: dict[str, object] = {}
        self.trains: dict[int, int] = dict.fromkeys(ids, 0)
        self.doomed: dict[int, int] = {}
        self._run = None

    def kill(self, node_id: int, after: int) -> None:
        """Node ``node_id`` leaves the federation on its ``after``-th train message."""
        self.doomed[node_id] = after

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        # Grid declares it abstract; it is Flower's deprecated way to build a message, which
        # refimpl's ServerApp never uses (it builds Message objects): a call is a bug.
        raise AssertionError("FakeGrid.create_message: refimpl's ServerApp builds Message "
                             "objects itself and must not call the deprecated create_message")

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            mid = f"m{next(self._ids)}"
            ids.append(mid)
            node = msg.metadata.dst_node_id
            received = _roundtrip(msg, mid)
            if msg.metadata.message_type.startswith("train"):
                self.trains[node] += 1
                if self.doomed.get(node) == self.trains[node]:
                    del self.contexts[node]  # gone: no reply, no longer in the federation
                    continue
            reply = self.client_app(received, self.contexts[node])
            self.replies[mid] = _roundtrip(reply)
        return ids

    def pull_messages(self, message_ids):
        return [self.replies.pop(m) for m in list(message_ids) if m in self.replies]

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))
