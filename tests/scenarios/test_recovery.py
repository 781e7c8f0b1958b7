"""Recovery scenarios of issue 5, driven by fail points (`shoal ctl set_param fail_loc=...`)
and node kills under `shoal load`, each ending with every acknowledged write read back.

A probe client of the test's own (its own event loop in a thread, so it stays connected and
receives IR notices) makes the changes whose fate the test checks exactly: a mkdir that
would come back EEXIST if a lost reply made the MDT do it twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import operator
import signal
import subprocess
import sys
import time
from typing import TypeVar

import pytest

from shoal.client.client import Client
from shoal.cluster.local import LocalCluster
from shoal.errors import Exists
from shoal.protocol.fail_loc import FAIL_EVERY, FAIL_SOME, Code
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
    stat,
    targets,
    wait_for,
)

OSS_A, OSS_B = "nid00062", "nid00063"
MDS_A, MDS_B = "nid00060", "nid00061"
MDT = "scratch-MDT0000"
A_OSTS = ["scratch-OST0000", "scratch-OST0002"]  # primary OSS_A
ALL_OSTS = [f"scratch-OST000{i}" for i in range(4)]
STRIPE = 64 << 10
T = TypeVar("T")

pytestmark = pytest.mark.timeout(120)


# -- helpers ---------------------------------------------------------------------------------
def last_numbers(cl: LocalCluster, node: str, target: str) -> tuple[int, int]:
    p = params(cl, node, f"*.{target}.last_*")
    return (int(next(v for k, v in p.items() if k.endswith("last_committed"))),
            int(next(v for k, v in p.items() if k.endswith("last_transno"))))


def blob(client: int, gen: int) -> bytes:
    """256 KiB, a 64 KiB stripe on each of the 4 OSTs, different for every generation."""
    return hashlib.blake2b(f"{client}/{gen}".encode()).digest() * (STRIPE * 4 // 64)


async def striped_load(clients: list[Client], duration: float) -> int:
    """Each client rewrites and reads back its own file, striped over every OST, so every
    step uses every OST; returns how many writes were acknowledged (and verified)."""
    stop_at = time.monotonic() + duration

    async def drive(i: int, c: Client) -> int:
        path, acked = f"/striped/c{i}", 0
        while time.monotonic() < stop_at:
            await c.write_file(path, blob(i, acked + 1), stripe_count=-1, stripe_size=STRIPE)
            acked += 1
            assert await c.read_file(path) == blob(i, acked), f"{path}: gen {acked} lost"
        assert await c.read_file(path) == blob(i, acked), f"{path}: gen {acked} lost"
        return acked

    await clients[0].makedirs("/striped")
    return sum(await asyncio.gather(*(drive(i, c) for i, c in enumerate(clients))))


# -- lost messages -------------------------------------------------------------------------
def test_lost_request_is_resent_and_done_once(cl: LocalCluster) -> None:
    # three of the load's write requests to the OSS are lost
    set_fail(cl, OSS_A, cli=True, loc=hex(FAIL_SOME | Code.DROP_REQ), val="3", opc="write")
    load = Load(cl, clients=4, duration=5.0)
    probe = Probe()
    c = probe.client(cl)
    try:
        load.wait_writing()  # the load's clients have made their directories
        mkdirs = stat(cl, MDS_A, MDT, "mkdir")
        set_fail(cl, MDS_A, loc="0x80000505", opc="mkdir", target=MDT)
        probe.run(c.mkdir("/lost-request"))
        assert c.mdt.timeouts == 1, "the lost mkdir was not resent after a timeout"
        assert params(cl, MDS_A, "fail_loc") == {"fail_loc": "0xc0000505"}
        # the lost request never ran: one mkdir served, nothing to reconstruct
        assert stat(cl, MDS_A, MDT, "mkdir") == mkdirs + 1
        assert stat(cl, MDS_A, MDT, "reconstructed") == 0
        assert_clean(load.result())
        out = shoal("ctl", "get_param", "--node", OSS_A, "fail_loc", "fail_hits",
                    cluster_dir=cl.dir).stdout.split()
        assert out == [f"fail_loc={0xC0000000 | FAIL_SOME | Code.DROP_REQ:#x}", "fail_hits=3"]
        # a fresh client's own tree: its imports, and a fail point of its own (none)
        out = shoal("ctl", "get_param", "--client", "osc.*-OST0000-*.state", "fail_loc",
                    cluster_dir=cl.dir).stdout
        assert "current_state: FULL" in out and "fail_loc=0x0" in out
    finally:
        probe.close(c)


def test_lost_reply_is_resent_and_reconstructed_not_redone(cl: LocalCluster) -> None:
    # every 15th write reply of the OSS is lost: each one's resend must be answered from
    # last_rcvd's reply data, never written again
    set_fail(cl, OSS_A, loc=hex(FAIL_EVERY | Code.DROP_REP), val="15", opc="write")
    load = Load(cl, clients=4, duration=5.0)
    probe = Probe()
    c = probe.client(cl)
    try:
        time.sleep(1.5)
        set_fail(cl, MDS_A, cli=True, loc="0x80000506", opc="mkdir")
        probe.run(c.mkdir("/lost-reply"))  # a second execution would be EEXIST
        assert c.mdt.timeouts == 1
        assert stat(cl, MDS_A, MDT, "reconstructed") >= 1
        with pytest.raises(Exists):
            probe.run(c.mkdir("/lost-reply"))  # what doing it twice looks like
        assert_clean(load.result())
        hits = int(params(cl, OSS_A, "fail_hits")["fail_hits"])
        rebuilt = sum(stat(cl, OSS_A, t, "reconstructed") for t in A_OSTS)
        assert hits >= 1
        assert rebuilt >= hits, f"{hits} write replies lost, {rebuilt} reconstructed"
    finally:
        probe.close(c)


# -- server death before commit ------------------------------------------------------------
def test_oss_death_after_reply_before_commit_is_replayed(cl: LocalCluster) -> None:
    # the load runs on through the failover: a client that finished before it would be gone,
    # and rightly evicted rather than replayed
    load = Load(cl, clients=5, duration=7.0)
    load.wait_writing()
    set_fail(cl, OSS_A, loc="0x720")  # every OST of OSS_A stops committing
    time.sleep(1.5)  # acknowledged writes pile up behind the barrier
    for name in A_OSTS:
        committed, transno = last_numbers(cl, OSS_A, name)
        assert transno > committed, f"{name}: no uncommitted tail to lose"
    assert cl.kill_node(OSS_A)
    wait_for("OSS_B serving the OSTs", served_by(cl, OSS_B, A_OSTS))
    assert_clean(load.result())
    replayed = {n: int(recovery_status(cl, OSS_B, n)["replayed_requests"]) for n in A_OSTS}
    assert all(v > 0 for v in replayed.values()), replayed


# -- a client that never comes back --------------------------------------------------------
LONE = """
import asyncio, os, sys
from shoal.client.client import Client

