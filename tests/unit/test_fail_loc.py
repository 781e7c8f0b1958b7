"""Fail points: Lustre's counting rules (sans I/O), and a real node and client applying them.

The node tests run a NodeServer in this process (no agent) with real MGT/MDT/OST devices and
a real Client on loopback: what a dropped request or reply does to a client's resend and to
the target's reply reconstruction is checked end to end, in under a second per test.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.client.client import Client
from shoal.client.faults import ClientFaults, faults_for
from shoal.errors import Exists, InvalidArgument
from shoal.node.local import local_node
from shoal.node.server import NodeServer
from shoal.node.services import format_targets
from shoal.node.spec import ClusterSpec, TargetSpec, write_key
from shoal.protocol.fail_loc import (
    FAIL_EVERY,
    FAIL_ONCE,
    FAIL_RAND,
    FAIL_SKIP,
    FAIL_SOME,
    FAILED,
    Code,
    FailPoint,
    Site,
    Verdict,
    request_target,
)

NODE = "nid00060"
MDT = "t-MDT0000"
OST = "t-OST0000"
OST1 = "t-OST0001"


def point(loc: int, val: int = 0, **kw: str) -> FailPoint:
    p = FailPoint()
    for name, value in kw.items():
        p.set(f"fail_{name}", value)
    p.set("fail_val", str(val))
    p.set("fail_loc", hex(loc))
    return p


def fires(p: FailPoint, n: int, op: str = "write", target: str = OST,
          site: Site = Site.REPLY) -> list[int]:
    """Which of n matching checks (1-based) fired."""
    return [i for i in range(1, n + 1) if not p.check(site, op, target).passes]


# -- the rules, sans I/O ---------------------------------------------------------------------
def test_once_fires_once_and_shows_failed() -> None:
    p = point(FAIL_ONCE | Code.DROP_REP)
    assert fires(p, 5) == [1]
    assert p.loc == FAIL_ONCE | FAILED | Code.DROP_REP
    assert p.params()["fail_loc"] == "0xc0000506" and p.params()["fail_hits"] == "1"
    assert not p.active


def test_no_flag_fires_every_time() -> None:
    assert fires(point(Code.DROP_REQ), 4, site=Site.REQUEST) == [1, 2, 3, 4]


def test_skip_lets_n_pass_then_fires_always_or_once() -> None:
    assert fires(point(FAIL_SKIP | Code.DROP_REP, 3), 6) == [4, 5, 6]
    assert fires(point(FAIL_SKIP | FAIL_ONCE | Code.DROP_REP, 3), 6) == [4]


def test_some_fires_n_times_then_stops() -> None:
    p = point(FAIL_SOME | Code.DROP_REP, 3)
    assert fires(p, 7) == [1, 2, 3]
    assert p.loc & (FAIL_ONCE | FAILED) == FAIL_ONCE | FAILED
    # Lustre: ONCE overrides SOME when fail_val > 1
    assert fires(point(FAIL_SOME | FAIL_ONCE | Code.DROP_REP, 3), 7) == [1]


def test_every_n_is_deterministic() -> None:
    assert fires(point(FAIL_EVERY | Code.DROP_REP, 3), 10) == [3, 6, 9]
    assert fires(point(FAIL_EVERY | FAIL_ONCE | Code.DROP_REP, 3), 10) == [3]


def test_rand_fires_one_in_n_by_the_draw() -> None:
    p = point(FAIL_RAND | Code.DROP_REP, 4)
    draws = [0.0, 0.24, 0.25, 0.9, 0.1]
    got = [not p.check(Site.REPLY, "write", OST, d).passes for d in draws]
    assert got == [True, True, False, False, True]
    assert point(FAIL_RAND | Code.DROP_REP, 1).check(Site.REPLY, "write", OST, 0.0).passes


def test_only_matching_requests_count_and_fire() -> None:
    p = point(FAIL_EVERY | Code.DROP_REP, 2, opc="write", target="*-OST000[02]")
    seq = [("read", OST), ("write", "t-OST0001"), ("write", OST), ("write", "t-OST0002"),
           ("write", OST)]
    got = [not p.check(Site.REPLY, op, t).passes for op, t in seq]
    assert got == [False, False, False, True, False]
    assert p.count == 3


def test_site_and_verdicts() -> None:
    p = point(Code.DELAY_REQ, ms="250")
    assert p.check(Site.REPLY, "write", OST).passes  # a request code never touches replies
    d = p.check(Site.REQUEST, "write", OST)
    assert d.verdict is Verdict.DELAY and d.delay == 0.25
    assert point(Code.DROP_REQ).check(Site.REQUEST, "x", OST).verdict is Verdict.DROP
    assert point(Code.NO_COMMIT).check(Site.REQUEST, "x", OST).passes


def test_barrier_matches_targets() -> None:
    p = point(Code.NO_COMMIT, target="*-OST*")
    assert p.barrier(OST) and not p.barrier(MDT)
    assert not point(Code.DROP_REQ).barrier(OST)


def test_fail_loc_zero_clears_everything() -> None:
    p = point(FAIL_ONCE | Code.DELAY_REP, 3, opc="write", target=OST, ms="10")
    p.set("fail_loc", "0")
    assert p == FailPoint()


def test_setting_fail_loc_again_restarts_counting() -> None:
    p = point(FAIL_ONCE | Code.DROP_REP)
    fires(p, 2)
    p.set("fail_loc", hex(FAIL_ONCE | FAILED | Code.DROP_REP))  # FAILED given back: ignored
    assert fires(p, 2) == [1]


@pytest.mark.parametrize(("name", "value"), [
    ("fail_loc", "0x999"),  # unknown code
    ("fail_loc", "0x04000505"),  # unknown flag bit
    ("fail_loc", hex(FAIL_SKIP | FAIL_SOME | Code.DROP_REP)),  # counting flags combined
    ("fail_loc", hex(FAIL_ONCE | Code.NO_COMMIT)),
    ("fail_loc", "drop"),
    ("fail_val", "-1"),
    ("fail_ms", "soon"),
    ("fail_nothing", "1"),
])
def test_bad_settings_are_refused_and_change_nothing(name: str, value: str) -> None:
    p = point(FAIL_ONCE | Code.DROP_REP, 2, opc="write")
    before = FailPoint(p.loc, p.val, p.opc, p.target, p.ms, p.count, p.hits)
    with pytest.raises(InvalidArgument):
        p.set(name, value)
    assert p == before


def test_admin_operations_are_never_matched() -> None:
    assert request_target("get_param", "@node", {}) is None
    assert request_target("set_param", "@node", {}) is None
    assert request_target("connect", "@node", {"target": OST}) == OST
    assert request_target("write", OST, {}) == OST


_COUNTING = st.sampled_from([0, FAIL_SKIP, FAIL_SOME, FAIL_EVERY])


@given(counting=_COUNTING, once=st.booleans(), val=st.integers(0, 6), n=st.integers(0, 20))
def test_fire_counts_match_lustres_rules(counting: int, once: bool, val: int, n: int) -> None:
    """How many of n matching checks fire, as the flag table in fail_loc.py states it."""
    p = point(counting | (FAIL_ONCE if once else 0) | Code.DROP_REP, val)
    got = fires(p, n)
    if counting == FAIL_SKIP:
        want = list(range(val + 1, n + 1))
    elif counting == FAIL_SOME:
        want = list(range(1, min(n, max(val, 1)) + 1))
        if once and val > 1:
            want = want[:1]
    elif counting == FAIL_EVERY:
        want = [i for i in range(1, n + 1) if val <= 1 or i % val == 0]
    else:
        want = list(range(1, n + 1))
    if once:
        want = want[:1]
    assert got == want
    assert p.hits == len(got)


def test_client_point_from_the_environment() -> None:
    f = ClientFaults.from_env("c", {"SHOAL_FAIL_LOC": "0x80000506", "SHOAL_FAIL_OPC": "mkdir",
                                    "SHOAL_FAIL_MS": "5"})
    assert f.point.code is Code.DROP_REP and f.point.opc == "mkdir" and f.point.ms == 5
    assert not ClientFaults.from_env("c", {}).point.active
    with pytest.raises(InvalidArgument):
        ClientFaults.from_env("c", {"SHOAL_FAIL_LOC": "0x12345"})


# -- a real node and client ------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[NodeServer]:
    def target(name: str, kind: str, index: int = 0) -> TargetSpec:
        return TargetSpec(name, kind, index, [NODE], {NODE: str(tmp_path / name)})

    spec = ClusterSpec(fs="t", port=_free_port(), nids={NODE: "127.0.0.1"},
                       targets=[target("MGS", "MGT"), target(MDT, "MDT"), target(OST, "OST"),
                                target(OST1, "OST", 1)],
                       commit_interval=0.05, stripe_count=1)
    spec.save(tmp_path)
    write_key(tmp_path)
    format_targets(spec)
    server = local_node(tmp_path, NODE)
    await server.serve()
    for t in spec.targets:
        await server.start_target(t.name)
    try:
        yield server
    finally:
        await server.rpc.close()
        for name in list(server.services):
            await server.stop_target(name)


@pytest.fixture
async def client(node: NodeServer) -> AsyncIterator[Client]:
    # a short fixed timeout: a lost message costs this test 0.3 s, not AT's seconds
    c = Client.from_cluster_dir(node.cluster_dir, request_timeout=0.3)
    await c.mount()
    try:
        yield c
    finally:
        await c.close()


def set_fail(node: NodeServer, **kw: str) -> None:
    loc = kw.pop("loc")
    for name, value in kw.items():
        assert node.set_param(f"fail_{name}", value) == [f"fail_{name}"]
    assert node.set_param("fail_loc", loc) == ["fail_loc"]


def stat(node: NodeServer, target: str, what: str) -> int:
    return node.services[target].stats[what]


def param(node: NodeServer, name: str) -> str:
    return node.param_tree()[name]()


async def test_node_lost_reply_is_resent_and_reconstructed(node: NodeServer,
                                                           client: Client) -> None:
    await client.mkdir("/warm")  # the first change of a client commits its slot
    set_fail(node, loc="0x80000506", opc="mkdir")
    await client.mkdir("/d")  # done twice, this would be EEXIST
    assert stat(node, MDT, "mkdir") == 2
    assert stat(node, MDT, "reconstructed") == 1
    assert param(node, "fail_loc") == "0xc0000506" and param(node, "fail_hits") == "1"
    assert client.mdt.timeouts == 1
    with pytest.raises(Exists):
        await client.mkdir("/d")  # ...as it is when it really is done twice


async def test_node_lost_request_is_resent_and_done_once(node: NodeServer,
                                                         client: Client) -> None:
    await client.mkdir("/warm")
    set_fail(node, loc="0x80000505", opc="mkdir", target=MDT)
    await client.mkdir("/d")
    assert stat(node, MDT, "mkdir") == 2  # /warm and /d: the lost one was never served
    assert stat(node, MDT, "reconstructed") == 0
    assert param(node, "fail_loc") == "0xc0000505"


async def test_node_every_nth_write_reply_lost(node: NodeServer, client: Client) -> None:
    await client.write_file("/f", b"0")
    set_fail(node, loc=hex(FAIL_EVERY | Code.DROP_REP), val="3", opc="write", target=OST)
    for i in range(6):
        await client.write_file("/f", bytes([i]) * 1000)
    assert await client.read_file("/f") == bytes([5]) * 1000
    assert stat(node, OST, "reconstructed") == 2
    assert param(node, "fail_hits") == "2"


async def test_node_delays_a_reply(node: NodeServer, client: Client) -> None:
    await client.mkdir("/warm")
    set_fail(node, loc="0x508", opc="getattr", ms="200")
    t0 = time.monotonic()
    await client.stat("/warm")
    assert time.monotonic() - t0 >= 0.2
    assert stat(node, MDT, "reconstructed") == 0


async def test_admin_ops_pass_a_point_that_drops_everything(node: NodeServer,
                                                            client: Client) -> None:
    from shoal.node.admin import node_call

    set_fail(node, loc="0x505")
    got = await node_call(node.spec, node.key, NODE, "get_param", {"pattern": "fail_loc"})
    assert got["params"] == {"fail_loc": "0x505"}
    await node_call(node.spec, node.key, NODE, "set_param", {"name": "fail_loc", "value": "0"})
    assert not node.faults.point.active
    with pytest.raises(InvalidArgument):
        await node_call(node.spec, node.key, NODE, "set_param",
                        {"name": "fail_loc", "value": "0x999"})


async def test_commit_barrier_holds_the_tail_until_lifted(node: NodeServer,
                                                          client: Client) -> None:
    ost = node.services[OST]
    await client.write_file("/f", b"a" * 100)
    await asyncio.sleep(0.2)
    set_fail(node, loc="0x720", target="*-OST*")
    assert ost.no_commit and not node.services[MDT].no_commit
    barred_at = ost.last_committed
    await client.write_file("/f", b"b" * 100)
    await asyncio.sleep(0.3)  # six commit intervals
    assert ost.last_transno > barred_at == ost.last_committed
    node.set_param("fail_loc", "0")
    assert not ost.no_commit
    await asyncio.sleep(0.3)
    assert ost.last_committed == ost.last_transno


async def test_barrier_reaches_a_target_started_after_it_was_set(node: NodeServer,
                                                                 client: Client) -> None:
    set_fail(node, loc="0x720", target=OST)
    await node.stop_target(OST)
    await node.start_target(OST)
    assert not node.services[OST].no_commit
    await client.write_file("/f", b"x" * 10)  # the restarted OST's first request
    assert node.services[OST].no_commit
    node.set_param("fail_loc", "0")
    assert not node.services[OST].no_commit


async def test_client_lost_reply_is_resent_and_reconstructed(node: NodeServer,
                                                             client: Client) -> None:
    await client.mkdir("/warm")
    faults_for(client).set("fail_opc", "mkdir")
    faults_for(client).set("fail_loc", "0x80000506")
    await client.mkdir("/d")
    assert stat(node, MDT, "reconstructed") == 1
    assert faults_for(client).params()["fail_loc"] == "0xc0000506"


async def test_client_lost_request_is_never_sent(node: NodeServer, client: Client) -> None:
    await client.mkdir("/warm")
    faults_for(client).set("fail_opc", "mkdir")
    faults_for(client).set("fail_loc", "0x80000505")
    await client.mkdir("/d")
    assert stat(node, MDT, "mkdir") == 2 and stat(node, MDT, "reconstructed") == 0
    assert client.mdt.timeouts == 1


async def test_client_delays_its_requests(node: NodeServer, client: Client) -> None:
    faults_for(client).set("fail_ms", "150")
    faults_for(client).set("fail_loc", hex(FAIL_SOME | Code.DELAY_REQ))
    faults_for(client).set("fail_val", "2")
    t0 = time.monotonic()
    await client.mkdir("/a")
    await client.mkdir("/b")
    await client.mkdir("/c")
    # the two delays and nothing else; one mkdir of a new client also waits for a commit
    assert 0.3 <= time.monotonic() - t0
    assert faults_for(client).point.hits == 2


async def test_a_replayed_create_keeps_the_layout_its_writes_went_to(node: NodeServer,
                                                                    client: Client) -> None:
    """The MDT dies with a create in its uncommitted tail; the replay must recreate the file
    on the OSTs its data was written to, not wherever the restarted MDT's round robin
    points (Lustre replays an open with the layout of its first reply)."""
    await client.write_file("/a", b"a" * 100)  # round robin: OST0000; commits our slot
    await asyncio.sleep(0.2)
    set_fail(node, loc="0x720", target=MDT)
    await client.write_file("/b", b"b" * 100)  # OST0001, behind the barrier
    layout = (await client.stat("/b")).layout
    node.drop_target(MDT)  # a crash: the tail, /b's create included, is gone
    node.set_param("fail_loc", "0")
    await node.start_target(MDT)
    assert (await client.stat("/b")).layout == layout
    assert await client.read_file("/b") == b"b" * 100
