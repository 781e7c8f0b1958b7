"""An OST's quota slave (node/quota_slave.py) against a real in-process MDT0, the calls handed
straight to MDT.handle as the node's RPC server would (the way tests/unit/mdt_client.py
talks to an MDT). Found in review (session 24): held writes each queued their own ask and
waited far past READY_WAIT; an ask computed before the lock was sent after writes were
served and set the grant below the usage, so another OST was granted past the hard limit;
writes in flight far under the limit lowered each other's grants into EDQUOT."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from shoal.node import quota_slave
from shoal.node.quota_slave import QuotaSlaves
from shoal.node.spec import TargetSpec
from shoal.protocol import messages as m
from shoal.target.mdt import MDT
from shoal.target.ost import OST
from tests.unit.mdt_client import Client as MdtClient
from tests.unit.ost_client import NAME as OST_NAME

MASTER = TargetSpec("scratch-MDT0000", "MDT", 0, ["n0"], {"n0": "/dev/null"}, "scratch")


class InProcessPeers:
    """PeerCalls' two methods, the master served in this process (None: its node is down,
    each try taking `delay`)."""

    def __init__(self, mdt: MDT | None, delay: float) -> None:
        self.mdt, self.delay, self.xid, self.calls = mdt, delay, 0, 0

    def target(self, fs: str, kind: str, index: int) -> TargetSpec:
        return MASTER

    async def call(self, target: TargetSpec, op: str, args: dict[str, Any],
                   **kw: Any) -> m.Reply | None:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.mdt is None:
            return None
        self.xid += 1
        return self.mdt.handle("qsd-n1", m.Request(self.xid, op, target.name, args,
                                                   m.FLAG_SYNC))[0]

    async def close(self) -> None:
        pass


def write_req(xid: int, oid: int, n: int, owner: list[int]) -> m.Request:
    return m.Request(xid, "write", OST_NAME, {"oid": oid, "offset": 0, "owner": owner},
                     bulk=b"w" * n)


async def served(slaves: QuotaSlaves, ost: OST, req: m.Request) -> str | None:
    """As QuotaSlaves.then does: wait if held, serve, release."""
    held = slaves.before_write(ost, req)
    if held is None:
        return ost.handle("client-1", req)[0].status
    try:
        await held.wait()
        return ost.handle("client-1", req)[0].status
    finally:
        held.release()


async def test_held_writes_all_wait_for_one_ask_and_no_longer_than_ready_wait(
        ost: OST, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quota_slave, "READY_WAIT", 0.5)
    peers = InProcessPeers(None, 0.25)
    slaves = QuotaSlaves(peers, {OST_NAME: ost})  # type: ignore[arg-type]
    t0 = time.monotonic()
    statuses = await asyncio.gather(*(served(slaves, ost, write_req(i + 1, i + 1, 4096,
                                                                    [5, 5, 5]))
                                      for i in range(12)))
    took = time.monotonic() - t0
    assert took < 0.5 + 3 * 0.25, f"12 writes held {took:.1f} s ({peers.calls} asks)"
    assert statuses == [None] * 12  # the master away: unenforced, not refused
    # and the next write is not held again while it stays away
    t0 = time.monotonic()
    assert await served(slaves, ost, write_req(20, 20, 4096, [5, 5, 5])) is None
    assert time.monotonic() - t0 < 0.1


async def test_writes_in_flight_far_under_the_limit_are_all_served(
        ost: OST, mdt: MDT) -> None:
    c = MdtClient(mdt)
    c("quota_set", qtype="u", id=7, bhard=100_000)
    slaves = QuotaSlaves(InProcessPeers(mdt, 0.02), {OST_NAME: ost})  # type: ignore[arg-type]
    assert await slaves.sync(ost)
    reqs = [write_req(i + 1, 10 + i, 4 << 20, [7, 7, 7]) for i in range(4)]
    statuses = await asyncio.gather(*(served(slaves, ost, r) for r in reqs))
    assert statuses == [None] * 4, (statuses, ost.quota.granted)


async def test_a_sync_meanwhile_never_leaves_room_past_the_hard_limit(
        ost: OST, mdt: MDT) -> None:
    c = MdtClient(mdt)
    c("quota_set", qtype="u", id=7, bhard=100_000)
    slaves = QuotaSlaves(InProcessPeers(mdt, 0.05), {OST_NAME: ost})  # type: ignore[arg-type]
    assert await slaves.sync(ost) and ost.quota.limited == {("u", 7)}
    assert await served(slaves, ost, write_req(1, 2, 4096, [7, 7, 7])) is None
    big = asyncio.create_task(served(slaves, ost, write_req(2, 1, 16 << 20, [7, 7, 7])))
    await asyncio.sleep(0.01)  # its ask is on the way to the master
    results = await asyncio.gather(big, slaves.sync(ost))  # the periodic sync meanwhile
    assert results[0] is None
    used = ost.quota.use_kib(("u", 7))
    other = c("quota_acquire", slave="scratch-OST0001", asks=[["u", 7, 100_000, 0]],
              sync=True)
    assert used + other["grants"][0][2] <= 100_000


async def test_past_the_limit_a_held_write_is_refused_after_one_answer(
        ost: OST, mdt: MDT) -> None:
    c = MdtClient(mdt)
    c("quota_set", qtype="u", id=9, bhard=1024)
    peers = InProcessPeers(mdt, 0.0)
    slaves = QuotaSlaves(peers, {OST_NAME: ost})  # type: ignore[arg-type]
    assert await slaves.sync(ost)
    assert await served(slaves, ost, write_req(1, 1, 4 << 20, [9, 9, 9])) == "EDQUOT"
    assert peers.calls <= 4  # not an ask after another until ACQUIRE_WAIT
    assert await served(slaves, ost, write_req(2, 2, 512 << 10, [9, 9, 9])) is None


async def test_a_fresh_ost_takes_back_what_its_last_instance_held(ost: OST, mdt: MDT) -> None:
    c = MdtClient(mdt)
    c("quota_set", qtype="u", id=6, bhard=10_000)
    c("quota_acquire", slave=OST_NAME, asks=[["u", 6, 5000, 0]], sync=True)
    slaves = QuotaSlaves(InProcessPeers(mdt, 0.0), {OST_NAME: ost})  # type: ignore[arg-type]
    assert await slaves.sync(ost)  # a new instance: nothing in use
    got = c("quota_acquire", slave="scratch-OST0001", asks=[["u", 6, 9000, 0]])
    assert got["grants"][0][2] >= 9000




@pytest.mark.parametrize("soft", [0, 50_000])
async def test_a_sync_with_nothing_to_change_costs_the_master_no_commit(
        ost: OST, mdt: MDT, soft: int) -> None:
    """Unless the id has a soft limit, whose grace period needs the usage."""
    c = MdtClient(mdt)
    c("quota_set", qtype="u", id=7, bhard=100_000, bsoft=soft)
    slaves = QuotaSlaves(InProcessPeers(mdt, 0.0), {OST_NAME: ost})  # type: ignore[arg-type]
    assert await slaves.sync(ost)
    assert await served(slaves, ost, write_req(1, 1, 1 << 20, [7, 7, 7])) is None
    before = mdt.stats["quota_acquire"]
    assert await slaves.sync(ost)
    assert mdt.stats["quota_acquire"] - before == (1 if soft else 0)
