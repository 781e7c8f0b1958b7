"""Client imports against in-process nodes that speak the recovery wire contract.

The fake nodes are real RPC servers on loopback (net/server.py); only what a target does with
a request is scripted: connect replies (epoch, recovering, EBUSY, ESHUTDOWN, ENODEV), a
modifying op that hands out transnos, the final ping held until the recovery window closes,
held requests, early replies and server notices (IR, eviction).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from shoal.client.client import Client
from shoal.errors import IOFailure
from shoal.net.server import RpcServer, ServerConnection
from shoal.protocol import messages as m
from shoal.protocol.transno import make_transno

KEY = b"i" * 32
MDT = "fake-MDT0000"
OST = "fake-OST0000"


@dataclass
class FakeTarget:
    name: str
    epoch: int = 1
    seq: int = 0
    last_committed: int = 0
    recovering: bool = False
    busy: int = 0  # refuse this many connects with EBUSY
    evicted: set[str] = field(default_factory=set)
    window: asyncio.Event = field(default_factory=asyncio.Event)  # set: recovery is over
    hang: bool = False  # hold "mod" requests forever (a hung server)
    early: float = 0.0  # hold "mod" this long, sending an early reply first
    service_estimate: float = 0.0
    strict: bool = False  # ENOTCONN to clients that have not connected to this instance
    connected: set[str] = field(default_factory=set)
    log: list[tuple[str, int, int, int]] = field(default_factory=list)  # op xid flags transno
    connects: list[dict[str, Any]] = field(default_factory=list)


class FakeNode:
    def __init__(self, name: str, config: dict[str, Any] | None = None) -> None:
        self.name = name
        self.config = config or {}
        self.targets: dict[str, FakeTarget] = {}
        self.rpc = RpcServer(KEY, self.handle)
        self.port = 0
        self.silent = False

    @property
    def nid(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> FakeNode:
        await self.rpc.start("127.0.0.1", self.port)
        self.port = self.rpc.port
        return self

    def serve(self, name: str, **kw: Any) -> FakeTarget:
        t = self.targets[name] = FakeTarget(name, **kw)
        if not t.recovering:
            t.window.set()
        return t

    def notify(self, what: str, **data: Any) -> None:
        for conn in list(self.rpc.connections):
            conn.send(m.Notice(what, data))

    async def handle(self, conn: ServerConnection, req: m.Request) -> m.Reply | None:
        if self.silent:  # powered off: its sockets stay open and nothing answers
            await asyncio.Event().wait()
        if req.target == "@node":
            return self.connect(conn, req)
        t = self.targets.get(req.target)
        if t is None:
            return m.Reply(req.xid, "ENODEV", f"{req.target} is not served by {self.name}")
        t.log.append((req.op, req.xid, req.flags, req.transno))
        if conn.client_uuid in t.evicted:
            return m.Reply(req.xid, "ESHUTDOWN", "evicted")
        if t.strict and conn.client_uuid not in t.connected:
            return m.Reply(req.xid, "ENOTCONN", f"{t.name} is new and {conn.client_uuid} "
                           "has not connected")
        if req.op == "replay_done":
            await t.window.wait()
        elif req.op == "get_config":
            return m.Reply(req.xid, data=self.config)
        elif req.op == "sync":
            t.last_committed = make_transno(t.epoch, t.seq)
        elif req.op == "mod":
            return await self.modify(conn, t, req)
        return m.Reply(req.xid, last_committed=t.last_committed)

    def connect(self, conn: ServerConnection, req: m.Request) -> m.Reply:
        t = self.targets.get(req.args.get("target", ""))
        if t is None:
            return m.Reply(req.xid, "ENODEV", "not here")
        t.connects.append(dict(req.args))
        if conn.client_uuid in t.evicted:
            if req.args["flags"] != ["initial"]:
                return m.Reply(req.xid, "ESHUTDOWN", "you were evicted")
            t.evicted.discard(conn.client_uuid)  # a new client now
        if t.busy:
            t.busy -= 1
            return m.Reply(req.xid, "EBUSY", "recovering: waiting for known clients")
        t.connected.add(conn.client_uuid)
        return m.Reply(req.xid, data={"epoch": t.epoch, "last_committed": t.last_committed,
                                      "recovering": t.recovering, "node": self.name})

    async def modify(self, conn: ServerConnection, t: FakeTarget, req: m.Request) -> m.Reply:
        if t.hang:
            await asyncio.Event().wait()
        if t.early:
            await asyncio.sleep(t.early / 4)
            conn.send(m.EarlyReply(req.xid, t.early * 2))
            await asyncio.sleep(t.early * 3 / 4)
        if req.flags & m.FLAG_REPLAY:
            transno = req.transno
        else:
            t.seq += 1
            transno = make_transno(t.epoch, t.seq)
        return m.Reply(req.xid, transno=transno, last_committed=t.last_committed,
                       pre_versions=[transno - 1], service_estimate=t.service_estimate)


@dataclass
class Cluster:
    mgs: FakeNode
    a: FakeNode
    b: FakeNode


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    a, b = await FakeNode("nodeA").start(), await FakeNode("nodeB").start()
    config = {"fs": "fake", "targets": [
        {"name": MDT, "kind": "MDT", "index": 0, "nids": [a.nid, b.nid]},
        {"name": OST, "kind": "OST", "index": 0, "nids": [a.nid, b.nid]},
    ]}
    mgs = await FakeNode("mgsnode", config).start()
    mgs.serve("MGS")
    a.serve(MDT)
    a.serve(OST)
    yield Cluster(mgs, a, b)
    for node in (mgs, a, b):
        await node.rpc.close()


async def mounted(c: Cluster, **kw: Any) -> Client:
    kw.setdefault("connect_timeout", 0.5)
    kw.setdefault("recovery_timeout", 10.0)
    return await Client([c.mgs.nid], KEY, name="c1", **kw).mount()


async def wait_for(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def states(imp: Any) -> list[str]:
    return [s for _, s in imp.state_history]


async def test_failover_replays_in_transno_order_before_new_work(cluster: Cluster):
    client = await mounted(cluster)
    try:
        imp = client.mdt
        for i in range(5):
            await imp.call("mod", {"i": i}, bulk=b"x" * 10)
        assert [e.transno for e in imp.replay] == [make_transno(1, s) for s in range(1, 6)]
        assert imp.uncommitted_bytes == 50 and client.uncommitted_bytes == 50
        # nodeA dies; nodeB mounts the target in a new epoch, with seq 1-2 on disk
        await cluster.a.rpc.close()
        t = cluster.b.serve(MDT, epoch=2, recovering=True,
                            last_committed=make_transno(1, 2))
        new = asyncio.create_task(imp.call("mod", {"new": True}))
        await wait_for(lambda: imp.state == "REPLAY_WAIT")
        replays = [(op, flags, transno) for op, _, flags, transno in t.log]
        assert replays == [("mod", m.FLAG_REPLAY, make_transno(1, s)) for s in (3, 4, 5)] + [
            ("replay_done", 0, 0)]
        assert t.connects[-1] == {"target": MDT, "flags": ["reconnect"], "epoch": 1}
        assert not new.done(), "new work waits until the recovery window closes"
        assert imp.uncommitted_bytes == 30 and client.uncommitted_bytes == 30  # 1-2 committed
        t.recovering = False
        t.window.set()
        reply = await asyncio.wait_for(new, 5)
        assert reply.transno == make_transno(2, 1)
        assert t.log[-1][0] == "mod" and not t.log[-1][2] & m.FLAG_REPLAY
        tail = states(imp)[-6:]
        assert tail == ["CONNECTING", "REPLAY", "REPLAY_LOCKS", "REPLAY_WAIT", "RECOVER", "FULL"]
        assert imp.nid == cluster.b.nid and imp.epoch == 2
    finally:
        await client.close()


async def test_replays_carry_the_original_pre_versions(cluster: Cluster):
    client = await mounted(cluster)
    try:
        imp = client.mdt
        await imp.call("mod", {})
        sent: list[list[int]] = []
        await cluster.a.rpc.close()
        t = cluster.b.serve(MDT, epoch=2, recovering=True)
        original = cluster.b.modify

        async def spy(conn: ServerConnection, tg: FakeTarget, req: m.Request) -> m.Reply:
            sent.append(list(req.pre_versions))
            return await original(conn, tg, req)

        cluster.b.modify = spy  # type: ignore[method-assign]
        t.window.set()
        await imp.call("mod", {})
        assert sent[0] == [make_transno(1, 1) - 1]
    finally:
        await client.close()


async def test_busy_target_is_retried_on_the_same_nid(cluster: Cluster):
    t = cluster.a.targets[OST]
    t.busy = 3
    client = await mounted(cluster)
    try:
        started = time.monotonic()
        await client.osts[0].call("mod", {})
        assert time.monotonic() - started < 2.0
        assert len(t.connects) == 4 and client.osts[0].nid == cluster.a.nid
        assert cluster.b.targets == {} and client.osts[0].connect_attempts == 4
    finally:
        await client.close()


async def test_enodev_moves_round_robin_to_the_next_nid(cluster: Cluster):
    client = await mounted(cluster)
    try:
        imp = client.osts[0]
        await imp.call("mod", {})
        cluster.a.targets.pop(OST)  # failed over to nodeB, which is up
        cluster.b.serve(OST, epoch=2)
        await imp.call("mod", {})
        assert imp.nid == cluster.b.nid
        assert cluster.b.targets[OST].connects[0]["flags"] == ["reconnect"]
    finally:
        await client.close()


async def test_a_new_instance_on_the_same_nid_is_reconnected_in_place(cluster: Cluster):
    client = await mounted(cluster)
    try:
        imp = client.mdt
        await imp.call("mod", {})
        attempts = imp.connect_attempts
        # the target restarted on nodeA (same NID, same TCP connection in this fake)
        t = cluster.a.serve(MDT, epoch=2, recovering=True, strict=True)
        t.window.set()
        reply = await imp.call("mod", {})
        assert reply.transno == make_transno(2, 1)
        assert imp.connect_attempts == attempts + 1, "no detour through the other NID"
        assert [op for op, *_ in t.log] == ["mod", "mod", "replay_done", "mod"]
        assert t.log[1][2] == m.FLAG_REPLAY and t.log[-1][2] & m.FLAG_RESEND
    finally:
        await client.close()


async def test_eviction_fails_calls_drops_the_list_and_reconnects_fresh(cluster: Cluster):
    client = await mounted(cluster)
    try:
        imp = client.osts[0]
        t = cluster.a.targets[OST]
        await imp.call("mod", {}, bulk=b"y" * 100)
        await imp.call("mod", {}, bulk=b"y" * 100)
        assert len(imp.replay) == 2 and client.uncommitted_bytes == 200
        t.evicted.add("c1")
        with pytest.raises(IOFailure):
            await imp.call("mod", {})
        assert imp.replay == [] and imp.uncommitted_bytes == 0 and client.uncommitted_bytes == 0
        await wait_for(lambda: imp.state == "FULL")
        assert t.connects[-1] == {"target": OST, "flags": ["initial"], "epoch": 0}
        assert "EVICTED" in states(imp)
        reply = await imp.call("mod", {})  # later calls work
        assert reply.transno
        with pytest.raises(IOFailure, match="2 acknowledged changes were lost"):
            await imp.sync()  # fsync reports the lost writes once
        await imp.sync()
    finally:
        await client.close()


async def test_eviction_notice_fails_held_calls_with_eio(cluster: Cluster):
    client = await mounted(cluster)
    try:
        imp = client.osts[0]
        await imp.call("mod", {})
        cluster.a.targets[OST].hang = True
        held = asyncio.create_task(imp.call("mod", {}))
        await wait_for(lambda: len(cluster.a.targets[OST].log) == 2)
        await client.connection(cluster.b.nid)  # so nodeB's notices reach this client
        cluster.b.notify("evicted", target=OST)  # not the server we talk to: ignored
        await asyncio.sleep(0.1)
        assert not held.done()
        cluster.a.targets[OST].hang = False
        cluster.a.notify("evicted", target=OST)
        with pytest.raises(IOFailure):
            await asyncio.wait_for(held, 2)
        await wait_for(lambda: imp.state == "FULL")
    finally:
        await client.close()


async def test_ir_notice_moves_a_blocked_call_at_once(cluster: Cluster):
    client = await mounted(cluster)
    try:
        imp = client.mdt
        await imp.call("mod", {})
        cluster.a.targets[MDT].hang = True  # nodeA hangs: its TCP connection stays up
        started = time.monotonic()
        call = asyncio.create_task(imp.call("mod", {"after": "ir"}))
        await asyncio.sleep(0.2)
        t = cluster.b.serve(MDT, epoch=2, recovering=True)
        t.window.set()
        cluster.mgs.notify("ir", target=MDT, nid=cluster.b.nid, node="nodeB", epoch=2,
                           version=5)
        reply = await asyncio.wait_for(call, 5)
        took = time.monotonic() - started
        assert took < imp.attempt_timeout(), f"took {took:.2f}s: waited for the timeout"
        assert reply.transno == make_transno(2, 1)
        assert [op for op, *_ in t.log] == ["mod", "replay_done", "mod"]  # replay, ping, resend
        assert t.log[-1][2] & m.FLAG_RESEND
        assert imp.nid == cluster.b.nid and imp.ir is not None and imp.ir.version == 5
        # an older notice never overrides a newer one
        cluster.mgs.notify("ir", target=MDT, nid=cluster.a.nid, node="nodeA", epoch=1,
                           version=4)
        await asyncio.sleep(0.1)
        assert imp.nid == cluster.b.nid and imp.state == "FULL"
        assert client.nidtbl_version == 5
    finally:
        await client.close()


async def test_noir_client_ignores_ir_notices(cluster: Cluster):
    client = await mounted(cluster, ir=False)
    try:
        await client.mdt.call("mod", {})
        cluster.b.serve(MDT, epoch=2)
        cluster.mgs.notify("ir", target=MDT, nid=cluster.b.nid, node="nodeB", epoch=2,
                           version=1)
        await asyncio.sleep(0.1)
        assert client.mdt.nid == cluster.a.nid and client.mdt.ir is None
        assert "imperative_recovery: DISABLED" in client.get_param("mgc.*.ir_state").popitem()[1]
    finally:
        await client.close()


async def test_early_reply_extends_the_deadline(cluster: Cluster):
    client = await mounted(cluster, request_timeout=0.3)
    try:
        t = cluster.a.targets[OST]
        await client.osts[0].call("mod", {})
        t.early = 0.4  # held past the 0.3 s timeout, but an early reply asks for more
        await client.osts[0].call("mod", {})
        assert [flags for op, _, flags, _ in t.log if op == "mod"] == [0, 0], "no resend"
    finally:
        await client.close()


async def test_adaptive_timeout_follows_the_servers_estimate(cluster: Cluster):
    client = await mounted(cluster)
    try:
        imp = client.osts[0]
        base = imp.attempt_timeout()
        assert base == pytest.approx(1.0 + 0.25 + 2.0, abs=0.1)
        cluster.a.targets[OST].service_estimate = 8.0
        await imp.call("mod", {})
        assert imp.attempt_timeout() >= 8.0 * 1.25 + 2.0
    finally:
        await client.close()


async def test_param_tree_speaks_lustre(cluster: Cluster):
    client = await mounted(cluster)
    try:
        await client.mdt.call("mod", {})
        state = client.get_param("mdc.*.state")
        assert list(state) == [f"mdc.{MDT}-mdc-c1.state"]
        text = state.popitem()[1]
        assert text.startswith("current_state: FULL\nstate_history:\n")
        assert re.findall(r"^ - \[ \d+, (\w+) \]$", text, re.M)[-3:] == [
            "NEW", "CONNECTING", "FULL"]
        imp = client.get_param(f"osc.{OST}-osc-c1.import")[f"osc.{OST}-osc-c1.import"]
        # never used, but a mount connects every import (OSTs in the background)
        assert re.search(r"^    state: (CONNECTING|DISCONN|FULL)$", imp, re.M), imp
        mdc = client.get_param("mdc.*.import").popitem()[1]
        assert f"       failover_nids: [ {cluster.a.nid}, {cluster.b.nid} ]" in mdc
        assert f"       current_connection: {cluster.a.nid}" in mdc
        assert "    connect_flags: [ initial ]" in mdc
        assert "       replay_list: 1" in mdc
        timeouts = client.get_param("*.timeouts")
        assert len(timeouts) == 3 and all(v.startswith("last reply : ") for v in timeouts.values())
        assert set(client.get_param("*")) >= {"mgc.MGC127.0.0.1@tcp.ir_state",
                                               f"osc.{OST}-osc-c1.ir"}
        assert client.get_param("nothing.*") == {}
    finally:
        await client.close()


async def test_cancelling_a_call_is_not_taken_for_a_kick(cluster: Cluster):
    client = await mounted(cluster)
    try:
        imp = client.mdt
        await imp.call("mod", {})
        cluster.a.targets[MDT].hang = True
        call = asyncio.create_task(imp.call("mod", {}))
        await wait_for(lambda: len(cluster.a.targets[MDT].log) == 2)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        # both at once: the kick is taken back, the caller's cancellation still wins
        call = asyncio.create_task(imp.call("mod", {}))
        await wait_for(lambda: len(cluster.a.targets[MDT].log) == 3)
        call.cancel()
        imp._kick_attempts()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert not imp._attempting and not imp._kicked
    finally:
        await client.close()


async def test_a_silent_mgs_is_left_for_its_failover_partner(cluster: Cluster):
    """An MGS whose host lost power closes no socket: the client's idle link to it is found
    dead by a ping that gets no answer, and the client moves to the MGS's other NID (where
    IR notices come from now)."""
    mgs2 = await FakeNode("mgsnode2", cluster.mgs.config).start()
    mgs2.serve("MGS")
    c = await Client([cluster.mgs.nid, mgs2.nid], KEY, name="c1", connect_timeout=0.5,
                     recovery_timeout=10.0).mount()
    try:
        await wait_for(lambda: c.mgs.state == "FULL")
        assert c.mgs.nid == cluster.mgs.nid
        cluster.mgs.silent = True
        c.node_said(cluster.mgs.nid, {"ping_interval": 0.2})
        await wait_for(lambda: c.mgs.state == "FULL" and c.mgs.nid == mgs2.nid, timeout=5.0)
    finally:
        await c.close()
        await mgs2.rpc.close()


async def test_a_request_timeout_pings_the_node_and_a_silent_one_is_left(cluster: Cluster):
    """The MDT's node went silent under a request: the request's timeout starts a ping at
    once, and the MGS link on the same node moves too, long before the ping interval."""
    config = {"fs": "fake", "targets": [
        {"name": MDT, "kind": "MDT", "index": 0, "nids": [cluster.mgs.nid, cluster.b.nid]}]}
    cluster.mgs.config = config
    cluster.mgs.serve(MDT)
    cluster.b.serve(MDT)
    cluster.b.serve("MGS")
    c = await Client([cluster.mgs.nid, cluster.b.nid], KEY, name="c1", connect_timeout=0.5,
                     recovery_timeout=10.0, request_timeout=0.5).mount()
    try:
        await wait_for(lambda: c.mgs.state == "FULL" and c.mdt.state == "FULL")
        assert c.mgs.nid == c.mdt.nid == cluster.mgs.nid
        cluster.mgs.silent = True
        await c.mdt.call("mod", {})
        assert c.mdt.nid == cluster.b.nid
        await wait_for(lambda: c.mgs.state == "FULL" and c.mgs.nid == cluster.b.nid,
                       timeout=3.0)
    finally:
        await c.close()
