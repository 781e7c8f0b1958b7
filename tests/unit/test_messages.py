from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.errors import BadMessage, IllegalByteSequence, from_errno_name
from shoal.protocol import messages as m

args = st.dictionaries(st.text(max_size=8), st.one_of(st.integers(-2**63, 2**63 - 1),
                                                      st.text(max_size=20), st.booleans()),
                       max_size=5)


@given(st.integers(0, 2**63), st.text(max_size=10), st.text(max_size=20), args,
       st.integers(0, 3), st.integers(0, 2**64 - 1), st.one_of(st.none(), st.binary(min_size=1)))
def test_request_round_trip(xid, op, target, a, flags, transno, bulk):
    req = m.Request(xid, op, target, a, flags, transno, 0, bulk)
    meta, b = m.encode(req)
    assert m.decode(meta, b) == req


@given(st.binary(max_size=64))
def test_garbage_never_crashes(data):
    try:
        m.decode(data, None)
    except BadMessage:
        pass


@pytest.mark.parametrize("bad", [[], [0, 1], [1, "x", None], [9, 1, 2], {"a": 1}, [0] * 8])
def test_malformed_rejected(bad):
    with pytest.raises(BadMessage):
        m.decode(msgpack.packb(bad), None)


def test_errno_names_round_trip():
    exc = from_errno_name("ENOENT", "no such file")
    assert exc.errno_name == "ENOENT" and exc.errno == 2
    assert from_errno_name("EWHATEVER").errno_name == "EWHATEVER"


def test_a_path_that_is_not_utf8_is_an_eilseq_not_a_crash():
    """A command-line path with bytes that are not UTF-8 arrives as surrogate escapes."""
    req = m.Request(1, "mkdir", "T", {"path": "/x\udcff"})
    with pytest.raises(IllegalByteSequence, match=r"b'/x\\xff' is not valid UTF-8"):
        m.encode(req)
