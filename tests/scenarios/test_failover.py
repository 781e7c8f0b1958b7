"""Failure scenarios of issue 4, each under `shoal load`, each ending with every acknowledged
write read back and checked (lost = corrupt = 0, and the application saw no error)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from shoal.agent.records import owner_key, stopping_key
from shoal.cluster.local import LocalCluster
from shoal.cluster.store_setup import etcd_dir
from shoal.node.admin import node_call
from shoal.store import open_store
from shoal.store.etcd_server import EtcdCluster
from shoal.target.mmp import read_block
from tests.conftest import EXAMPLE
from tests.helpers import shoal
from tests.scenarios.harness import (
    Load,
    assert_clean,
    events,
    nodes,
    served_by,
    status,
    targets,
    wait_for,
    write_fs_defs,
)

OSS_A, OSS_B = "nid00062", "nid00063"
MDS_A, MDS_B = "nid00060", "nid00061"
A_OSTS = ["scratch-OST0000", "scratch-OST0002"]  # primary OSS_A
ALL_OSTS = [f"scratch-OST000{i}" for i in range(4)]

pytestmark = pytest.mark.timeout(180)


def kinds_for(cluster: LocalCluster, target: str, since: float) -> list[str]:
    return [e.kind for e in events(cluster, since) if e.target == target]


def in_order(seq: list[str], wanted: list[str]) -> bool:
    it = iter(seq)
    return all(any(k == w for k in it) for w in wanted)


def test_heavy_load_without_faults_never_fails_over(cl: LocalCluster) -> None:
    before = {n: t["epoch"] for n, t in targets(cl).items()}
    t0 = time.time()
    s = Load(cl, clients=16, duration=8.0).result()
    assert_clean(s)
    moves = [e for e in events(cl, t0) if e.kind in ("detect", "fence_start", "take",
                                                     "superseded", "unhealthy")]
    assert moves == [], moves
    after = targets(cl)
    assert {n: t["epoch"] for n, t in after.items()} == before
    assert all(t["state"] == "UP" for t in after.values())
    assert set(nodes(cl).values()) == {"alive"}


def test_kill_oss_under_load(cl: LocalCluster) -> None:
    load = Load(cl)
    time.sleep(2.0)
    t0 = time.time()
    assert cl.kill_node(OSS_A)
    wait_for("OSS_B serving the OSTs", served_by(cl, OSS_B, A_OSTS))
    assert_clean(load.result())
    assert nodes(cl)[OSS_A] == "fenced"
    for name in A_OSTS:
        kinds = kinds_for(cl, name, t0)
        assert in_order(kinds, ["detect", "fence_start", "fenced", "take", "start",
                                "recovered"]), kinds
        # the partner saw the daemon gone (its socket closed, its port refuses) and did not
        # wait for its lease to expire (agent/partner_watch.py); on a loaded machine a
        # node may have missed its pings for a second before the kill, and the refusal of
        # a node silent before it is not taken as proof: silence with its leases
        # unrenewed then decides, as early, never the lease's expiry
        detect = next(e for e in events(cl, t0) if e.kind == "detect" and e.target == name)
        assert detect.node == OSS_B, detect
        assert ("daemon is gone" in detect.detail
                or ("silent" in detect.detail and "unrenewed" in detect.detail)), detect
        t = targets(cl)[name]
        assert t["epoch"] >= 2
        # the device carries the new owner's fencing token (the owner key's revision)
        block = read_block(Path(cl.spec.target(name).devices[OSS_B]))
        assert block is not None and block.node == OSS_B and block.token == t["token"]


def test_kill_mgs_mds_node_under_load(cl: LocalCluster) -> None:
    load = Load(cl)
    time.sleep(2.0)
    assert cl.kill_node(MDS_A)
    wait_for("MGS and MDT on the backup", served_by(cl, MDS_B, ["MGS", "scratch-MDT0000"]))
    assert_clean(load.result())


def test_paused_oss_is_fenced_and_never_serves_again(cl: LocalCluster) -> None:
    old_pid = cl.pid(OSS_A)
    load = Load(cl)
    time.sleep(2.0)
    t0 = time.time()
    assert cl.signal_node(OSS_A, signal.SIGSTOP)
    wait_for("takeover of a hung OSS", served_by(cl, OSS_B, A_OSTS))
    cl.signal_node(OSS_A, signal.SIGCONT)
    assert_clean(load.result())
    assert cl.pid(OSS_A) is None, "the hung node was not fenced"
    assert old_pid is not None
    # a stopped process closes no socket and refuses nothing: its lease decided
    assert not [e for e in events(cl, t0) if "daemon is gone" in e.detail]
    ts = targets(cl)
    assert all(ts[n]["owner"] == OSS_B for n in A_OSTS)
    # the partner watch had heard nothing from it for a second and more: not asked again
    fences = [e for e in events(cl, t0) if e.kind == "fence_start"]
    assert fences and all("(silent " in e.detail for e in fences), fences


def test_a_silent_oss_whose_socket_closes_later_is_left_to_its_leases(cl: LocalCluster
                                                                        ) -> None:
    """A node silent for a second before its connection closed and its port refused (a host
    back from a power cut before its new daemon listens; here a hung daemon then killed) is
    no daemon that died on a live host: the partner watch leaves it to the leases, which
    move its targets a moment later, instead of fencing it at the close (on the rig that
    fence powered a host off as it booted, after the torture had seen every target UP)."""
    load = Load(cl)
    time.sleep(2.0)
    t0 = time.time()
    assert cl.signal_node(OSS_A, signal.SIGSTOP)
    # silent to the watch for more than its second even if a loaded machine delays the
    # watch's reading of the last answer; the silence with its unrenewed leases (1.3 s
    # and a probe) or the lease (2 s) may end it first: never the refusal
    time.sleep(1.6)
    cl.signal_node(OSS_A, signal.SIGKILL)
    wait_for("the OSTs on the backup", served_by(cl, OSS_B, A_OSTS))
    assert_clean(load.result())
    assert not [e for e in events(cl, t0) if "daemon is gone" in e.detail]
    for name in A_OSTS:
        assert in_order(kinds_for(cl, name, t0), ["detect", "take", "start", "recovered"])


def test_sick_service_on_live_node_fails_over_alone(cl: LocalCluster) -> None:
    load = Load(cl)
    time.sleep(2.0)
    t0 = time.time()
    shoal("ctl", "set_param", "obdfilter.scratch-OST0000.inject_unhealthy=device path lost",
          cluster_dir=cl.dir)
    wait_for("the sick OST on its backup", served_by(cl, OSS_B, ["scratch-OST0000"]))
    assert_clean(load.result())
    ts = targets(cl)
    assert ts["scratch-OST0002"]["owner"] == OSS_A, "a healthy service moved too"
    assert nodes(cl)[OSS_A] == "alive"
    kinds = kinds_for(cl, "scratch-OST0000", t0)
    assert "unhealthy" in kinds and "released" in kinds and "fence_start" not in kinds, kinds


def test_fencing_that_fails_leaves_target_down_until_the_node_is_back(tmp_path: Path) -> None:
    agent = Path(__file__).resolve().parents[1] / "fence_agents" / "fence_shoal_test"
    fs_defs = write_fs_defs(tmp_path / "fs_defs", f'FENCE[{OSS_A}]="fence-agent:{agent} '
                            f'state_file={tmp_path}/power mode=fail_off"')
    cl = LocalCluster(tmp_path / "cluster")
    cl.up(fs_defs, timeout=60)
    try:
        load = Load(cl, duration=10.0)
        time.sleep(1.5)
        t0 = time.time()
        cl.kill_node(OSS_A)

        def down() -> bool:
            ts = targets(cl)
            return all(ts[n]["state"] == "DOWN" and ts[n]["owner"] is None
                       and "fencing failed" in ts[n]["reason"] for n in A_OSTS)

        wait_for("targets DOWN after a failed fence", down)
        kinds = kinds_for(cl, "scratch-OST0000", t0)
        assert "fence_failed" in kinds and "take" not in kinds, kinds
        assert any(e.kind == "fence_failed" and e.data.get("alert") for e in events(cl, t0))
        cl.start_node(OSS_A)  # the node is back: whoever serves it, it is served again
        wait_for("targets back", lambda: all(targets(cl)[n]["state"] == "UP" for n in A_OSTS))
        assert_clean(load.result())
    finally:
        cl.down()


def test_store_unreachable_is_not_an_outage(tmp_path: Path) -> None:
    cl = LocalCluster(tmp_path / "cluster")
    cl.up(EXAMPLE, timeout=60, store="etcd")
    try:
        owners = {n: t["owner"] for n, t in targets(cl).items()}
        etcd = EtcdCluster.attach(etcd_dir(cl.dir))
        load = Load(cl, duration=9.0)
        time.sleep(2.0)
        t0 = time.time()
        etcd.kill_member(0, signal.SIGSTOP)  # the store hangs for longer than the TTL
        time.sleep(4.0)
        etcd.kill_member(0, signal.SIGCONT)
        assert_clean(load.result())
        time.sleep(1.0)
        assert {n: t["owner"] for n, t in targets(cl).items()} == owners
        assert not [e for e in events(cl, t0) if e.kind in ("take", "fence_start")]
        assert all(cl.pid(n) is not None for n in cl.spec.nodes), "a node was fenced"
        wait_for("owner keys back", lambda: all(t["state"] == "UP"
                                                for t in targets(cl).values()))
    finally:
        cl.down()


def kill_both_oss_under_load(cl: LocalCluster, duration: float) -> tuple[Load, list[str]]:
    """Both nodes of the OSS pair killed under load; returns once every OST is DOWN."""
    load = Load(cl, duration=duration)
    time.sleep(1.5)
    cl.kill_node(OSS_A)
    cl.kill_node(OSS_B)
    osts = [t.name for t in cl.spec.osts]
    wait_for("every OST DOWN", lambda: all(targets(cl)[n]["state"] == "DOWN" for n in osts))
    return load, osts


def test_both_nodes_of_a_pair_down_then_one_back(cl: LocalCluster) -> None:
    load, osts = kill_both_oss_under_load(cl, duration=10.0)
    st = status(cl)
    assert {n["name"]: n["state"] for n in st["nodes"]}[OSS_A] in ("dead", "fenced")
    down = {t["name"]: t for t in st["targets"]}["scratch-OST0000"]
    assert "no node of its failover pair is alive" in down["reason"], down
    cl.start_node(OSS_B)
    wait_for("OSS_B serving every OST", served_by(cl, OSS_B, osts), timeout=40)
    assert_clean(load.result())


def test_manual_failover_and_failback_with_clients_running(cl: LocalCluster) -> None:
    load = Load(cl)
    time.sleep(1.5)
    t0 = time.time()
    out = shoal("failover", "scratch-OST0000", "--to", OSS_B, cluster_dir=cl.dir).stdout
    assert OSS_B in out
    assert targets(cl)["scratch-OST0000"]["owner"] == OSS_B
    shoal("failback", "scratch-OST0000", cluster_dir=cl.dir)
    assert targets(cl)["scratch-OST0000"]["owner"] == OSS_A
    assert_clean(load.result())
    kinds = kinds_for(cl, "scratch-OST0000", t0)
    assert "fence_start" not in kinds and kinds.count("released") == 2, kinds


def test_restarted_node_rejoins_as_backup(cl: LocalCluster) -> None:
    load = Load(cl)
    time.sleep(1.5)
    cl.kill_node(OSS_A)
    wait_for("failover", served_by(cl, OSS_B, A_OSTS))
    cl.start_node(OSS_A)
    wait_for("the node back", lambda: nodes(cl)[OSS_A] == "alive")
    time.sleep(2.0)  # time enough to (wrongly) grab its old targets back
    assert_clean(load.result())
    assert all(targets(cl)[n]["owner"] == OSS_B for n in A_OSTS)
    reply = asyncio.run(node_call(cl.spec, cl.key, OSS_A, "agent_status"))
    assert reply["hosting"] == []


def test_owner_key_token_is_written_to_the_device(cl: LocalCluster) -> None:
    async def tokens() -> dict[str, int]:
        store = open_store(cl.spec.store_url)
        try:
            out = {}
            for t in cl.spec.targets:
                kv = await store.get(owner_key(t.name))
                assert kv is not None
                out[t.name] = kv.create_revision
            return out
        finally:
            await store.close()

    for name, token in asyncio.run(tokens()).items():
        t = cl.spec.target(name)
        block = read_block(Path(t.devices[t.primary]))
        assert block is not None and block.token == token and block.node == t.primary


def test_automatic_failback_after_the_primary_returns(tmp_path: Path) -> None:
    fs_defs = write_fs_defs(tmp_path / "fs_defs", "FAILBACK=auto\nFAILBACK_DELAY=1")
    cl = LocalCluster(tmp_path / "cluster")
    cl.up(fs_defs, timeout=60)
    try:
        load = Load(cl, duration=9.0)
        time.sleep(1.0)
        cl.kill_node(OSS_A)
        wait_for("failover", served_by(cl, OSS_B, A_OSTS))
        t0 = time.time()
        cl.start_node(OSS_A)
        wait_for("failback to the primary", served_by(cl, OSS_A, A_OSTS))
        assert_clean(load.result())
        releases = [e for e in events(cl, t0) if e.kind == "released" and e.node == OSS_B]
        assert {e.target for e in releases} == set(A_OSTS)
        assert not [e for e in events(cl, t0) if e.kind == "fence_start"]
    finally:
        cl.down()


def test_stuck_event_loop_is_fenced_and_taken_over(cl: LocalCluster) -> None:
    """The process lives and its heartbeat thread runs, but its event loop is stuck: the
    heartbeat stops renewing, the backup fences the node and takes its targets."""
    load = Load(cl, duration=12.0)
    time.sleep(1.5)
    shoal("ctl", "set_param", f"node.{OSS_A}.inject_loop_stall=30", cluster_dir=cl.dir,
          timeout=60)
    wait_for("takeover of the stuck node's targets", served_by(cl, OSS_B, A_OSTS), timeout=40)
    assert_clean(load.result())
    assert cl.pid(OSS_A) is None, "the stuck node was not fenced"


def test_automatic_failover_disabled_leaves_the_target_down_until_enabled(
        cl: LocalCluster) -> None:
    shoal("foadmin", "disable", "scratch-OST0000", cluster_dir=cl.dir)
    load = Load(cl, duration=10.0)
    time.sleep(1.5)
    t0 = time.time()
    cl.kill_node(OSS_A)
    wait_for("the other OST failed over", served_by(cl, OSS_B, ["scratch-OST0002"]))

    def held_down() -> bool:
        t = targets(cl)["scratch-OST0000"]
        return t["state"] == "DOWN" and "disabled" in t["reason"]

    wait_for("OST0000 DOWN: automatic failover disabled", held_down)
    assert "take" not in kinds_for(cl, "scratch-OST0000", t0)
    shoal("foadmin", "enable", "scratch-OST0000", cluster_dir=cl.dir)
    wait_for("OST0000 taken over once enabled", served_by(cl, OSS_B, ["scratch-OST0000"]))
    assert_clean(load.result())


def test_a_stopping_flag_of_another_fs_or_of_a_dead_down_does_not_block_failover(
        cl: LocalCluster) -> None:
    """Issue 16: a second file system's `shoal down` left a global stopping key behind, and a
    killed OSS of the first then left its OSTs DOWN for good. The flag is now per file system
    and on a lease: another's is ignored, and one whose `down` died expires."""

    async def put_flag(fs: str, ttl: float | None) -> None:
        store = open_store(cl.spec.store_url)
        try:
            lease = (await store.grant_lease(ttl)).id if ttl is not None else 0
            await store.put(stopping_key(fs), b"shoal down", lease=lease)
        finally:
            await store.close()

    asyncio.run(put_flag("other", None))  # another file system is being stopped
    load = Load(cl, clients=4, duration=6.0)
    time.sleep(1.0)
    cl.kill_node(OSS_A)
    wait_for("failover despite the other file system's flag", served_by(cl, OSS_B, A_OSTS))
    assert_clean(load.result())
    cl.start_node(OSS_A)
    wait_for("OSS_A back as backup", lambda: nodes(cl)[OSS_A] == "alive")
    asyncio.run(put_flag(cl.spec.fs, 2.0))  # our own `shoal down`, which then died
    assert status(cl)["stopping"]
    wait_for("the dead down's flag expired", lambda: not status(cl)["stopping"], timeout=20)
    cl.kill_node(OSS_B)
    wait_for("failover after the flag expired", served_by(cl, OSS_A, ALL_OSTS), timeout=40)


