"""net/frame.py: a bulk's digest is BLAKE3 of it up to HASH_PIECE bytes, and BLAKE3 over its
pieces' digests beyond; BulkHasher must give exactly that however the bytes are fed, and
bulk_hash the same for a bulk in one buffer or scattered over several."""

from __future__ import annotations

import os

from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.net.frame import HASH_PIECE, BulkHasher, bulk_hash, list_digest
from shoal.net.sink import BulkSink

P = HASH_PIECE
SIZES = [0, 1, P - 1, P, P + 1, 2 * P, 3 * P + 17, 16 * P]
DATA = os.urandom(16 * P + 1)


def reference(data: bytes) -> bytes:
    if len(data) <= P:
        return blake3(data).digest()
    pieces = [blake3(data[i:i + P]).digest() for i in range(0, len(data), P)]
    return blake3(b"".join(pieces)).digest()


@settings(max_examples=60, deadline=None)
@given(size=st.sampled_from(SIZES) | st.integers(0, 5 * P),
       cuts=st.lists(st.integers(1, 3 * P), max_size=12))
def test_any_feeding_gives_the_reference_digest(size: int, cuts: list[int]) -> None:
    data = DATA[:size]
    h, pos = BulkHasher(), 0
    for c in cuts:
        h.update(memoryview(data)[pos:pos + c])
        pos = min(size, pos + c)
    h.update(data[pos:])
    assert h.digest() == reference(data) == bulk_hash(data)
    pieces = h.piece_digests()
    assert pieces == [blake3(data[i:i + P]).digest() for i in range(0, max(size, 1), P)]
    assert list_digest(pieces) == reference(data)


def test_a_scattered_bulk_hashes_as_its_bytes_in_order() -> None:
    data = bytearray(DATA[:3 * P + 5])
    view = memoryview(data)
    sink = BulkSink([view[:100], view[100:P + 7], view[P + 7:]])
    assert sink.claim(type("Owner", (), {"alive": False})(), len(data)) is not None
    assert bulk_hash(sink) == reference(bytes(data))


def test_one_changed_byte_changes_the_digest() -> None:
    data = bytearray(DATA[:4 * P])
    before = bulk_hash(data)
    data[3 * P + 9] ^= 1
    assert bulk_hash(data) != before
