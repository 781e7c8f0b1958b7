"""An OST answering reads with FileBulks (sent from the page cache by the connection's writer)
and the commit rule that keeps them true: a real OST on tmp_path, requests in process.

A write arrives as the receiving protocol hands it up: a HashedBulk carrying its pieces'
digests (net/framing.py). A FileBulk that is not released stands for a reply still being
sent; a commit that would rewrite its object must wait for it.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from shoal.net.frame import BulkHasher, HashedBulk, bulk_hash
from shoal.net.writer import FileBulk
from shoal.protocol import messages as m
from shoal.target.ost import OST
from shoal.target.ost_files import object_path
from tests.unit.ost_client import Client

MB = 1 << 20


pytestmark = pytest.mark.usefixtures("deferred_reads")


def received(data: bytes) -> HashedBulk:
    """A write's bulk as the receiving protocol hands it up."""
    bulk = HashedBulk(len(data))
    bulk[:] = data
    h = BulkHasher()
    h.update(data)
    bulk.pieces = h.piece_digests()
    return bulk


def read(cl: Client, oid: int, offset: int, length: int):  # noqa: ANN201 - a reply's bulk
    r = cl.call("read", {"oid": oid, "offset": offset, "length": length})
    assert r.status is None, r.message
    return r.bulk


def file_bytes(bulk: FileBulk) -> bytes:
    return os.pread(bulk.fd, bulk.length, bulk.offset)


async def test_a_committed_write_is_read_from_the_file_with_its_digest(ost: OST, cl: Client):
    data = os.urandom(4 * MB + 12345)
    assert cl.write(1, 0, received(data)).status is None
    await ost.commit()
    bulk = read(cl, 1, MB, 8 * MB)  # to the object's end: the short last piece matches
    assert type(bulk) is FileBulk
    assert bulk.digest == bulk_hash(data[MB:]) and file_bytes(bulk) == data[MB:]
    bulk.release()
    assert ost.stats["read_sendfile"] == 1
    # ending mid-piece, or starting off a piece boundary: hashed as read instead
    assert type(read(cl, 1, 0, MB + 100)) is not FileBulk
    assert type(read(cl, 1, 100, 2 * MB)) is not FileBulk


async def test_pending_changes_are_read_from_the_log_not_the_file(ost: OST, cl: Client):
    data = os.urandom(2 * MB)
    cl.write(1, 0, received(data))
    await ost.commit()
    new = os.urandom(1000)
    cl.write(1, MB + 5, new)  # plain bytes, off a piece boundary: forgets that piece
    got = read(cl, 1, 0, 2 * MB)
    assert type(got) is not FileBulk
    assert bytes(got) == data[:MB + 5] + new + data[MB + 5 + 1000:]
    await ost.commit()
    assert type(read(cl, 1, 0, MB)) is FileBulk  # the untouched first MiB still answers
    got = read(cl, 1, 0, 2 * MB)  # the changed piece is hashed again from the file
    assert type(got) is not FileBulk and bytes(got) == data[:MB + 5] + new + data[MB + 1005:]


async def test_a_commit_waits_for_sends_from_the_files_it_rewrites(ost: OST, cl: Client):
    old, new = os.urandom(2 * MB), os.urandom(2 * MB)
    cl.write(1, 0, received(old))
    cl.write(2, 0, received(old))
    await ost.commit()
    sending = read(cl, 1, 0, 2 * MB)
    assert type(sending) is FileBulk
    cl.write(1, 0, received(new))
    commit = asyncio.create_task(ost.commit())
    await asyncio.sleep(0.2)
    assert not commit.done(), "the commit rewrote a file a reply is still being sent from"
    assert file_bytes(sending) == old
    assert bytes(read(cl, 1, 0, 2 * MB)) == new  # meanwhile reads see the new data
    sending.release()
    await asyncio.wait_for(commit, 5)
    assert object_path(ost.objects_dir, 1).read_bytes() == new
    # a send from another object's file holds nothing up
    other = read(cl, 2, 0, 2 * MB)
    assert type(other) is FileBulk
    cl.write(1, 0, received(old))
    await asyncio.wait_for(ost.commit(), 2)
    other.release()


async def test_a_commit_cancelled_while_waiting_leaves_the_changes_pending(ost: OST,
                                                                          cl: Client):
    old, new = os.urandom(MB), os.urandom(MB)
    cl.write(1, 0, received(old))
    await ost.commit()
    sending = read(cl, 1, 0, MB)
    cl.write(1, 0, received(new))
    commit = asyncio.create_task(ost.commit())
    await asyncio.sleep(0.05)
    commit.cancel()
    with pytest.raises(asyncio.CancelledError):
        await commit
    sending.release()
    assert bytes(read(cl, 1, 0, MB)) == new
    assert ost.dirty_bytes() == MB
    await ost.commit()
    assert ost.dirty_bytes() == 0
    got = read(cl, 1, 0, MB)
    assert type(got) is FileBulk and file_bytes(got) == new and got.digest == bulk_hash(new)
    got.release()


async def test_a_warm_read_remembers_what_it_hashed(ost: OST, cl: Client):
    data = os.urandom(3 * MB)
    cl.write(1, 0, data)  # plain bytes: no digests to remember
    await ost.commit()
    first = read(cl, 1, 0, 3 * MB)
    assert type(first) is HashedBulk and bytes(first) == data
    again = read(cl, 1, 0, 3 * MB)
    assert type(again) is FileBulk and again.digest == bulk_hash(data)
    again.release()
    cl.call("punch", {"oid": 1, "size": MB + 7})
    await ost.commit()
    got = read(cl, 1, 0, 3 * MB)
    assert type(got) is not FileBulk and bytes(got) == data[:MB + 7]


async def test_a_refused_replay_leaves_no_digests_behind(ost: OST, cl: Client):
    old, other = os.urandom(MB), os.urandom(MB)
    first = cl.write(1, 0, received(old))
    await ost.commit()
    # a replayed write whose object moved on since (VBR): refused, nothing of it stays
    req = m.Request(99, "write", ost.name, {"oid": 1, "offset": 0}, bulk=received(other))
    req.flags, req.transno = m.FLAG_REPLAY, first.transno + 1000
    req.pre_versions = [first.transno + 500]
    reply, _ = ost.handle("client-2", req)
    assert reply.status == "EOVERFLOW"
    got = read(cl, 1, 0, MB)
    assert type(got) is FileBulk and got.digest == bulk_hash(old) and file_bytes(got) == old
    got.release()
