"""Reads sent from the OST's page cache (sendfile with remembered piece digests) against a
real cluster: they are taken, and they never show bytes other than the object's, however
the object changed since the digests were remembered (overwrites on and off piece
boundaries, truncates, a commit racing the reads), and no frame fails its check.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re

import pytest

from shoal.client.client import Client
from tests.helpers import shoal

MiB = 1 << 20
SIZE = 24 * MiB


def sendfile_reads(cluster_dir) -> int:
    out = shoal("ctl", "get_param", "obdfilter.*.stats", cluster_dir=cluster_dir).stdout
    return sum(int(n) for n in re.findall(r"read_sendfile\s+(\d+) samples", out))


@pytest.fixture
def no_bad_frames(caplog):
    caplog.set_level(logging.WARNING, logger="shoal.net")
    yield
    bad = [r.getMessage() for r in caplog.records if "bad frame" in r.getMessage()]
    assert not bad, bad


def test_reads_after_changes_show_the_changes(cluster, no_bad_frames):
    async def go() -> None:
        model = bytearray(os.urandom(SIZE))
        async with Client.from_cluster_dir(cluster.dir) as c:
            f = await c.open("/sendfile-changes", os.O_RDWR | os.O_CREAT | os.O_TRUNC,
                             stripe_count=4, stripe_size=MiB)
            await f.write(bytes(model), 0)
            await f.fsync()
            before = sendfile_reads(cluster.dir)
            assert await f.read(SIZE, 0) == model
            assert sendfile_reads(cluster.dir) > before, "no read went out by sendfile"

            async def check(what: str) -> None:
                got = await f.read(SIZE + MiB, 0)
                assert len(got) == len(model) and got == model, what

            changes = [(MiB + 7, 100_000), (4 * MiB, 256 << 10), (9 * MiB - 10, 20),
                       (17 * MiB, 3 * MiB + 5)]
            for off, n in changes:
                data = os.urandom(n)
                model[off:off + n] = data
                await f.write(data, off)
                await check(f"pending overwrite at {off}")  # overlaid from the log
                await f.fsync()
                await c.sync_all()
                await check(f"committed overwrite at {off}")  # from the file again
            # a truncate mid-piece, then a write past a hole
            await f.truncate(10 * MiB + 1234)
            del model[10 * MiB + 1234:]
            await c.sync_all()
            await check("truncated")
            tail = os.urandom(MiB)
            await f.write(tail, 12 * MiB)
            model.extend(bytes(12 * MiB - len(model)))
            model.extend(tail)
            await c.sync_all()
            await check("extended past a hole")
            await f.close()
            await c.unlink("/sendfile-changes")

    asyncio.run(go())


def test_reads_racing_overwrites_and_commits_see_whole_versions(cluster, no_bad_frames):
    """A commit rewriting an object waits for the reads being sent from its file, so a read
    gets, piece by piece, one version or the next, never a torn mix or a failed frame."""
    pieces = 8  # 1 MiB pieces, one per write RPC
    rounds = 60

    def content(version: int) -> bytes:
        return bytes([version % 251]) * MiB

    async def go() -> None:
        async with Client.from_cluster_dir(cluster.dir) as c:
            f = await c.open("/sendfile-race", os.O_RDWR | os.O_CREAT | os.O_TRUNC,
                             stripe_count=2, stripe_size=MiB)
            for p in range(pieces):
                await f.write(content(0), p * MiB)
            await c.sync_all()
            written = [{content(0)} for _ in range(pieces)]
            stop = asyncio.Event()
            reads = 0

            async def reader() -> None:
                nonlocal reads
                while not stop.is_set():
                    got = await f.read(pieces * MiB, 0)
                    for p in range(pieces):
                        assert bytes(got[p * MiB:(p + 1) * MiB]) in written[p], p
                    reads += 1

            async def writer() -> None:
                # one piece at a time, each committed at once: the commit's thread rewrites
                # the file while reads decided a moment before are still being sent from it
                for v in range(1, rounds):
                    p = v * 3 % pieces
                    written[p].add(content(v))
                    await f.write(content(v), p * MiB)
                    await c.sync_all()
                stop.set()

            await asyncio.gather(reader(), reader(), reader(), writer())
            assert reads >= 3
            await f.close()
            await c.unlink("/sendfile-race")

    asyncio.run(go())
