"""Issue 23's done-when scenarios: a user writing past the block hard limit gets EDQUOT from
the library, and an MDS failover (the quota master's node) or an OSS failover (a slave's)
in the middle of the writing changes nothing: the writer carries on through it (a write
past its OST's grant waits for the master), EDQUOT comes at the limit and no other error
before it, the usage reported is within the limit and equals a recount of what the targets
hold, every byte acknowledged before EDQUOT reads back, the limits still hold, and the
`shoal load` running all along loses nothing either. (Through the mount: tests/mount/
test_quota_mount.py.)

Nodes (src/shoal/cluster/scratch.fs_defs): nid00060 serves MGS+MDT0000 (backup nid00061);
nid00062 serves OST0000 and OST0002 (backup nid00063). Files are striped over all four
OSTs (the default layout), so every file has objects on both nodes' OSTs.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from dataclasses import dataclass, field

import pytest

from shoal.client import quota
from shoal.client.client import Client
from shoal.cluster.local import LocalCluster
from shoal.errors import QuotaExceeded
from shoal.protocol import quota as q
from tests.scenarios.harness import Load, Probe, assert_clean, served_by, set_fail, wait_for

MiB = 1 << 20
MDS_A, MDS_B = "nid00060", "nid00061"
OSS_A, OSS_B = "nid00062", "nid00063"
MDS_TARGETS = ["MGS", "scratch-MDT0000"]
A_OSTS = ["scratch-OST0000", "scratch-OST0002"]

HARD_KIB = 24 << 10  # 24 MiB over 4 OSTs
IHARD = 16  # inodes: the directory, the files written, then creates up to it
# each file over all four OSTs, 4 MiB on each, written a piece at a time; the node dies
# KILL_AT into the first (1 MiB on each OST): what follows passes the OSTs' grants (their
# headroom is 2.5 MiB at most) while the node is down, so that a write waits for it
FILE = 16 * MiB
PIECE = 256 << 10
KILL_AT = 4 * MiB

pytestmark = pytest.mark.timeout(150)


@dataclass
class Written:
    """What the user's writer was told is done; the test thread reads `acked`."""

    files: dict[str, str] = field(default_factory=dict)  # closed whole: path -> sha256
    partial: tuple[str, bytes] | None = None  # the file EDQUOT stopped: what got in
    acked: int = 0  # bytes acknowledged so far
    stall: float = 0.0  # the longest write after the kill
    edquot: QuotaExceeded | None = None
    reached: threading.Event = field(default_factory=threading.Event)  # acked >= KILL_AT
    killed: threading.Event = field(default_factory=threading.Event)  # the node is dead


async def write_until_edquot(c: Client, w: Written) -> None:
    """Files of FILE bytes in PIECE writes until EDQUOT; pauses once KILL_AT bytes are
    acknowledged until the test has killed the node, then writes on through the failover.
    Any error but EDQUOT propagates (and fails the test)."""
    i = 0
    while True:
        path = f"/quser/f{i:03d}"
        data = os.urandom(FILE)
        f = await c.open(path, os.O_WRONLY | os.O_CREAT)
        done = 0
        try:
            for off in range(0, FILE, PIECE):
                if w.acked >= KILL_AT and not w.killed.is_set():
                    w.reached.set()
                    while not w.killed.is_set():
                        await asyncio.sleep(0.02)
                t0 = time.monotonic()
                await f.write(data[off:off + PIECE], off)
                if w.killed.is_set():
                    w.stall = max(w.stall, time.monotonic() - t0)
                done = off + PIECE
                w.acked += PIECE
        except QuotaExceeded as exc:
            w.edquot = exc
            w.partial = (path, data[:done])
            await f.close()
            return
        await f.close()
        w.files[path] = hashlib.sha256(data).hexdigest()
        i += 1
        assert i < 64, "no EDQUOT after 128 MiB"


