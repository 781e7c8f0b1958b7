"""client/fileio.py Gather: several buffers read as one run (the mount's gathered writes)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shoal.client.fileio import Gather


@st.composite
def gathers(draw):
    bufs = draw(st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=6))
    whole = b"".join(bufs)
    start = draw(st.integers(0, len(whole) - 1))
    length = draw(st.integers(1, len(whole) - start))
    return bufs, whole, start, length


@given(gathers())
def test_copy_into_reads_across_buffers_as_one(case):
    bufs, whole, start, length = case
    g = Gather([bytearray(b) if i % 2 else b for i, b in enumerate(bufs)])
    assert g.size == len(whole)
    dst = bytearray(b"\xee") * length
    g.copy_into(memoryview(dst), start)
    assert bytes(dst) == whole[start:start + length]


def test_a_single_buffer_is_its_own_run():
    g = Gather([memoryview(b"abcdef")[1:]])
    dst = bytearray(3)
    g.copy_into(memoryview(dst), 2)
    assert dst == b"def"
