"""Client.pread into a reused buffer (the mount's read-ahead chunks): every byte of the
result is written anew, holes included, whatever the buffer held before."""

from __future__ import annotations

import asyncio
import os

from shoal.client.client import Client

MiB = 1 << 20


def test_pread_into_a_dirty_buffer_reads_holes_as_zeros(cluster):
    async def go() -> None:
        async with Client.from_cluster_dir(cluster.dir) as c:
            f = await c.open("/pread-into", os.O_RDWR | os.O_CREAT | os.O_TRUNC,
                             stripe_count=4, stripe_size=MiB)
            a, b = os.urandom(MiB + 100), os.urandom(300_000)
            # stripe 0 written, stripes 1-2 holes, stripe 3 short, then a row with one tail
            await f.write(a, 0)
            await f.write(b, 3 * MiB)
            tail = os.urandom(5000)
            await f.write(tail, 5 * MiB)
            want = bytearray(5 * MiB + 5000)
            want[0:len(a)] = a
            want[3 * MiB:3 * MiB + len(b)] = b
            want[5 * MiB:] = tail
            for pending in (True, False):  # from the OSTs' logs, then from their files
                for size in (len(want), 8 * MiB):
                    buf = bytearray(b"\xff") * size
                    got = await c.pread(f, 8 * MiB, 0, into=buf)
                    assert bytes(got) == bytes(want), (pending, size)
                    assert len(got) == len(want)
                small = bytearray(b"\xff") * MiB  # too small: a new buffer is used
                assert bytes(await c.pread(f, 2 * MiB, 0, into=small)) == bytes(want[:2 * MiB])
                await f.fsync()
                await c.sync_all()
            await f.close()
            await c.unlink("/pread-into")

    asyncio.run(go())