def through_a_failover(cl: LocalCluster, uid: int, node: str, backup: str,
                       moved: list[str], *, barrier: str = "") -> None:
    """`barrier`: targets of `node` (a glob) that stop committing once the load writes (a
    replay barrier): what the user wrote to them before the kill is all replayed."""
    load = Load(cl, clients=4, duration=7.0)
    probe = Probe()
    admin = probe.client(cl)
    user = probe.client(cl, uid=uid, gid=uid, name="quota-user")
    clients = [admin, user]
    try:
        probe.run(admin.mkdir("/quser"))
        probe.run(admin.chown("/quser", uid, uid))
        assert probe.run(quota.set_quota(admin, "u", uid, bhard=HARD_KIB, ihard=IHARD)) == []
        load.wait_writing()
        if barrier:
            set_fail(cl, node, loc="0x720", target=barrier)
        w = Written()
        writer = probe.start(write_until_edquot(user, w))
        assert w.reached.wait(30), "the user did not get KILL_AT written"
        t0 = time.monotonic()
        assert cl.kill_node(node)
        w.killed.set()
        wait_for(f"{moved} on {backup}", served_by(cl, backup, moved), timeout=40)
        writer(60.0)  # EDQUOT and nothing else
        took = time.monotonic() - t0
        assert w.edquot is not None
        assert w.acked > KILL_AT, "nothing written after the kill"
        if barrier:  # the user's writes behind it were replayed on the backup
            replays = {t: user.osts[int(t[-4:])].sm.replays_sent for t in moved}
            assert all(replays.values()), replays
        # a write past its grant waited for the node's targets on the backup
        assert w.stall > 0.5, (w.stall, took)
        # early by at most the headroom the other OSTs hold: no grant lost in the failover
        unit = q.qunit(q.Limits(bhard=HARD_KIB), "b", 4, HARD_KIB) + q.QUNIT_MIN["b"]
        assert w.acked >= (HARD_KIB - 4 * unit) * 1024, (w.acked, took)

        # the limit still holds: another file stops at it too
        async def more() -> None:
            for k in range(8):
                await user.write_file(f"/quser/more{k}", os.urandom(MiB))

        with pytest.raises(QuotaExceeded):
            probe.run(more())
        assert_clean(load.result())

        # within the limit, and what every target counts is what it holds
        probe.run(user.sync_all())
        r = probe.run(quota.get_quota(admin, "u", uid))
        assert r.unreachable == [], r
        assert r.limits.bhard == HARD_KIB and r.limits.ihard == IHARD, r
        assert w.acked // 1024 <= r.kbytes <= HARD_KIB, (w.acked, r)
        drift = probe.run(quota.check(admin))
        assert all(d == [] for d in drift.values()), drift

        # every byte acknowledged before EDQUOT reads back, from a client that never wrote
        reader = probe.client(cl, name="quota-reader")
        clients.append(reader)
        for path, digest in w.files.items():
            assert hashlib.sha256(probe.run(reader.read_file(path))).hexdigest() == digest, path
        assert w.partial is not None
        path, got_in = w.partial
        assert probe.run(reader.read_file(path))[:len(got_in)] == got_in, path

        # the inode limit holds as well: creates up to it, then EDQUOT
        used = probe.run(quota.get_quota(admin, "u", uid)).inodes
        assert used <= IHARD

        async def fill() -> None:
            for k in range(IHARD - used):
                await user.create(f"/quser/empty{k}")

        probe.run(fill())
        with pytest.raises(QuotaExceeded):
            probe.run(user.create("/quser/one-too-many"))
        assert probe.run(quota.get_quota(admin, "u", uid)).inodes == IHARD
        drift = probe.run(quota.check(admin))
        assert all(d == [] for d in drift.values()), drift
    finally:
        probe.close(*clients)


def test_a_user_past_the_hard_limit_gets_edquot_through_an_mds_failover(
        cl: LocalCluster) -> None:
    through_a_failover(cl, 7101, MDS_A, MDS_B, MDS_TARGETS)


def test_a_user_past_the_hard_limit_gets_edquot_through_an_oss_failover(
        cl: LocalCluster) -> None:
    through_a_failover(cl, 7201, OSS_A, OSS_B, A_OSTS, barrier="scratch-OST000[02]")
