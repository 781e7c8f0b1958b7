"""Quotas on a real cluster (issue 23): a user writing past the hard limit gets EDQUOT from
the library; inode limits; a chown moves the blocks on the OSTs; projects passed on by a
directory; the recount finds no drift. Each test has its own ids and paths."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from shoal.client import quota
from shoal.client.client import Client
from shoal.errors import CrossDevice, QuotaExceeded
from shoal.protocol.quota import QUNIT_MIN
from tests.helpers import shoal

MiB = 1 << 20
pytestmark = pytest.mark.timeout(120)


async def _usage(c: Client, qtype: str, qid: int) -> quota.QuotaReport:
    return await quota.get_quota(c, qtype, qid)


async def _until(cond, timeout: float = 20.0) -> None:  # noqa: ANN001
    """Wait for `cond()` (an async predicate): the owner log reaches the OSTs in rounds."""
    deadline = time.monotonic() + timeout
    while not await cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.2)


def test_a_user_writing_past_the_hard_limit_gets_edquot_and_the_limit_holds(cluster) -> None:
    uid, hard_kib = 6101, 24 << 10  # 24 MiB over 4 OSTs

    async def go() -> None:
        async with Client.from_cluster_dir(cluster.dir) as admin:
            assert await quota.set_quota(admin, "u", uid, bhard=hard_kib) == []
        async with Client.from_cluster_dir(cluster.dir, uid=uid, gid=uid) as c:
            await c.mkdir("/q1")
            written = 0
            with pytest.raises(QuotaExceeded):
                for i in range(64):
                    f = await c.open(f"/q1/f{i}", os.O_WRONLY | os.O_CREAT)
                    try:
                        await f.write(os.urandom(MiB), 0)
                        written += MiB
                    finally:
                        await f.close()
            await c.sync_all()
            r = await _usage(c, "u", uid)
            assert r.kbytes <= hard_kib, r
            # early by at most the headroom the other OSTs still hold
            assert written >= (hard_kib - 4 * QUNIT_MIN["b"]) * 1024 - MiB
            assert r.kbytes >= written // 1024
            # another user is not held back
        async with Client.from_cluster_dir(cluster.dir, uid=uid + 1) as other:
            await other.write_file("/q1/other", os.urandom(4 * MiB))
            assert (await _usage(other, "u", uid + 1)).kbytes >= 4 << 10
            # room again once files go
        async with Client.from_cluster_dir(cluster.dir, uid=uid, gid=uid) as c:
            for i in range(8):
                await c.unlink(f"/q1/f{i}")

            async def freed() -> bool:
                # the objects go in the background, then their OSTs give the grants back
                r = await _usage(c, "u", uid)
                return sum(t.granted for t in r.targets if t.granted > 0) <= hard_kib - 4096

            await _until(freed)
            await c.write_file("/q1/again", os.urandom(2 * MiB))

    asyncio.run(go())
    slaves = shoal("ctl", "get_param", "obdfilter.*.quota_slave", cluster_dir=cluster.dir).stdout
    assert slaves.count("conn to master: setup") == 4, slaves
    master = shoal("ctl", "get_param", "mdt.*.quota_master", cluster_dir=cluster.dir).stdout
    assert f"u {uid}: bsoft=0 bhard={hard_kib} " in master, master


def test_inode_limits_and_a_project_passed_on_by_its_directory(cluster) -> None:
    uid, proj = 6201, 6202

    async def go() -> None:
        async with Client.from_cluster_dir(cluster.dir) as admin:
            await admin.mkdir("/q2")
            await admin.mkdir("/q2/p")
            await quota.set_project(admin, "/q2/p", proj)
            await quota.set_quota(admin, "u", uid, ihard=3)
            await quota.set_quota(admin, "p", proj, bhard=64 << 10, ihard=100)
            await admin.chown("/q2", uid, uid)
            await admin.chown("/q2/p", uid, uid)
        async with Client.from_cluster_dir(cluster.dir, uid=uid, gid=uid) as c:
            await c.create("/q2/a")  # /q2 and /q2/p are the user's first two
            with pytest.raises(QuotaExceeded):
                await c.create("/q2/b")
            assert (await _usage(c, "u", uid)).inodes == 3
            assert (await c.stat("/q2/a")).projid == 0
        async with Client.from_cluster_dir(cluster.dir, uid=uid + 10) as c:
            await c.mkdir("/q2/p/sub")
            await c.write_file("/q2/p/sub/f", os.urandom(MiB))
            assert (await c.stat("/q2/p/sub/f")).projid == proj
            r = await _usage(c, "p", proj)
            assert r.inodes == 3  # the directory, its subdirectory and the file
            assert r.kbytes >= 1024
            await c.create("/q2/outside")
            with pytest.raises(CrossDevice):
                await c.rename("/q2/outside", "/q2/p/outside")
        async with Client.from_cluster_dir(cluster.dir) as admin:
            # a symbolic link gets the project itself; what it points to is left alone
            await admin.mkdir("/q2/target")
            await admin.symlink("/q2/target", "/q2/link")
            await quota.set_project(admin, "/q2/link", proj + 1)
            assert (await admin.lstat("/q2/link")).projid == proj + 1
            assert (await admin.stat("/q2/target")).projid == 0

    asyncio.run(go())


def test_a_chown_moves_the_blocks_on_the_osts_and_nothing_drifts(cluster) -> None:
    a, b = 6301, 6302

    async def go() -> None:
        async with Client.from_cluster_dir(cluster.dir, uid=a, gid=a) as c:
            await c.write_file("/q3", os.urandom(3 * MiB), stripe_count=-1)
            await c.sync_all()
            assert (await _usage(c, "u", a)).kbytes >= 3 << 10
            await c.chown("/q3", b, b)

            async def moved() -> bool:
                return ((await _usage(c, "u", a)).kbytes == 0
                        and (await _usage(c, "u", b)).kbytes >= 3 << 10)

            await _until(moved)
            drift = await quota.check(c)
            assert all(d == [] for d in drift.values()), drift

    asyncio.run(go())
