"""Issue 24: Lustre's own recovery test cases that lost acknowledged changes, each under
`shoal load` and ending with the data checked.

- replay-single 62: the reply to a replay is lost on the backup;
- replay-vbr 7a / replay-dual 0a: a lost client's creates beside a survivor's in one directory,
  and the dependent case (a name the lost client unlinked) that must still be refused;
- a client whose first MDT change came after the last commit;
- recovery-small 100: IR=off is off;
- replay-single 20b / 34: an evicted client's orphans give their OST objects back.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from shoal.client.client import Client
from shoal.cluster.local import LocalCluster
from shoal.errors import IOFailure
from shoal.protocol.fail_loc import FAIL_ONCE, Code
from tests.helpers import shoal
from tests.scenarios.harness import (
    Load,
    Probe,
    assert_clean,
    events,
    node_log,
    params,
    recovery_status,
    served_by,
    set_fail,
    wait_for,
    write_fs_defs,
)

MDS_A, MDS_B = "nid00060", "nid00061"
OSS_A, OSS_B = "nid00062", "nid00063"
MDT = "scratch-MDT0000"
A_OSTS = ["scratch-OST0000", "scratch-OST0002"]

pytestmark = pytest.mark.timeout(150)


def mdt_fails_over(cl: LocalCluster) -> None:
    assert cl.kill_node(MDS_A)
    wait_for("MGS and MDT on the backup", served_by(cl, MDS_B, ["MGS", MDT]), timeout=40)


# -- replay-single 62 ------------------------------------------------------------------------
def test_a_lost_reply_to_a_replay_is_resent_inside_the_window(cl: LocalCluster) -> None:
    load = Load(cl, clients=4, duration=9.0)
    probe = Probe()
    c = probe.client(cl)
    try:
        probe.run(c.mkdir("/d62"))
        # the load's clients first connect and write, and that is committed: a client whose
        # slot (or first directory) is still uncommitted behind the barrier is unknown to
        # the backup, which evicts it (once, on a loaded machine, a load client lost its
        # directory so: a commit after wait_writing is not soon enough by itself)
        load.wait_writing()
        probe.run(c.sync_all())
        set_fail(cl, MDS_A, loc="0x720", target=MDT)
        for i in range(25):
            probe.run(c.create(f"/d62/f{i}"))
        # on the backup, the reply to the first create replayed there is lost
        set_fail(cl, MDS_B, opc="create", target=MDT, loc=hex(FAIL_ONCE | Code.DROP_REP))
        t0 = time.time()
        mdt_fails_over(cl)
        assert sorted(probe.run(c.listdir("/d62"))) == sorted(f"f{i}" for i in range(25))
        assert c.mdt.sm.evictions == 0 and c.mdt.lost_to_eviction == 0
        assert_clean(load.result())
        assert params(cl, MDS_B, "fail_loc")["fail_loc"] == hex(0xC0000000 | Code.DROP_REP)
        log = node_log(cl, MDS_B)
        assert "dropped the reply create" in log
        # nobody evicted for anything but leaving (the load's clients disconnect at the end)
        evictions = re.findall(rf"{MDT}: evicting \S+: (.*)", log)
        assert all(reason == "disconnected" for reason in evictions), evictions
        status = recovery_status(cl, MDS_B, MDT)
        done, known = map(int, status["completed_clients"].split("/"))
        assert status["status"] == "COMPLETE" and done == known, status
        recovered = [e for e in events(cl, t0) if e.kind == "recovered" and e.target == MDT]
        # the resend came after AT's few seconds, long before the 30 s hard limit
        assert recovered and recovered[-1].data["recover_s"] < 15.0, recovered
    finally:
        probe.close(c)


# -- replay-vbr 7a, replay-dual 0a -----------------------------------------------------------
LOST = """
import asyncio, sys
from shoal.client.client import Client

async def main(d):
    c = await Client.from_cluster_dir(d, name="lost-client").mount()
    sys.stdin.readline()
    for i in range(25):
        await c.create(f"/d7/b{i}")
    await c.unlink("/d7/x")
    print("done", flush=True)
    await asyncio.Event().wait()

