"""Wire packets (:class:`refimpl.fl.wire.Packet`) as Flower records, and what a message carried.

A message's content is a RecordDict with two records: ``arrays`` (an ArrayRecord, one Array per
payload array: Flower keeps the dtype, so a uint16 index travels as uint16) and ``header`` (a
ConfigRecord of the packet's scalars plus the adapter's own fields).

Two figures per received message (:func:`carried`):

- ``payload``: the bytes of the numbers it delivered (Σ nbytes of its arrays, MEM-4's unit).
- ``message``: the bytes of the objects Flower stores and moves for it (Σ of every distinct
  object of the message as Flower serialises it: per array the ``.npy`` header and the chunk
  objects, the records, the message itself). ``message − payload`` is Flower's framing; HTTP and
  TLS framing below it are not counted. Flower moves an object once per message even when two
  arrays hold the same bytes (its objects are content-addressed), so ``message`` can undercut
  the sum of its parts.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from ..wire import Packet, payload_nbytes

__all__ = ["PROTOCOL", "ARRAYS", "HEADER", "to_content", "from_content", "carried", "header_of"]

#: Name and version of this adapter's message protocol (checked in the handshake).
PROTOCOL = "fedmef-flower/1"
ARRAYS, HEADER = "arrays", "header"


def to_content(packet: Packet, extra: dict | None = None) -> RecordDict:
    """The RecordDict of ``packet``; ``extra`` fields join its header."""
    header = dict(packet.header)
    header.update(extra or {})
    arrays = ArrayRecord({k: Array(np.ascontiguousarray(a)) for k, a in packet.arrays.items()})
    return RecordDict({ARRAYS: arrays, HEADER: ConfigRecord(header)})


def header_of(message: Message) -> dict:
    """The header fields of a message (an empty dict when it has none)."""
    content = message.content
    return dict(content[HEADER]) if HEADER in content.config_records else {}


def from_content(content: RecordDict) -> Packet:
    """The packet a RecordDict holds (ValueError naming what is missing)."""
    if ARRAYS not in content.array_records or HEADER not in content.config_records:
        raise ValueError(f"a FedMef message holds the records {ARRAYS!r} and {HEADER!r}; this "
                         f"one holds {sorted(content.keys())}")
    arrays = {k: a.numpy() for k, a in content[ARRAYS].items()}
    return Packet(arrays, dict(content[HEADER]))


def carried(message: Message, packet: Packet) -> dict:
    """``payload`` and ``message`` bytes of a received message (module docstring)."""
    objects = get_all_nested_objects(message)
    return {"payload": payload_nbytes(packet.arrays),
            "message": int(sum(len(o.deflate()) for o in objects.values()))}
