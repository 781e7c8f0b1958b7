"""Read-only opens kept past their close under the MDT's OPEN lock (client/open_cache.py,
issue 20), with real clients on a real cluster: a second open and close of a file need no
MDT request, a change by another client is seen through a kept open, and a file unlinked by
another client while kept (idle, or in use) goes as soon as nobody uses it."""

from __future__ import annotations

import asyncio
import os

import pytest

from shoal.client.client import Client
from shoal.client.open_cache import OpenCache
from shoal.cluster.local import LocalCluster
from shoal.errors import InvalidArgument, NoData, NotFound
from tests.helpers import read_all


def opens(c: Client) -> OpenCache:
    assert c.mdt.opens is not None
    return c.mdt.opens


def test_a_second_open_and_close_need_no_mdt_request(cluster: LocalCluster) -> None:
    async def go() -> None:
        top = f"/oc-{os.getpid()}"
        async with Client.from_cluster_dir(cluster.dir, locks=True) as a, \
                Client.from_cluster_dir(cluster.dir, locks=True) as b:
            await b.mkdir(top)
            await b.write_file(f"{top}/f", b"first")
            assert await read_all(a, f"{top}/f") == b"first"
            ino = (await a.stat(f"{top}/f")).ino
            assert ino in opens(a).kept  # closed, and kept
            sent = a.mdt.requests_sent
            for _ in range(3):
                assert await read_all(a, f"{top}/f") == b"first"
            assert a.mdt.requests_sent == sent  # opens, stats and closes: none to the MDT
            assert opens(a).stats["hits"] == 3

            # another client's change calls back the attributes, not the open
            await b.write_file(f"{top}/f", b"second, longer")
            assert await read_all(a, f"{top}/f") == b"second, longer"
            assert opens(a).stats["hits"] == 4

            # a write open is never kept
            w = await a.open(f"{top}/f", os.O_WRONLY)
            await w.write(b"THIRD", 0)
            await w.close()
            assert await read_all(b, f"{top}/f") == b"THIRDd, longer"
            assert await read_all(a, f"{top}/f") == b"THIRDd, longer"

    asyncio.run(go())


def test_a_file_unlinked_while_kept_goes_once_nobody_uses_it(cluster: LocalCluster) -> None:
    async def go() -> None:
        top = f"/ocu-{os.getpid()}"
        async with Client.from_cluster_dir(cluster.dir, locks=True) as a, \
                Client.from_cluster_dir(cluster.dir, locks=True) as b, \
                Client.from_cluster_dir(cluster.dir) as c:
            await b.mkdir(top)
            await b.write_file(f"{top}/idle", b"idle")
            await b.write_file(f"{top}/busy", b"busy")
            assert await read_all(a, f"{top}/idle") == b"idle"
            idle = (await a.stat(f"{top}/idle")).ino
            busy_f = await a.open(f"{top}/busy")
            busy = busy_f.attr.ino
            assert idle in opens(a).kept and busy in opens(a).kept

            # the idle one: its lock is called back before the unlink is acknowledged, and
            # its handle closed, so the orphan is gone
            await b.unlink(f"{top}/idle")
            await opens(a).settle()
            assert idle not in opens(a).kept
            with pytest.raises(NotFound):
                await c.open_inode(idle, os.O_RDONLY)

            # the one in use stays readable until its close, which closes it for good
            await b.unlink(f"{top}/busy")
            assert await busy_f.read(offset=0) == b"busy"
            probe = await c.open_inode(busy, os.O_RDONLY)  # still there: a's handle is open
            await c.mdt.call("close", {"handle": probe["handle"]})
            await busy_f.close()
            assert busy not in opens(a).kept
            with pytest.raises(NotFound):
                await c.open_inode(busy, os.O_RDONLY)

            # and this client's own unlink gives its open back with the request
            await b.write_file(f"{top}/own", b"own")
            assert await read_all(a, f"{top}/own") == b"own"
            own = (await a.stat(f"{top}/own")).ino
            await a.unlink(f"{top}/own")
            await opens(a).settle()
            assert own not in opens(a).kept
            with pytest.raises(NotFound):
                await c.open_inode(own, os.O_RDONLY)

    asyncio.run(go())


