"""The mount's read-ahead (mount/cache.py ReadAhead) against a real cluster: the kernel sends
a stream's requests concurrently, and they arrive a little out of order. Those must still be
served from the chunks read ahead, each fetched once, and never as random reads of their own."""

from __future__ import annotations

import asyncio
import os
import random

from shoal.client.client import Client
from shoal.mount.cache import ReadAhead
from tests.helpers import ost_reads

MiB = 1 << 20
REQ = 128 << 10  # a FUSE read request



def test_requests_out_of_order_are_served_from_the_read_ahead(cluster):
    size = 24 * MiB

    async def go() -> None:
        async with Client.from_cluster_dir(cluster.dir) as c:
            f = await c.open("/ra-order", os.O_RDWR | os.O_CREAT | os.O_TRUNC,
                             stripe_count=4, stripe_size=MiB)
            data = os.urandom(size)
            await f.write(data, 0)
            await f.fsync()
            ra = ReadAhead(c, chunk=4 * MiB, window=8 * MiB)
            rng = random.Random(7)
            offsets = list(range(0, size, REQ))
            # bursts of up to 12 requests (FUSE's max_background), shuffled within a burst:
            # a straggler just behind a chunk boundary arrives after its successor
            before = ost_reads(cluster.dir)
            got = bytearray(size)
            # the first request comes alone (the kernel's synchronous read at offset 0)
            for i in [0, *range(1, len(offsets), 12)]:
                burst = offsets[i:i + 12] if i else [0]
                rng.shuffle(burst)

                async def one(off: int) -> None:
                    got[off:off + REQ] = await ra.read(f, off, REQ)

                await asyncio.gather(*(one(off) for off in burst))
            reads = ost_reads(cluster.dir) - before
            assert got == data
            # every 4 MiB chunk is one stripe row: one read RPC per OST, and no other read
            assert reads == (size // (4 * MiB)) * 4, reads
            assert ra.next_off == size
            await f.close()
            await c.unlink("/ra-order")

    asyncio.run(go())


def test_a_jump_is_random_access_and_a_return_restarts_the_stream(cluster):
    async def go() -> None:
        async with Client.from_cluster_dir(cluster.dir) as c:
            f = await c.open("/ra-jump", os.O_RDWR | os.O_CREAT | os.O_TRUNC,
                             stripe_count=2, stripe_size=MiB)
            data = os.urandom(64 * MiB)
            await f.write(data, 0)
            await f.fsync()
            ra = ReadAhead(c, chunk=2 * MiB, window=4 * MiB)
            assert bytes(await ra.read(f, 0, REQ)) == data[:REQ]
            await asyncio.gather(*ra.chunks.values())  # the read-ahead's RPCs are done
            far = 40 * MiB + 4096
            assert not ra.is_sequential(far)
            before = ost_reads(cluster.dir)
            assert bytes(await ra.read(f, far, REQ)) == data[far:far + REQ]
            assert ost_reads(cluster.dir) - before == 1  # exactly what was asked
            # the chunks read ahead at the start are still there: going back is sequential
            assert ra.is_sequential(REQ)
            assert ra.is_sequential(far + REQ)  # and so is carrying on after the jump
            assert bytes(await ra.read(f, far + REQ, REQ)) == data[far + REQ:far + 2 * REQ]
            await f.close()
            await c.unlink("/ra-jump")

    asyncio.run(go())
