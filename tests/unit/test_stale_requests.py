"""A copy of a change whose reply the client has had is never done again (target/base.py).

A connection the client gave up on (a network cut) keeps its unsent bytes in the kernel,
which sends them once the cut heals: the server then reads a request the client has long
resent on its new connection and had answered, and has since moved on from. Its reply data
is gone by then (the client's later requests said it had it: `known_xid`), so it cannot be
recognised by its cached reply. Seed 26's round 301 (a `clientcut`): a write of an older
generation of a file done again after the newer one, the file corrupt."""

from __future__ import annotations

from shoal.protocol import messages as m
from shoal.target.ost import OST
from tests.unit.ost_client import NAME, Client


def _write(ost: OST, xid: int, known: int, data: bytes, flags: int = 0) -> m.Reply:
    req = m.Request(xid, "write", NAME, {"oid": 1, "offset": 0}, flags, bulk=data,
                    known_xid=known)
    return ost.handle("client-1", req)[0]


async def test_a_late_copy_of_an_answered_write_is_not_done_again(ost: OST,
                                                                  cl: Client) -> None:
    assert _write(ost, 5, 5, b"old!").status is None
    assert _write(ost, 6, 6, b"new!").status is None  # the client had 5's reply
    assert _write(ost, 7, 7, b"NEW!").status is None  # ... and 6's
    late = _write(ost, 5, 5, b"old!")  # the dead connection's copy of 5
    assert late.status is not None
    assert cl.read(1, 0, 4) == b"NEW!"


async def test_a_resend_still_awaited_is_answered_from_its_reply(ost: OST,
                                                                 cl: Client) -> None:
    first = _write(ost, 5, 5, b"aaaa")
    assert first.status is None
    again = _write(ost, 5, 5, b"aaaa", m.FLAG_RESEND)
    assert again.status is None and again.transno == first.transno
    # out of order: 9 before 8, both still awaited (known_xid 8)
    assert _write(ost, 9, 8, b"nine").status is None
    assert _write(ost, 8, 8, b"8888").status is None
    assert cl.read(1, 0, 4) == b"8888"


async def test_a_client_that_starts_again_under_its_uuid_is_served(ost: OST,
                                                                   cl: Client) -> None:
    """A new process under an old uuid (a fixed --name) counts its xids from 1 again: its
    first connect says so (`initial`), and nothing of it is taken for a late copy."""
    assert _write(ost, 50, 50, b"old!").status is None
    assert _write(ost, 51, 51, b"old?").status is None
    ost.clients.restarted("client-1")
    assert _write(ost, 1, 1, b"new!").status is None
    assert cl.read(1, 0, 4) == b"new!"