async def main(d):
    c = await Client.from_cluster_dir(d, name="lone-client").mount()
    await c.mkdir("/lone")
    await c.setstripe("/lone", stripe_count=-1, stripe_size=64 << 10)
    f = await c.open("/lone/f", os.O_RDWR | os.O_CREAT)
    await f.write(b"1" * (256 << 10), 0)   # a stripe on every OST: a slot on each
    await f.fsync()
    print("ready", flush=True)
    sys.stdin.readline()
    await f.write(b"2" * (256 << 10), 0)   # behind the barrier: never committed
    print("done", flush=True)
    await asyncio.Event().wait()

asyncio.run(main(sys.argv[1]))
"""


def test_client_that_never_comes_back_does_not_hold_the_others(cl: LocalCluster) -> None:
    lone = subprocess.Popen([sys.executable, "-c", LONE, str(cl.dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert lone.stdout is not None and lone.stdin is not None
        assert lone.stdout.readline().strip() == "ready"
        load = Load(cl, clients=4, duration=7.0)
        load.wait_writing()
        set_fail(cl, OSS_A, loc="0x720")
        lone.stdin.write("go\n")
        lone.stdin.flush()
        assert lone.stdout.readline().strip() == "done"
        time.sleep(1.0)
        t0 = time.time()
        lone.kill()  # the client and the server it changed die together
        assert cl.kill_node(OSS_A)
        wait_for("OSS_B serving the OSTs", served_by(cl, OSS_B, A_OSTS))
        assert_clean(load.result())
    finally:
        lone.kill()
        lone.wait()
    log = node_log(cl, OSS_B)
    for name in A_OSTS:
        # the MGS said it is dead: the window did not wait for the soft timeout (5 s)
        assert f"{name}: evicting lone-client: declared dead by the MGS" in log
        rec = [e for e in events(cl, t0) if e.kind == "recovered" and e.target == name]
        assert rec and rec[-1].data["recover_s"] < 4.0, rec
        status = recovery_status(cl, OSS_B, name)
        done, known = map(int, status["completed_clients"].split("/"))
        assert known >= 2 and done == known - 1, status  # everyone but the lone client
        assert int(status["replayed_requests"]) > 0


# -- a second failure during recovery ------------------------------------------------------
def test_backup_dies_during_recovery_and_the_primary_recovers(cl: LocalCluster) -> None:
    load = Load(cl, clients=4, duration=7.0)
    load.wait_writing()
    set_fail(cl, OSS_A, loc="0x720")
    # OSS_B answers the final pings of its recovering targets late: the window stays open
    set_fail(cl, OSS_B, loc="0x507", opc="replay_done", ms="5000")
    time.sleep(1.0)
    assert cl.kill_node(OSS_A)

    def recovering_on_b() -> bool:
        t = targets(cl)["scratch-OST0000"]
        return t["owner"] == OSS_B and t["state"] == "RECOVERING"

    wait_for("OST0000 recovering on OSS_B", recovering_on_b, timeout=20)
    time.sleep(0.5)  # replays under way
    assert targets(cl)["scratch-OST0000"]["state"] == "RECOVERING"
    assert cl.kill_node(OSS_B)
    cl.start_node(OSS_A)
    wait_for("OSS_A serving every OST", served_by(cl, OSS_A, ALL_OSTS), timeout=40)
    assert_clean(load.result())
    for name in A_OSTS:
        # every client recovered a second time (what OSS_B replayed and had not committed
        # yet died with it, and was replayed again)
        status = recovery_status(cl, OSS_A, name)
        done, known = map(int, status["completed_clients"].split("/"))
        assert status["status"] == "COMPLETE" and done == known >= 1, status


# -- imperative recovery on and off --------------------------------------------------------
def test_clients_without_ir_recover_through_their_own_timeouts(cl: LocalCluster) -> None:
    load = Load(cl, clients=4, duration=6.0)
    probe = Probe()
    ir = probe.client(cl)
    noir = [probe.client(cl, ir=False) for _ in range(2)]
    try:
        noir_acked = probe.start(striped_load(noir, 6.0))
        time.sleep(1.5)
        assert cl.kill_node(OSS_A)
        wait_for("OSS_B serving the OSTs", served_by(cl, OSS_B, A_OSTS))
        assert_clean(load.result())
        assert noir_acked(90.0) > 0
        b_nid = cl.spec.nid(OSS_B)
        for name in A_OSTS:
            assert ir.by_target[name].ir is not None and ir.by_target[name].ir.node == OSS_B
            for c in noir:
                imp = c.by_target[name]
                # no notice taken: found by round robin over the failover NIDs
                assert imp.ir is None and c.nidtbl_version == 0
                assert imp.state == "FULL" and imp.nid == b_nid
                assert imp.connect_attempts >= 2 and imp.sm.evictions == 0
        shown = noir[0].get_param("osc.scratch-OST0000-*.ir")
        assert "imperative_recovery: DISABLED" in next(iter(shown.values()))
    finally:
        probe.close(ir, *noir)


def test_idle_client_without_ir_keeps_its_uncommitted_writes(cl: LocalCluster) -> None:
    probe = Probe()
    c = probe.client(cl, ir=False)
    try:
        probe.run(c.write_file("/idle", b"1" * 1000, stripe_count=1, stripe_offset=0))
        set_fail(cl, OSS_A, loc="0x720")
        probe.run(c.write_file("/idle", b"2" * 1000))  # acknowledged, not committed
        assert cl.kill_node(OSS_A)
        wait_for("OSS_B serving the OSTs", served_by(cl, OSS_B, A_OSTS))
        assert probe.run(c.read_file("/idle")) == b"2" * 1000
        assert c.by_target["scratch-OST0000"].sm.evictions == 0
    finally:
        probe.close(c)


# -- the MGS node fails --------------------------------------------------------------------
def test_mgs_node_fails_clients_refind_it_and_ir_still_reaches_them(cl: LocalCluster) -> None:
    load = Load(cl, clients=4, duration=8.0)
    probe = Probe()
    c = probe.client(cl)
    try:
        load.wait_writing()
        set_fail(cl, MDS_A, loc="0x720", target=MDT)  # the MDT's tail must be replayed
        time.sleep(1.0)
        assert cl.kill_node(MDS_A)
        wait_for("MGS and MDT on the backup", served_by(cl, MDS_B, ["MGS", MDT]))
        b_mgs = cl.spec.nid(MDS_B)
        wait_for("the probe's MGS link on the backup",
                 lambda: c.mgs.nid == b_mgs and c.mgs.state == "FULL", timeout=15)
        assert int(recovery_status(cl, MDS_B, MDT)["replayed_requests"]) > 0
        before = c.nidtbl_version
        t0 = time.time()
        assert cl.kill_node(OSS_A)  # a failover announced by the MGS in its new home
        wait_for("OSS_B serving the OSTs", served_by(cl, OSS_B, A_OSTS))
        wait_for("IR notices at the probe", lambda: all(
            c.by_target[n].ir is not None and c.by_target[n].ir.node == OSS_B
            for n in A_OSTS), timeout=10)
        assert c.nidtbl_version > before
        told = [e for e in events(cl, t0) if e.kind == "ir_notify" and e.target in A_OSTS]
        assert told and all(e.node == MDS_B for e in told), told
        assert all(e.data["clients"] >= 1 for e in told), told
        assert_clean(load.result())
    finally:
        probe.close(c)


PAUSED = """
import asyncio, logging, os, sys
from shoal.client.client import Client