def test_idle_handles_past_the_limit_are_closed_oldest_first(cluster: LocalCluster) -> None:
    async def go() -> None:
        top = f"/ocl-{os.getpid()}"
        async with Client.from_cluster_dir(cluster.dir, locks=True) as a:
            opens(a).limit = 3
            await a.mkdir(top)
            for i in range(5):
                await a.write_file(f"{top}/{i}", b"%d" % i)
            inos = []
            for i in range(5):
                assert await read_all(a, f"{top}/{i}") == b"%d" % i
                inos.append((await a.stat(f"{top}/{i}")).ino)
            await opens(a).settle()
            assert sorted(opens(a).kept) == sorted(inos[2:])
            assert opens(a).stats["closed"] == 2
            md = a.mdt.md_locks
            assert md is not None
            held = {lk.resource[1] for lk in md.cache.held() if lk.data == {"open": True}}
            assert held == set(inos[2:])  # their locks went with them

    asyncio.run(go())


def test_a_links_target_is_kept_with_its_attributes(cluster: LocalCluster) -> None:
    async def go() -> None:
        top = f"/ocs-{os.getpid()}"
        async with Client.from_cluster_dir(cluster.dir, locks=True) as a, \
                Client.from_cluster_dir(cluster.dir, locks=True) as b:
            await b.mkdir(top)
            await b.symlink("one", f"{top}/l")
            assert await a.readlink(f"{top}/l") == "one"
            sent = a.mdt.requests_sent
            assert await a.readlink(f"{top}/l") == "one"
            assert a.mdt.requests_sent == sent
            # replaced under the same name (maybe under the same inode number)
            await b.unlink(f"{top}/l")
            await b.symlink("two", f"{top}/l")
            assert await a.readlink(f"{top}/l") == "two"
            await b.write_file(f"{top}/f", b"")
            with pytest.raises(InvalidArgument):
                await a.readlink(f"{top}/f")

    asyncio.run(go())


def test_extended_attributes_are_kept_with_the_attributes(cluster: LocalCluster) -> None:
    """A create's intent says which xattrs the new file has (a writer's kernel asks for
    security.capability before every write: answered here); an answer is kept under the
    attributes' lock, and another client's change calls it back."""
    async def go() -> None:
        top = f"/ocx-{os.getpid()}"
        caps = b"security.capability"
        async with Client.from_cluster_dir(cluster.dir, locks=True) as a, \
                Client.from_cluster_dir(cluster.dir, locks=True) as b:
            await a.mkdir(top)
            made = await a.create(f"{top}/f")
            sent = a.mdt.requests_sent
            with pytest.raises(NoData):
                await a.getxattr_inode(made.ino, caps)
            assert a.mdt.requests_sent == sent  # known absent from the create
            await b.setxattr(f"{top}/f", b"user.k", b"v1")  # calls a's lock back
            await a.getattr(made.ino)  # as the kernel does first: the lock again
            assert await a.getxattr_inode(made.ino, b"user.k") == b"v1"
            sent = a.mdt.requests_sent
            assert await a.getxattr_inode(made.ino, b"user.k") == b"v1"
            assert a.mdt.requests_sent == sent  # kept
            await b.setxattr(f"{top}/f", b"user.k", b"v2")
            assert await a.getxattr_inode(made.ino, b"user.k") == b"v2"
            await a.getattr(made.ino)
            assert await a.getxattr_inode(made.ino, b"user.k") == b"v2"  # kept again
            await b.removexattr(f"{top}/f", b"user.k")
            with pytest.raises(NoData):
                await a.getxattr_inode(made.ino, b"user.k")

    asyncio.run(go())