def test_a_backup_paused_during_its_takeover_aborts_when_its_lease_lapsed(
        tmp_path: Path) -> None:
    """Issue 18 (3): owner key won, then the backup paused (its lease lapsed meanwhile), then
    resumed: it went on to start the target and announce it. Every step of a takeover now
    checks the lease it acts under; this one gives up cleanly, and a fresh attempt serves."""
    # a slow MMP claim (5 s) makes the pause easy to land inside the takeover
    fs_defs = write_fs_defs(tmp_path / "fs_defs", "MMP_INTERVAL=1")
    cl = LocalCluster(tmp_path / "cluster")
    cl.up(fs_defs, timeout=90)
    try:
        load = Load(cl, clients=4, duration=14.0)
        time.sleep(1.0)
        t0 = time.time()
        cl.kill_node(OSS_A)

        def taking() -> bool:
            return any(e.kind == "take" and e.node == OSS_B and e.target in A_OSTS
                       for e in events(cl, t0))

        wait_for("OSS_B taking the OSTs", taking, timeout=20)
        cl.signal_node(OSS_B, signal.SIGSTOP)
        time.sleep(3.0)  # longer than the lease (TTL 2 s)
        cl.signal_node(OSS_B, signal.SIGCONT)
        wait_for("OSS_B serving the OSTs", served_by(cl, OSS_B, A_OSTS), timeout=60)
        evs = events(cl, t0)
        aborted = [e for e in evs if e.kind == "take_aborted" and e.node == OSS_B]
        assert aborted and all(e.data.get("alert") for e in aborted), evs
        for e in aborted:
            # no start for that attempt: the next event of its target on OSS_B is a new take
            later = [x for x in evs if x.target == e.target and x.node == OSS_B
                     and x.time >= e.time and x.kind in ("start", "take")]
            assert later and later[0].kind == "take", later
        assert_clean(load.result())
    finally:
        cl.down()


