"""The lock replay after a failover (node/locks.py `_replay`), asked directly: a lock is
granted again only where what its client kept under it is still true, and a hostile or
malformed request changes nothing. (tests/scenarios/test_md_locks_faults.py replays through
a real MDS failover.)"""

from __future__ import annotations

import asyncio
import os

import pytest

from shoal.client.client import Client
from shoal.cluster.local import LocalCluster
from shoal.errors import InvalidArgument
from shoal.protocol.ldlm import REPLAY_MAX, REPLAY_OP, Bits
from shoal.protocol.messages import ROOT_INO

UPDATE, LOOKUP, OPEN = int(Bits.UPDATE), int(Bits.LOOKUP), int(Bits.OPEN)


def test_a_lock_is_granted_again_only_where_what_was_kept_is_still_true(
        cluster: LocalCluster) -> None:
    async def go() -> None:
        name = f"lr-{os.getpid()}"
        async with Client.from_cluster_dir(cluster.dir) as c:
            a = await c.create(f"/{name}", 0o644)

            async def granted(*locks: dict) -> list[int]:
                reply = await c.mdt.call(REPLAY_OP, {"locks": list(locks)})
                got = reply.data["granted"]
                await c.mdt.call("ldlm_cancel", {"handles": [g[1] for g in got]})
                return [g[0] for g in got]

            same = {"h": 1, "ino": a.ino, "bits": UPDATE | LOOKUP, "version": a.version,
                    "ctime": a.ctime, "names": [[ROOT_INO, name]]}
            assert await granted(same) == [1]
            assert await granted({**same, "h": 2, "version": a.version + 1}) == []
            assert await granted({**same, "h": 3, "ctime": a.ctime + 1}) == []
            assert await granted({**same, "h": 4, "names": [[ROOT_INO, name + "x"]]}) == []
            assert await granted({**same, "h": 5, "bits": UPDATE}) == [5]
            # an OPEN lock only with a handle of this client's open on the file
            assert await granted({"h": 6, "ino": a.ino, "bits": OPEN}) == []
            f = await c.open(f"/{name}", os.O_WRONLY)
            assert await granted({"h": 7, "ino": a.ino, "bits": OPEN}) == [7]
            await f.close()
            # changed since: no longer granted
            await c.chmod(f"/{name}", 0o600)
            assert await granted({**same, "h": 8}) == []
            # malformed entries are passed over, the rest granted
            ok = {**same, "h": 9, "version": (await c.stat(f"/{name}")).version,
                  "ctime": (await c.stat(f"/{name}")).ctime}
            assert await granted("x", {"h": "y"}, {**ok, "bits": 0x400},
                                 {**ok, "ino": 10**12}, {**ok, "names": "no"},
                                 {**ok, "h": 10}) == [10]
            for bad in ("x", list(range(REPLAY_MAX + 1))):
                with pytest.raises(InvalidArgument):
                    await c.mdt.call(REPLAY_OP, {"locks": bad})

    asyncio.run(go())
