"""Large cold OST reads on worker threads (target/ost_deferred.py), and readahead.

A real OST on tmp_path with deferred_reads on. A cold read is made cold by dropping the
object's clean pages (POSIX_FADV_DONTNEED after the commit's fsync). The type of the bulk
tells the paths apart: a DeferredRead was deferred; a HashedBulk came from read_cached or
read_whole (with its BLAKE3 digest); bytes from the ordinary read (read_plain, or a
DeferredRead's redo).
"""

from __future__ import annotations

import asyncio
import errno
import os
import types
from pathlib import Path
from typing import Any

import pytest

from shoal.errors import IOFailure
from shoal.net.frame import HashedBulk, bulk_hash
from shoal.node.health import HealthMonitor
from shoal.node.locks import NodeLocks
from shoal.node.quota_slave import QuotaSlaves
from shoal.node.server import NodeServer
from shoal.protocol import messages as m
from shoal.target import ost as ost_mod
from shoal.target import ost_deferred, ost_files
from shoal.target.ost import OST
from shoal.target.ost_deferred import DEFER_MIN, DeferredRead, read_cached, read_whole
from shoal.target.ost_files import Readahead, object_path
from tests.unit.ost_client import NAME, Client

MB = 1 << 20


pytestmark = pytest.mark.usefixtures("deferred_reads")


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache; skip if this system keeps them anyway."""
    fd = os.open(path, os.O_RDONLY)
    try:
        # RANDOM: the probe below must not start a readahead that warms what it checks
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        try:
            os.preadv(fd, [bytearray(4096)], 0, os.RWF_NOWAIT)
        except BlockingIOError:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # whatever the probe read
            return
    finally:
        os.close(fd)
    pytest.skip("cannot make a file cold here (RWF_NOWAIT still answers)")


async def committed(ost: OST, cl: Client, oid: int, content: bytes, *, cold: bool = True) -> None:
    for off in range(0, len(content), 4 * MB):
        assert cl.write(oid, off, content[off:off + 4 * MB]).status is None
    await ost.commit()
    if cold:
        evict(object_path(ost.objects_dir, oid))


def read(cl: Client, oid: int, offset: int, length: int) -> m.Reply:
    r = cl.call("read", {"oid": oid, "offset": offset, "length": length})
    assert r.status is None, r.message
    return r


async def deferred(ost: OST, cl: Client, content: bytes, length: int = 2 * MB) -> m.Reply:
    """Object 1 holds content, committed and cold; a read of its first length bytes, deferred."""
    await committed(ost, cl, 1, content)
    r = read(cl, 1, 0, length)
    assert isinstance(r.bulk, DeferredRead)
    return r


# -- which reads are deferred --------------------------------------------------------------
@pytest.mark.parametrize("offset,length", [(0, 2 * MB), (0, 8 * MB), (MB, 4 * MB), (100, 2 * MB),
                                           (4096, MB), (2 * MB - 4096, MB + 4096)])
async def test_cold_large_read_is_deferred(ost: OST, cl: Client, offset: int,
                                                      length: int) -> None:
    content = os.urandom(3 * MB + 100)  # the end is not block aligned
    await committed(ost, cl, 1, content)
    r = read(cl, 1, offset, length)
    assert isinstance(r.bulk, DeferredRead)
    got = await r.bulk.resolve()
    assert type(got) is HashedBulk  # read_whole did it, no redo
    # clipped at the object's end, like an ordinary read: no zeros appended past it
    assert bytes(got) == content[offset:offset + length]
    assert r.data == {"size": len(content)}


@pytest.mark.parametrize("offset,length", [
    (0, DEFER_MIN - 1),  # small
    (3 * MB, MB),  # only 100 bytes left before the end: small
    (5 * MB, MB),  # past the end
])
async def test_small_or_past_the_end_is_answered_at_once(
        ost: OST, cl: Client, offset: int, length: int) -> None:
    content = os.urandom(3 * MB + 100)
    await committed(ost, cl, 1, content)
    r = read(cl, 1, offset, length)
    assert type(r.bulk) is bytes and r.bulk == content[offset:offset + length]


async def test_deferred_reads_off_answers_at_once(ost: OST, cl: Client) -> None:
    content = os.urandom(2 * MB)
    await committed(ost, cl, 1, content)
    ost.deferred_reads = False
    r = read(cl, 1, 0, 2 * MB)
    assert type(r.bulk) is bytes and r.bulk == content


async def test_warm_read_comes_from_the_page_cache_at_once(ost: OST, cl: Client) -> None:
    content = os.urandom(2 * MB)
    await committed(ost, cl, 1, content)  # cold
    ost.deferred_reads = False
    read(cl, 1, 0, 2 * MB)  # an ordinary read brings it into the cache
    ost.deferred_reads = True
    r = read(cl, 1, 0, 2 * MB)
    assert type(r.bulk) is HashedBulk and r.bulk == content  # read_cached


async def test_pending_changes_are_read_at_once_with_them(ost: OST, cl: Client) -> None:
    content = os.urandom(2 * MB)
    await committed(ost, cl, 1, content)
    cl.write(1, 10, b"new")  # in the log: the file is not the whole truth
    r = read(cl, 1, 0, 2 * MB)
    assert type(r.bulk) is bytes and r.bulk == content[:10] + b"new" + content[13:]
    # and while a commit of it is in flight (the in-flight log)
    commit = asyncio.create_task(ost.commit())
    await asyncio.sleep(0)
    assert ost._inflight.get(1)
    r = read(cl, 1, 0, 2 * MB)
    assert not isinstance(r.bulk, DeferredRead)
    assert bytes(r.bulk or b"") == content[:10] + b"new" + content[13:]
    await commit


# -- between decision and resolve ----------------------------------------------------------
async def test_a_commit_of_the_object_before_resolve_reads_the_new_data(
        ost: OST, cl: Client) -> None:
    old, new = os.urandom(2 * MB), os.urandom(3 * MB)
    r = await deferred(ost, cl, old, 4 * MB)
    await committed(ost, cl, 1, new)  # written and committed before the thread reads
    got = await r.bulk.resolve()
    assert type(got) is bytes and got == new  # the redo: the whole new object
    assert r.data == {"size": 3 * MB}  # the reply says the size it read at


@pytest.mark.parametrize("change", ["uncommitted write of it", "committed write of another"])
async def test_a_change_that_leaves_its_file_alone_keeps_the_deferred_read(
        ost: OST, cl: Client, change: str) -> None:
    # the read was decided first: the file is still what it was then, and it is read whole
    old = os.urandom(2 * MB)
    r = await deferred(ost, cl, old)
    if change == "uncommitted write of it":
        cl.write(1, 0, b"later")
    else:
        cl.write(2, 0, b"other")
        await ost.commit()
    got = await r.bulk.resolve()
    assert type(got) is HashedBulk and bytes(got) == old


async def test_too_many_commits_since_are_assumed_to_touch_it(ost: OST, cl: Client) -> None:
    old = os.urandom(2 * MB)
    r = await deferred(ost, cl, old)
    for i in range(70):  # more than the commits it remembers
        cl.write(2, i, b"x")
        await ost.commit()
    got = await r.bulk.resolve()
    assert type(got) is bytes and got == old  # redone the ordinary way: same bytes


@pytest.mark.parametrize("commit", [False, True])
async def test_a_destroyed_object_does_not_crash_resolve(ost: OST, cl: Client,
                                                         commit: bool) -> None:
    old = os.urandom(2 * MB)
    r = await deferred(ost, cl, old)
    assert cl.call("destroy", {"oids": [1]}).status is None
    if commit:
        await ost.commit()
        assert not object_path(ost.objects_dir, 1).exists()
    got = await r.bulk.resolve()
    if commit:
        assert bytes(got) == b"" and r.data == {"size": 0}  # gone, as a read now says
    else:
        assert bytes(got) == old  # the file is still there, as it was when decided


async def test_an_unreadable_file_is_redone_the_ordinary_way(ost: OST, cl: Client,
                                                             monkeypatch: Any) -> None:
    old = os.urandom(2 * MB)
    r = await deferred(ost, cl, old)

    def fail(*a: object) -> None:
        raise OSError(errno.EIO, "the disk failed")

    monkeypatch.setattr(ost_deferred, "read_whole", fail)
    assert await r.bulk.resolve() == old


async def test_a_failing_deferred_read_answers_eio_like_a_synchronous_one(
        ost: OST, cl: Client, monkeypatch: Any) -> None:
    await committed(ost, cl, 1, os.urandom(2 * MB))

    def eio(*a: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(ost_deferred, "read_whole", eio)
    monkeypatch.setattr(ost_mod, "read_plain", eio)
    node = NodeServer.__new__(NodeServer)  # just what _handle uses, no cluster directory
    node.services, node.recovery, node.service_at = {NAME: ost}, {}, {}
    node.gate, node._next_id, node.health = None, 0, HealthMonitor(node.services)
    node.locks = NodeLocks(lambda *a: None, lambda *a: None, 10.0)  # none attached
    node.quota = QuotaSlaves(None, node.services)  # type: ignore[arg-type]  # asks nothing
    conn = types.SimpleNamespace(client_uuid="c1")
    req = m.Request(1, "read", NAME, {"oid": 1, "offset": 0, "length": 2 * MB})
    ost.deferred_reads = False
    sync = await node._handle(conn, req)  # type: ignore[arg-type]
    assert sync is not None and sync.status == "EIO"
    ost.deferred_reads = True
    try:
        deferred = await node._handle(conn, req)  # type: ignore[arg-type]
    except IOFailure:
        deferred = None
    assert deferred is not None and deferred.status == "EIO"


# -- read_whole and read_cached on their own ----------------------------------------------
@pytest.mark.parametrize("size", [0, 100, 4096, 5000, 3 * 4096, 3 * 4096 + 1])
def test_read_whole_zero_fills_past_the_end(tmp_path: Path, size: int) -> None:
    n = 4 * 4096 + 10
    junk = tmp_path / "junk"
    junk.write_bytes(b"\xFF" * n)
    first = read_whole(junk, 0, n)  # leaves junk in a pooled buffer of this size
    assert bytes(first) == b"\xFF" * n
    del first  # free for reuse: the next read may get the same buffer
    path = tmp_path / "short"
    content = os.urandom(size)
    path.write_bytes(content)
    got = read_whole(path, 0, n)
    assert len(got) == n and bytes(got) == content + bytes(n - size)
    if size > 4096:
        got = read_whole(path, 4096, n)
        assert bytes(got) == content[4096:] + bytes(n - (size - 4096))


def test_read_deferred_reads_what_was_just_written(tmp_path: Path) -> None:
    # a thread reads the same page cache the loop wrote through
    path = tmp_path / "f"
    content = os.urandom(2 * MB)
    with open(path, "wb") as f:
        f.write(content)  # no fsync: the pages are dirty
    assert bytes(read_whole(path, MB, MB)) == content[MB:]


def test_read_whole_of_a_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        read_whole(tmp_path / "nope", 0, MB)


def test_read_cached_answers_only_what_the_cache_holds(tmp_path: Path) -> None:
    path = tmp_path / "f"
    content = os.urandom(2 * MB)
    path.write_bytes(content)
    assert read_cached(None, 0, MB) is None
    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, 2 * MB, 0)
        got = read_cached(fd, MB, MB)
        assert got is not None and bytes(got) == content[MB:]
        os.fsync(fd)
        evict(path)
        assert read_cached(fd, 0, MB) is None
    finally:
        os.close(fd)


# -- readahead -----------------------------------------------------------------------------
@pytest.fixture
def advised(monkeypatch: Any) -> list[tuple[int, int]]:
    return advised_calls(monkeypatch)


def advised_calls(monkeypatch: Any) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []

    def record(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_WILLNEED
        calls.append((offset, length))

    monkeypatch.setattr(ost_files.os, "posix_fadvise", record)
    return calls


def test_sequential_reads_advance_the_window(advised: list[tuple[int, int]]) -> None:
    n = 256 << 10
    ra = Readahead(depth=6, min_io=n)
    ra.after_read(3, 1, 0, n)  # the first read: nothing to follow yet
    assert advised == [] and ra._next[1] == (n, 0)
    ra.after_read(3, 1, n, n)  # sequential: the next 6 extents
    assert advised == [(2 * n, 6 * n)] and ra._next[1] == (2 * n, 8 * n)
    ra.after_read(3, 1, 2 * n, n)  # only what is not already ahead
    assert advised[1:] == [(8 * n, n)] and ra._next[1] == (3 * n, 9 * n)


def test_non_sequential_small_or_fileless_reads_do_not(advised: list[tuple[int, int]]) -> None:
    n = 256 << 10
    ra = Readahead(depth=6, min_io=n)
    ra.after_read(3, 1, 0, n)
    ra.after_read(3, 1, 5 * n, n)  # a jump
    ra.after_read(3, 1, 6 * n, n - 1)  # sequential, but small
    ra.after_read(None, 1, 7 * n - 1, n)  # sequential, but no file
    ra.after_read(3, 2, n, n)  # another object's first read
    assert advised == [] and ra._next == {1: (8 * n - 1, 0), 2: (2 * n, 0)}


def test_forget_and_the_object_limit(advised: list[tuple[int, int]]) -> None:
    ra = Readahead(max_objects=3)
    for oid in range(5):
        ra.after_read(3, oid, 0, 10)
    assert list(ra._next) == [2, 3, 4]  # least recently read go first
    ra.after_read(3, 2, 10, 10)
    assert list(ra._next) == [3, 4, 2]
    ra.forget(3)
    ra.forget(99)  # unknown: nothing to do
    assert list(ra._next) == [4, 2]


def test_reading_again_from_the_start_reads_ahead_again(advised: list[tuple[int, int]]) -> None:
    n = 256 << 10
    ra = Readahead(depth=6, min_io=n)
    ra.after_read(3, 1, 100 * n, n)
    ra.after_read(3, 1, 101 * n, n)
    advised.clear()
    ra.after_read(3, 1, 0, n)
    ra.after_read(3, 1, n, n)
    assert advised == [(2 * n, 6 * n)]


async def test_the_ost_reads_ahead_of_sequential_reads(ost: OST, cl: Client,
                                                       advised: list[tuple[int, int]]) -> None:
    ost.deferred_reads = False  # the ordinary path is where readahead runs
    await committed(ost, cl, 1, os.urandom(4 * MB), cold=False)
    n = 512 << 10
    read(cl, 1, 0, n)
    read(cl, 1, n, n)
    assert advised == [(2 * n, 6 * n)]
    assert ost._readahead._next[1] == (2 * n, 8 * n)
    cl.call("destroy", {"oids": [1]})
    assert 1 not in ost._readahead._next


async def test_large_reads_read_ahead_too_cached_or_deferred(
        ost: OST, cl: Client, monkeypatch: Any) -> None:
    # a stream of large reads is what most needs the disk kept busy ahead of it
    content = os.urandom(8 * MB)
    await committed(ost, cl, 1, content)  # cold: evicting advises too, so record only after
    advised = advised_calls(monkeypatch)
    first = read(cl, 1, 0, MB)
    assert isinstance(first.bulk, DeferredRead) and advised == []
    second = read(cl, 1, MB, MB)
    assert advised == [(2 * MB, 6 * MB)]
    assert isinstance(second.bulk, DeferredRead)
    assert bytes(await second.bulk.resolve()) == content[MB:2 * MB]


@pytest.mark.parametrize("size", [0, 100, 256 << 10, (256 << 10) + 1, 3 * MB + 7])
def test_the_digest_is_that_of_the_bytes_handed_out(tmp_path: Path, size: int) -> None:
    # the frame is signed with it unhashed (net/frame.py): one wrong byte of it and every
    # client refuses the reply
    path = tmp_path / "f"
    content = os.urandom(size)
    path.write_bytes(content)
    n = 2 * MB
    got = read_whole(path, 0, n)
    assert bytes(got) == content[:n] + bytes(max(0, n - size))
    assert got.digest == bulk_hash(bytes(got))
    fd = os.open(path, os.O_RDONLY)
    try:
        cached = read_cached(fd, 0, min(n, size))  # just written: all in the page cache
    finally:
        os.close(fd)
    assert cached is not None and cached.digest == bulk_hash(content[:n])