def test_a_node_still_starting_is_not_fenced(cl: LocalCluster) -> None:
    """Issue 18's first bug: both nodes of a pair killed and started again; the first one up
    found the other still starting (it answers nothing until it serves), fenced it, and
    killed its *new* process, leaving the pair without a backup. Here the second one stays
    frozen in its start (SIGSTOP right after exec) while the first takes over: the fence is
    aimed at the instance that held the lease, which is gone, and the new one is spared."""
    load, osts = kill_both_oss_under_load(cl, duration=14.0)
    t0 = time.time()
    starting = cl.start_node(OSS_B)
    os.killpg(starting, signal.SIGSTOP)  # still starting, for as long as this test likes
    try:
        cl.start_node(OSS_A)
        wait_for("OSS_A serving every OST", served_by(cl, OSS_A, osts), timeout=40)
        assert cl.pid(OSS_B) == starting, "the starting node was killed"
    finally:
        os.killpg(starting, signal.SIGCONT)
    wait_for("OSS_B up as the backup", lambda: nodes(cl)[OSS_B] == "alive", timeout=30)
    assert cl.pid(OSS_B) == starting
    assert_clean(load.result())
    fenced = [e for e in events(cl, t0) if e.kind == "fenced"]
    assert all("already off" in e.detail for e in fenced), fenced