asyncio.run(main(sys.argv[1]))
"""


def test_vbr_keeps_independent_names_and_refuses_the_dependent_one(cl: LocalCluster) -> None:
    lost = subprocess.Popen([sys.executable, "-c", LOST, str(cl.dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    probe = Probe()
    survivor = probe.client(cl, name="survivor")
    dependent = probe.client(cl, name="dependent")
    try:
        assert lost.stdin is not None and lost.stdout is not None
        probe.run(survivor.mkdir("/d7"))
        probe.run(survivor.create("/d7/x"))
        old_x = probe.run(survivor.stat("/d7/x")).ino
        probe.run(survivor.sync_all())
        load = Load(cl, clients=4, duration=8.0)
        load.wait_writing()
        set_fail(cl, MDS_A, loc="0x720", target=MDT)
        lost.stdin.write("go\n")
        lost.stdin.flush()
        assert lost.stdout.readline().strip() == "done"
        for i in range(50):
            probe.run(survivor.create(f"/d7/a{i}"))
        probe.run(dependent.create("/d7/x"))  # free only because of the lost unlink
        lost.kill()
        lost.wait()
        mdt_fails_over(cl)
        names = set(probe.run(survivor.listdir("/d7")))
        assert {f"a{i}" for i in range(50)} <= names
        assert not any(n.startswith("b") for n in names)
        assert survivor.mdt.sm.evictions == 0 and survivor.mdt.lost_to_eviction == 0
        # the dependent create was refused, and the name is the file the lost unlink left
        assert probe.run(survivor.stat("/d7/x")).ino == old_x
        wait_for("the dependent client evicted",
                 lambda: dependent.mdt.sm.evictions >= 1, timeout=10)
        log = node_log(cl, MDS_B)
        assert "evicting dependent" in log and "evicting survivor" not in log
        assert_clean(load.result())
    finally:
        lost.kill()
        probe.close(survivor, dependent)


# -- a client's first change after the last commit -------------------------------------------
def test_a_client_whose_first_change_was_not_committed_is_known_after_restart(
        cl: LocalCluster) -> None:
    load = Load(cl, clients=4, duration=8.0)
    probe = Probe()
    c = probe.client(cl)  # mounted: connected to the MDT, no change made there yet
    try:
        load.wait_writing()
        set_fail(cl, MDS_A, loc="0x720", target=MDT)
        for i in range(25):
            probe.run(c.create(f"/first-{i}"))  # its first MDT changes, all behind the barrier
        mdt_fails_over(cl)
        names = set(probe.run(c.listdir("/")))
        assert {f"first-{i}" for i in range(25)} <= names
        assert c.mdt.sm.evictions == 0 and c.mdt.lost_to_eviction == 0
        assert "Denying connection for new client " + c.uuid not in node_log(cl, MDS_B)
        assert_clean(load.result())
    finally:
        probe.close(c)


# -- a client the restarted target has no record of -------------------------------------------
def test_a_client_the_backup_has_no_record_of_is_evicted_and_told(cl: LocalCluster) -> None:
    """A client whose first change to an OST came behind the barrier (a device that drops
    writes) has no slot there after the failover. Another client's replays then carry the
    target's last_committed past its changes; taking that number from a server that did not
    know it, it dropped its replay list as committed and read its file back empty, never
    told (test_backup_dies_during_recovery_and_the_primary_recovers, six files, ci22). A
    server with no record of a client that had connected is an eviction (Lustre: "evicting
    (reconnect/recover flags not set)"), and the next sync says what was lost."""
    probe = Probe()
    known = probe.client(cl, name="known")
    stranger: Client | None = None
    ost0 = {"stripe_count": 1, "stripe_offset": 0}
    try:
        probe.run(known.write_file("/known", b"k0" * 1000, **ost0))
        probe.run(known.sync_all())
        set_fail(cl, OSS_A, loc="0x720", target="scratch-OST0000")
        stranger = probe.client(cl, name="stranger")
        probe.run(stranger.write_file("/stranger", b"s1" * 1000, **ost0))  # its first OST change
        probe.run(known.write_file("/known", b"k1" * 1000, **ost0))  # a later transno
        assert cl.kill_node(OSS_A)
        wait_for("OSS_B serving OST0000", served_by(cl, OSS_B, ["scratch-OST0000"]), timeout=40)
        assert probe.run(known.read_file("/known")) == b"k1" * 1000
        assert known.osts[0].sm.evictions == 0
        imp = stranger.osts[0]
        with contextlib.suppress(IOFailure):  # a call in flight at the eviction fails
            probe.run(stranger.read_file("/stranger"))  # connects again (after the window)
        wait_for("the stranger evicted", lambda: imp.sm.evictions == 1, timeout=20)
        # the commits the client asks for by itself (under pressure) do not use the report
        # up: only the application's sync may (it did, and the loss went untold)
        stranger.pressure.limit = 0
        probe.run(stranger.write_file("/stranger2", b"s2" * 1000, **ost0))
        probe.run(stranger.pressure.settle())
        with pytest.raises(IOFailure, match="acknowledged changes were lost"):
            probe.run(stranger.sync_all())
        probe.run(stranger.sync_all())  # said once
    finally:
        probe.close(known, *([stranger] if stranger is not None else []))


# -- recovery-small 100 ----------------------------------------------------------------------
def test_ir_off_sends_no_notice_and_recovery_completes_by_timeouts(tmp_path: Path) -> None:
    cl = LocalCluster(tmp_path / "cluster")
    cl.up(write_fs_defs(tmp_path / "fs_defs", "IR=off"), timeout=60)
    probe = Probe()
    c = probe.client(cl)
    try:
        probe.run(c.write_file("/noir", b"1" * 1000, stripe_count=1, stripe_offset=0))
        load = Load(cl, clients=4, duration=8.0)
        load.wait_writing()
        set_fail(cl, OSS_A, loc="0x720")
        probe.run(c.write_file("/noir", b"2" * 1000))  # acknowledged, not committed
        before = c.nidtbl_version
        t0 = time.time()
        assert cl.kill_node(OSS_A)
        wait_for("OSS_B serving the OSTs", served_by(cl, OSS_B, A_OSTS), timeout=40)
        assert probe.run(c.read_file("/noir")) == b"2" * 1000
        assert_clean(load.result())
        assert not [e for e in events(cl, t0) if e.kind == "ir_notify"]
        assert "ir_notify" not in "".join(node_log(cl, n) for n in (MDS_A, MDS_B))
        assert c.nidtbl_version == before
        imp = c.by_target["scratch-OST0000"]
        assert imp.ir is None and imp.state == "FULL" and imp.sm.evictions == 0
        for name in A_OSTS:
            status = recovery_status(cl, OSS_B, name)
            assert status["IR"] == "DISABLED" and status["status"] == "COMPLETE", status
    finally:
        probe.close(c)
        cl.down()


# -- replay-single 20b / 34 ------------------------------------------------------------------
HOLDER = """
import asyncio, json, os, sys
from shoal.client.client import Client

async def main(d):
    c = await Client.from_cluster_dir(d, name="holder").mount()
    f = await c.open("/orphan", os.O_RDWR | os.O_CREAT, stripe_count=-1)
    await f.write(os.urandom(8 << 20), 0)
    await f.fsync()
    await c.unlink("/orphan")  # open: an orphan until its last close
    await c.mdt.sync()
    print(json.dumps({"osts": list(f.layout.osts), "oid": f.layout.oid}), flush=True)
    await asyncio.Event().wait()

asyncio.run(main(sys.argv[1]))
"""


def start_holder(cl: LocalCluster) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(cl.dir)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    return holder, json.loads(holder.stdout.readline())


def ost_usage(probe: Probe, c: Client) -> tuple[int, int]:
    """Objects and bytes held by all OSTs."""
    async def go() -> tuple[int, int]:
        replies = [await imp.call("statfs", {}) for imp in c.osts.values()]
        return (sum(r.data["objects"] for r in replies),
                sum(r.data["used_bytes"] for r in replies))

    return probe.run(go())


def objects_left(probe: Probe, c: Client, layout: dict[str, Any]) -> int:
    async def go() -> int:
        sizes = [(await c.osts[i].call("getattr", {"oid": layout["oid"]})).data["size"]
                 for i in layout["osts"]]
        return sum(1 for s in sizes if s)

    return probe.run(go())


def test_an_evicted_clients_orphans_give_their_objects_back(cl: LocalCluster) -> None:
    probe = Probe()
    c = probe.client(cl)
    holder = None
    try:
        before = ost_usage(probe, c)
        holder, layout = start_holder(cl)
        assert len(layout["osts"]) == 4
        assert ost_usage(probe, c) == (before[0] + 4, before[1] + (8 << 20))
        holder.kill()  # it never closes: only its eviction can end the orphan
        holder.wait()
        # ping eviction finds it: silent past the timeout, with state on the MDT
        shoal("ctl", "set_param", "--node", MDS_A, "node.*.evict_timeout=2",
              cluster_dir=cl.dir)
        wait_for("the orphan's objects destroyed",
                 lambda: ost_usage(probe, c) == before, timeout=30)
        assert objects_left(probe, c, layout) == 0
        log = node_log(cl, MDS_A)
        assert f"{MDT}: 1 orphan files of holder go: destroying their objects" in log
        assert "keep their objects" not in log
    finally:
        if holder is not None:
            holder.kill()
        probe.close(c)


def test_orphans_pending_when_the_mdt_crashes_are_destroyed_after_recovery(
        cl: LocalCluster) -> None:
    probe = Probe()
    c = probe.client(cl)
    holder = None
    try:
        holder, layout = start_holder(cl)
        assert objects_left(probe, c, layout) == 4
        load = Load(cl, clients=4, duration=8.0)
        load.wait_writing()
        holder.kill()  # the orphan's holder and the MDS die together
        holder.wait()
        mdt_fails_over(cl)
        # the backup's window evicts the holder (it never comes back), then destroys
        wait_for("the orphan's objects destroyed",
                 lambda: objects_left(probe, c, layout) == 0, timeout=30)
        assert_clean(load.result())
        log = node_log(cl, MDS_B)
        assert "orphan files of holder go: destroying their objects" in log
    finally:
        if holder is not None:
            holder.kill()
        probe.close(c)
