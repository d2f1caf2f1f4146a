"""A little-endian tensor file that C code can read without Python (issue "conformance kit").

Layout (all integers little-endian; see docs/conformance.md for the C-side walk-through):

    offset  size  field
    0       8     magic  b"FMEFTNS\\0"
    8       4     version (uint32) = 1
    12      4     tensor count T (uint32)
    16      8     metadata length M in bytes (uint64): UTF-8 JSON, then zero padding to 8
    24      M     metadata JSON (manifest: scenario, seeds, rule ids, tolerances, versions)
    ...           T table entries, each:
                    uint16 name length L, L bytes UTF-8 name,
                    uint8 dtype code, uint8 ndim, uint16 reserved (0),
                    ndim x uint64 shape,
                    uint64 data offset (from the start of the file, a multiple of 64),
                    uint64 data length in bytes
    ...           data blocks, each 64-byte aligned, C order, little-endian

dtype codes: 1 float32, 2 float64, 3 int8, 4 uint8, 5 int16, 6 uint16, 7 int32, 8 uint32,
9 int64, 10 uint64, 11 bool (one byte each, 0 or 1).
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

__all__ = ["MAGIC", "VERSION", "write", "read", "DTYPE_CODES"]

MAGIC = b"FMEFTNS\0"
VERSION = 1
ALIGN = 64
DTYPE_CODES = {
    np.dtype(np.float32): 1, np.dtype(np.float64): 2, np.dtype(np.int8): 3,
    np.dtype(np.uint8): 4, np.dtype(np.int16): 5, np.dtype(np.uint16): 6,
    np.dtype(np.int32): 7, np.dtype(np.uint32): 8, np.dtype(np.int64): 9,
    np.dtype(np.uint64): 10, np.dtype(np.bool_): 11,
}
_CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}


def _pad(n: int, align: int) -> int:
    return (-n) % align


def encode(tensors: dict[str, np.ndarray], meta: dict | None = None) -> bytes:
    """The file's bytes for ``tensors`` (name -> array, written in the dict's order)."""
    meta_bytes = json.dumps(meta or {}, sort_keys=True, separators=(",", ":")).encode()
    meta_bytes += b"\0" * _pad(len(meta_bytes), 8)
    arrays = []
    for name, a in tensors.items():
        a = np.asarray(a)
        if a.dtype not in DTYPE_CODES:
            raise ValueError(f"binfile: tensor {name!r} has dtype {a.dtype}; supported: "
                             f"{', '.join(str(d) for d in DTYPE_CODES)}")
        arrays.append((name.encode(), np.array(a, dtype=a.dtype.newbyteorder("<"), order="C")))
    table_len = sum(2 + len(n) + 4 + 8 * a.ndim + 16 for n, a in arrays)
    header_len = 24 + len(meta_bytes) + table_len
    offset = header_len + _pad(header_len, ALIGN)
    table, blocks = [], []
    for name, a in arrays:
        table.append(struct.pack("<H", len(name)) + name
                     + struct.pack("<BBH", DTYPE_CODES[a.dtype.newbyteorder("=")], a.ndim, 0)
                     + struct.pack(f"<{a.ndim}Q", *a.shape)
                     + struct.pack("<QQ", offset, a.nbytes))
        blocks.append((offset, a.tobytes()))
        offset += a.nbytes + _pad(a.nbytes, ALIGN)
    out = bytearray(MAGIC + struct.pack("<IIQ", VERSION, len(arrays), len(meta_bytes)))
    out += meta_bytes + b"".join(table)
    for off, data in blocks:
        out += b"\0" * (off - len(out))
        out += data
    out += b"\0" * _pad(len(out), ALIGN)
    return bytes(out)


def write(path: str, tensors: dict[str, np.ndarray], meta: dict | None = None) -> None:
    """Write atomically (temporary file, then rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(encode(tensors, meta))
    os.replace(tmp, path)


def decode(buf: bytes, source: str = "<bytes>") -> tuple[dict[str, np.ndarray], dict]:
    """Parse the bytes of a tensor file; a malformed file is a ValueError naming what is
    wrong."""
    def need(n, at, what):
        if at + n > len(buf):
            raise ValueError(f"{source}: truncated tensor file: {what} needs bytes {at}..{at + n}"
                             f" but the file has {len(buf)}")

    need(24, 0, "the header")
    if buf[:8] != MAGIC:
        raise ValueError(f"{source}: not a FedMef tensor file: magic {buf[:8]!r}, expected "
                         f"{MAGIC!r}")
    version, count, meta_len = struct.unpack_from("<IIQ", buf, 8)
    if version != VERSION:
        raise ValueError(f"{source}: tensor file version {version}, this reader knows {VERSION}")
    need(meta_len, 24, "the metadata")
    meta = json.loads(bytes(buf[24:24 + meta_len]).rstrip(b"\0").decode() or "{}")
    pos = 24 + meta_len
    tensors = {}
    for _ in range(count):
        need(2, pos, "a table entry")
        (nlen,) = struct.unpack_from("<H", buf, pos)
        need(nlen + 4, pos + 2, "a table entry")
        name = bytes(buf[pos + 2:pos + 2 + nlen]).decode()
        code, ndim, _ = struct.unpack_from("<BBH", buf, pos + 2 + nlen)
        pos += 2 + nlen + 4
        need(8 * ndim + 16, pos, f"the entry of {name!r}")
        shape = struct.unpack_from(f"<{ndim}Q", buf, pos)
        off, nbytes = struct.unpack_from("<QQ", buf, pos + 8 * ndim)
        pos += 8 * ndim + 16
        if code not in _CODE_DTYPES:
            raise ValueError(f"{source}: tensor {name!r} has unknown dtype code {code}")
        dt = _CODE_DTYPES[code].newbyteorder("<")
        if nbytes != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
            raise ValueError(f"{source}: tensor {name!r}: {nbytes} bytes do not match shape "
                             f"{shape} of {dt.name}")
        need(nbytes, off, f"the data of {name!r}")
        tensors[name] = np.frombuffer(buf, dtype=dt, count=nbytes // dt.itemsize,
                                      offset=off).reshape(shape).astype(dt.newbyteorder("="))
    return tensors, meta


def read(path: str) -> tuple[dict[str, np.ndarray], dict]:
    with open(path, "rb") as f:
        return decode(f.read(), path)
