"""The IDX file format (MNIST, Fashion-MNIST), plain or gzip-compressed.

Layout (all integers big-endian): two zero bytes, a type byte, the number of dimensions ``d``,
then ``d`` uint32 sizes, then the data in C order. Images are type 0x08 (uint8) with d = 3, so
their magic is 0x00000803; labels are uint8 with d = 1, magic 0x00000801. A file is accepted only
if its length is exactly ``4 + 4*d + prod(sizes) * itemsize`` bytes.

The canonical checksum of an array (docs/data.md) is the sha256 of :func:`encode_idx` of it,
which for an official uncompressed file is simply ``sha256sum FILE`` (``zcat FILE.gz | sha256sum``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib
from pathlib import Path

import numpy as np

from .dataset import DataFileError

__all__ = ["read_idx", "parse_idx", "encode_idx", "write_idx", "idx_sha256", "IDX_TYPES"]

#: IDX type byte -> big-endian NumPy dtype.
IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
             0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_CODES = {v.str.lstrip("<>|="): k for k, v in IDX_TYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def parse_idx(data: bytes, name: str = "<bytes>", hint: str = "") -> np.ndarray:
    """Decode uncompressed IDX bytes into an array (read-only view of ``data``).

    Raises :class:`DataFileError` naming ``name`` when the magic, the type, or the length is wrong;
    ``hint`` (how to obtain a good file) is appended to the message.
    """
    tail = f" {hint}" if hint else ""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES:
        raise DataFileError(f"{name}: not an IDX file (expected magic 0x0000TTDD with a type TT "
                            f"in {sorted(hex(t) for t in IDX_TYPES)}, found "
                            f"0x{data[:4].hex() or 'empty'}).{tail}")
    dtype, ndim = IDX_TYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFileError(f"{name}: truncated IDX header ({len(data)} bytes, expected {header} "
                            f"for {ndim} dimensions).{tail}")
    dims = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "trailing data"
        raise DataFileError(f"{name}: IDX size mismatch: header says shape {dims} of "
                            f"{dtype.name}, i.e. {expected:,} bytes, but the file has "
                            f"{len(data):,} bytes ({what}).{tail}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def read_file_bytes(path: Path, hint: str = "") -> tuple[bytes, bytes]:
    """(raw file bytes, decompressed bytes): gzip is detected by its magic, not the name."""
    raw = Path(path).read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        return raw, raw
    try:
        return raw, gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataFileError(f"{path}: corrupt gzip data ({e}).{' ' + hint if hint else ''}") from e


def read_idx(path, hint: str = "") -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a native-endian array."""
    _, data = read_file_bytes(Path(path), hint)
    a = parse_idx(data, str(path), hint)
    return a.astype(a.dtype.newbyteorder("="), copy=False)


def encode_idx(a: np.ndarray) -> bytes:
    """The IDX bytes of ``a`` (dtype one of IDX_TYPES, any byte order; stored big-endian)."""
    a = np.asarray(a)
    key = a.dtype.str.lstrip("<>|=")
    if key not in _CODES:
        raise ValueError(f"encode_idx: dtype {a.dtype} has no IDX type; use one of "
                         f"{[str(t) for t in IDX_TYPES.values()]}")
    code = _CODES[key]
    head = bytes([0, 0, code, a.ndim]) + np.asarray(a.shape, dtype=">u4").tobytes()
    return head + np.ascontiguousarray(a, dtype=IDX_TYPES[code]).tobytes()


def write_idx(path, a: np.ndarray, compress: bool = False) -> Path:
    """Write ``a`` as IDX; with ``compress`` as gzip with mtime 0 (same bytes on every run)."""
    data = encode_idx(a)
    if compress:
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as f:
            f.write(data)
        data = buf.getvalue()
    path = Path(path)
    path.write_bytes(data)
    return path


def idx_sha256(a: np.ndarray) -> str:
    """Canonical checksum of an array: sha256 hex of its IDX encoding."""
    return hashlib.sha256(encode_idx(a)).hexdigest()
