"""Locks under faults (issue 20): a holder that stops answering its callbacks is evicted and
the change goes on; an MDT failover drops every client's cache, and the clients see what
changed after it. Each under `shoal load`, whose data is then checked."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shoal.client.client import Client
from shoal.cluster.local import LocalCluster
from shoal.errors import NotFound
from tests.helpers import read_all
from tests.scenarios.harness import Load, assert_clean, served_by, wait_for, write_fs_defs

pytestmark = pytest.mark.timeout(180)

MDS_A, MDS_B = "nid00060", "nid00061"

# Takes a lock on argv[2] (a getattr that caches), says "held", then for each line on stdin
# prints the mode it sees now.
HOLDER = """
import asyncio, sys
from shoal.client.client import Client
async def main():
    async with Client.from_cluster_dir(sys.argv[1], locks=True) as c:
        attr = await c.stat(sys.argv[2])
        await c.getattr(attr.ino)
        print("held", flush=True)
        loop = asyncio.get_running_loop()
        while (await loop.run_in_executor(None, sys.stdin.readline)):
            try:
                print(oct((await c.getattr(attr.ino)).mode & 0o777), flush=True)
            except Exception as exc:
                print(type(exc).__name__, flush=True)
asyncio.run(main())
"""


def chmod(cl: LocalCluster, path: str, mode: int) -> None:
    async def go() -> None:
        async with Client.from_cluster_dir(cl.dir) as c:
            await c.chmod(path, mode)

    asyncio.run(go())


def test_a_silent_holder_is_evicted_and_an_mdt_failover_drops_the_caches(
        tmp_path: Path) -> None:
    """Under load: a holder that stops answering its callbacks is evicted after LDLM_TIMEOUT
    (2 s here) and the change goes on; then the MDS node dies, and a client that kept
    attributes from before sees a change made after the failover."""
    cl = LocalCluster(tmp_path / "cluster")
    cl.up(write_fs_defs(tmp_path / "fs_defs", "LDLM_TIMEOUT=2"), timeout=90)
    holder = None
    try:
        load = Load(cl, clients=4, duration=16.0)
        load.wait_writing()
        asyncio.run(_create(cl, "/held"))
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(cl.dir), "/held"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "held"
        os.kill(holder.pid, signal.SIGSTOP)  # it will never answer the callback
        t0 = time.monotonic()
        chmod(cl, "/held", 0o600)  # waits for the holder's eviction (LDLM_TIMEOUT 2 s)
        waited = time.monotonic() - t0
        os.kill(holder.pid, signal.SIGCONT)
        time.sleep(0.5)  # it reads the eviction notice that waited in its socket
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "0o600"  # not what it had kept
        assert waited >= 1.5, f"the change went on after {waited:.1f}s, before the eviction"
        asyncio.run(_kept_through_a_failover(cl))
        assert_clean(load.result())
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        cl.down()


async def _create(cl: LocalCluster, path: str) -> None:
    async with Client.from_cluster_dir(cl.dir) as c:
        await c.create(path, 0o644)


async def _kept_through_a_failover(cl: LocalCluster) -> None:
    """Attributes kept, an open kept idle and one in use, through an MDS failover: the
    client replays its locks once the new MDT's recovery is over, and keeps what is still
    true; a change after it calls the replayed locks back as any."""
    async with Client.from_cluster_dir(cl.dir, locks=True) as a, \
            Client.from_cluster_dir(cl.dir) as plain:
        f = await a.create("/kept", 0o644)
        await a.getattr(f.ino)
        md, opens = a.mdt.md_locks, a.mdt.opens
        assert md is not None and md.attrs(f.ino) is not None and opens is not None
        await a.write_file("/kept-idle", b"idle")
        await a.write_file("/kept-busy", b"busy")
        assert await read_all(a, "/kept-idle") == b"idle"
        busy = await a.open("/kept-busy")
        idle = (await a.stat("/kept-idle")).ino
        assert {idle, busy.attr.ino} <= set(opens.kept)
        await a.mdt.sync()  # a change replayed after the failover moves its ctime again
        assert cl.kill_node(MDS_A)
        await asyncio.to_thread(wait_for, "the MDT on the backup",
                                served_by(cl, MDS_B, ["scratch-MDT0000"]), 60)
        await asyncio.to_thread(chmod, cl, "/kept", 0o600)
        assert (await a.getattr(f.ino)).mode & 0o777 == 0o600  # its replayed lock went
        # the rest was still true: kept, and served with no MDT request
        sent = a.mdt.requests_sent
        assert await read_all(a, "/kept-idle") == b"idle"
        assert await busy.read(offset=0) == b"busy"
        await busy.close()
        assert a.mdt.requests_sent == sent
        assert {idle, busy.attr.ino} <= set(opens.kept)
        await plain.unlink("/kept-idle")  # call the replayed OPEN locks back: closed
        await plain.unlink("/kept-busy")
        await opens.settle()
        for ino in (idle, busy.attr.ino):  # no handle left open on the new MDT: gone
            with pytest.raises(NotFound):
                await plain.open_inode(ino, os.O_RDONLY)
