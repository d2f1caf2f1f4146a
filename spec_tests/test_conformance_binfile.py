# covers: CONV-2, CONV-3
"""The conformance tensor file: every supported dtype and shape (0-d, empty, C order) round
trips bit for bit; the layout is the documented one (magic, version, 64-byte aligned data);
damaged files are rejected with a message that says what is wrong."""

import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refimpl.conformance import binfile as B

dtypes = st.sampled_from(sorted(B.DTYPE_CODES, key=str))
tensors = st.dictionaries(
    st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=12),
    dtypes.flatmap(lambda d: hnp.arrays(d, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0,
                                                            max_side=4))),
    max_size=5)


@given(tensors, st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
def test_round_trip_bit_exact(ts, meta):
    buf = B.encode(ts, meta)
    back, meta_back = B.decode(buf)
    assert list(back) == list(ts) and meta_back == meta
    for k, a in ts.items():
        assert back[k].dtype == a.dtype and back[k].shape == a.shape
        assert back[k].tobytes() == np.ascontiguousarray(a).tobytes()  # NaN payloads, -0.0
    assert len(buf) % B.ALIGN == 0


def test_documented_layout():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    buf = B.encode({"w": a}, {})
    assert buf[:8] == B.MAGIC
    version, count, meta_len = struct.unpack_from("<IIQ", buf, 8)
    assert (version, count) == (B.VERSION, 1) and meta_len % 8 == 0
    pos = 24 + meta_len
    (nlen,) = struct.unpack_from("<H", buf, pos)
    assert buf[pos + 2:pos + 2 + nlen] == b"w"
    code, ndim, _ = struct.unpack_from("<BBH", buf, pos + 2 + nlen)
    assert (code, ndim) == (1, 2)
    shape = struct.unpack_from("<2Q", buf, pos + 2 + nlen + 4)
    off, nbytes = struct.unpack_from("<QQ", buf, pos + 2 + nlen + 4 + 16)
    assert shape == (2, 3) and nbytes == 24 and off % 64 == 0
    assert np.frombuffer(buf, "<f4", 6, off).tolist() == a.ravel().tolist()


@pytest.mark.parametrize("damage,message", [
    (lambda b: b"NOTMAGIC" + b[8:], "not a FedMef tensor file"),
    (lambda b: b[:8] + struct.pack("<I", 99) + b[12:], "version 99"),
    (lambda b: b[:40], "truncated tensor file"),
    (lambda b: b[:-70], "truncated tensor file"),
])
def test_damaged_files_are_rejected_clearly(damage, message):
    buf = B.encode({"w": np.ones((4, 5)), "m": np.zeros(3, bool)}, {"k": 1})
    with pytest.raises(ValueError, match=message):
        B.decode(damage(buf), "dump.bin")


def test_unsupported_dtype_is_named():
    with pytest.raises(ValueError, match="has dtype complex128; supported"):
        B.encode({"z": np.zeros(2, complex)})
