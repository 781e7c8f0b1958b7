"""A client's extent locks on the OSTs (client/data_locks.py) against a real cluster: what
the holder is told when a lock goes (a callback, its own LRU, an upgrade), and that an OST
serves a write under the lock it names without calling its holder back."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from shoal.client.client import Client
from shoal.protocol.ldlm import CANCEL_OP, ENQUEUE_OP, Mode


async def _nothing_kept(mode: Mode, data: Any) -> None:
    """A holder's release hook with nothing to land or drop."""


def test_a_callback_the_lru_and_an_upgrade_each_tell_the_holder(cluster) -> None:
    async def go() -> None:
        gone: list[tuple[Mode, Any]] = []

        async def release(mode: Mode, data: Any) -> None:
            gone.append((mode, data))

        async with Client.from_cluster_dir(cluster.dir) as holder, \
                Client.from_cluster_dir(cluster.dir) as other:
            holder.keep_data(release, limit=3)
            files = []
            for i in range(5):
                f = await holder.open(f"/data-locks-{os.getpid()}-{i}",
                                      os.O_RDWR | os.O_CREAT, stripe_count=1,
                                      stripe_offset=0)
                await f.write(b"x" * 100, 0)
                files.append(f)
            ost = holder.osts[files[0].layout.osts[0]]
            dl = ost.data_locks
            assert dl is not None
            for i, f in enumerate(files):
                await holder.osts[f.layout.osts[0]].data_locks.hold(f.layout.oid, Mode.PR, i)
            await asyncio.sleep(0.2)  # the LRU's releases run in the background
            assert sorted(d for _m, d in gone) == [0, 1]  # the two least recently used
            gone.clear()
            last = files[-1]
            dl4 = holder.osts[last.layout.osts[0]].data_locks
            # an upgrade nobody waits on keeps what the PR lock covered: the PW lock covers
            # it from then on, and the holder is told of nothing (its pages stay)
            h = await dl4.hold(last.layout.oid, Mode.PW, 4)
            assert gone == [] and dl4.handle_for(last.layout.oid, Mode.PW) == h
            assert dl4.stats["upgrades"] == dl4.stats["kept"] == 1
            # a write under the lock it names is served without a callback to its holder
            await last.write(b"y" * 10, 0)
            assert gone == []
            # another client's read calls it back: the holder is told, then cancels
            g = await other.open(last.path, os.O_RDONLY)
            assert await g.read(10, 0) == b"y" * 10
            assert gone == [(Mode.PW, 4)]
            assert not dl4.holds(last.layout.oid, Mode.PR)
            for f in (*files, g):
                await f.close()

    asyncio.run(go())


def test_an_upgrade_keeps_what_its_pr_lock_covered_only_where_nobody_waited(cluster) -> None:
    """The OST grants an upgrade (PR to PW, keeping what the PR lock covered) only where no
    request waits on the object, so that no other client's write can come between the two
    locks; where one waits it changes nothing and answers `again`: the PR lock still holds
    the writer back while the holder drops its pages, and then goes with a plain enqueue."""
    async def go() -> None:
        async with Client.from_cluster_dir(cluster.dir) as holder, \
                Client.from_cluster_dir(cluster.dir) as other:
            other.keep_data(_nothing_kept)
            path = f"/upgrade-kept-{os.getpid()}"
            f = await holder.open(path, os.O_RDWR | os.O_CREAT, stripe_count=1)
            await f.write(b"a" * 100, 0)
            oid, imp = f.layout.oid, holder.osts[f.layout.osts[0]]

            async def enqueue(mode: str, cancel: list[int], **kw: Any) -> dict[str, Any]:
                req = {"oid": oid, "mode": mode, "cancel": cancel, **kw}
                return (await imp.call(ENQUEUE_OP, req)).data

            pr = await enqueue("PR", [])
            pw = await enqueue("PW", [pr["handle"]], upgrade=True)
            assert pw["mode"] == "PW" and "again" not in pw
            pr = await enqueue("PR", [pw["handle"]])
            # another client's write waits on the PR lock (its callback goes unanswered:
            # this client's library keeps no data)
            odl = other.osts[f.layout.osts[0]].data_locks
            assert odl is not None
            waiting = asyncio.create_task(odl.hold(oid, Mode.PW))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            assert await enqueue("PW", [pr["handle"]], upgrade=True) == {"again": True}
            await asyncio.sleep(0.3)
            assert not waiting.done()  # the PR lock still holds it back
            pw = await asyncio.wait_for(enqueue("PW", [pr["handle"]]), 30)
            assert pw["mode"] == "PW"
            await imp.call(CANCEL_OP, {"handles": [pw["handle"]]})
            await asyncio.wait_for(waiting, 30)  # the other's write goes on
            await f.close()

    asyncio.run(go())


def test_a_read_brings_its_lock_with_it_unless_something_conflicts(cluster) -> None:
    """A client that keeps data asks for the PR lock with its read (one RPC, not two); where
    another client's PW lock is in the way, the read is served without one."""
    async def go() -> None:
        async with Client.from_cluster_dir(cluster.dir) as reader, \
                Client.from_cluster_dir(cluster.dir) as writer:
            reader.keep_data(_nothing_kept)
            writer.keep_data(_nothing_kept)
            path = f"/read-intent-{os.getpid()}"
            w = await writer.open(path, os.O_RDWR | os.O_CREAT, stripe_count=1)
            await w.write(b"a" * 5000, 0)
            await w.close()  # nobody writes it now: the reader does not glimpse
            w = await writer.open(path, os.O_RDONLY)
            oid, ost = w.layout.oid, w.layout.osts[0]
            rdl, wdl = reader.osts[ost].data_locks, writer.osts[ost].data_locks
            assert rdl is not None and wdl is not None
            r = await reader.open(path, os.O_RDONLY)
            await wdl.hold(oid, Mode.PW)  # in the way
            assert await r.read(5000, 0) == b"a" * 5000  # the writer's lock was called back
            assert not rdl.holds(oid, Mode.PR) and rdl.stats["enqueues"] == 0
            assert not wdl.holds(oid, Mode.PW)
            assert await r.read(5000, 0) == b"a" * 5000  # nothing in the way now
            assert rdl.holds(oid, Mode.PR) and rdl.stats["enqueues"] == 0
            await writer.truncate(path, 10)  # the punch calls the reader's lock back
            assert not rdl.holds(oid, Mode.PR)
            for f in (w, r):
                await f.close()

    asyncio.run(go())


def test_a_read_past_the_end_known_at_open_finds_what_was_written_since(cluster) -> None:
    """A file another client has open for writing: a read that asks past the size this
    open knew takes the size from the objects (a glimpse) and returns what was written."""
    async def go() -> None:
        async with Client.from_cluster_dir(cluster.dir) as reader, \
                Client.from_cluster_dir(cluster.dir) as writer:
            path = f"/read-past-end-{os.getpid()}"
            w = await writer.open(path, os.O_RDWR | os.O_CREAT, stripe_count=2,
                                  stripe_size=65536)
            await w.write(b"a" * 1000, 0)
            r = await reader.open(path, os.O_RDONLY)
            assert r.size == 1000 and r.attr.writers
            await w.write(b"b" * 100_000, 1000)  # into the second stripe's object too
            assert await r.read(200, 900) == b"a" * 100 + b"b" * 100
            assert await r.read(10, 100_990) == b"b" * 10
            assert await r.read(10, 101_000) == b""
            for f in (w, r):
                await f.close()

    asyncio.run(go())