async def main(d):
    logging.basicConfig(format="%(asctime)s paused-client %(message)s")
    c = await Client.from_cluster_dir(d, name="paused-client").mount()
    await c.write_file("/paused", b"1" * 4096, stripe_count=1, stripe_offset=0)
    print("ready", flush=True)
    sys.stdin.readline()
    await c.write_file("/paused", b"2" * 4096)   # behind the barrier: never committed
    print("done", flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # the client's own tasks run meanwhile
    print(await c.read_file("/paused") == b"2" * 4096, flush=True)

asyncio.run(main(sys.argv[1]))
"""


def test_client_paused_through_a_double_failover_keeps_its_replays(cl: LocalCluster) -> None:
    """The MGS's node and an OSS die together while a client is paused (stopped, swapping,
    migrating). The new MGS has never heard of it, which is no evidence that it is dead: the
    OSTs' recovery must wait for it (until the soft timeout), not evict it and throw away its
    acknowledged writes."""
    client = subprocess.Popen([sys.executable, "-c", PAUSED, str(cl.dir)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout is not None and client.stdin is not None
        assert client.stdout.readline().strip() == "ready"
        wait_for("the MDT committed the create",
                 lambda: operator.eq(*last_numbers(cl, MDS_A, MDT)))
        load = Load(cl, clients=3, duration=7.0)
        load.wait_writing()  # its clients mounted: their slots are on disk before the barrier
        set_fail(cl, OSS_A, loc="0x720")
        client.stdin.write("go\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "done"
        time.sleep(1.0)
        client.send_signal(signal.SIGSTOP)
        t0 = time.time()
        assert cl.kill_node(MDS_A) and cl.kill_node(OSS_A)
        wait_for("MGS on MDS_B", served_by(cl, MDS_B, ["MGS"]), timeout=20)
        time.sleep(2.5)  # the new MGS has been up long enough to call a stranger dead
        client.send_signal(signal.SIGCONT)
        wait_for("OST0000 recovered", lambda: any(
            e.kind == "recovered" and e.target == "scratch-OST0000" for e in events(cl, t0)),
            timeout=30)
        client.stdin.write("check\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "True"  # its acknowledged write is there
        log = node_log(cl, OSS_B)
        assert "paused-client: declared dead" not in log, log[-3000:]
        assert_clean(load.result())
    finally:
        client.kill()
        client.wait()
