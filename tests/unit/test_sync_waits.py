"""Requests that wait for a commit (sync, fsync, a client's first change) through the node's
request path, with a real OST on tmp_path:

- a sync of a target that has never had a transaction is answered at once (it used to wait
  for transno 1, which such a target never makes: the request hung until the health check
  called the target stuck and failed it over, back and forth);
- a request still waiting for a commit when its target stops is answered ENODEV, and leaves
  nothing in the node's health check for the target's next instance to inherit.
"""

from __future__ import annotations

import asyncio
import types
from pathlib import Path

from shoal.node.health import HealthMonitor
from shoal.node.locks import NodeLocks
from shoal.node.quota_slave import QuotaSlaves
from shoal.node.server import NodeServer
from shoal.protocol import messages as m
from shoal.target.ost import OST
from tests.unit.ost_client import NAME

CONN = types.SimpleNamespace(client_uuid="c1")


def node_for(ost: OST) -> NodeServer:
    node = NodeServer.__new__(NodeServer)  # just what _handle uses, no cluster directory
    node.services, node.recovery, node.service_at = {NAME: ost}, {}, {}
    node.gate, node._next_id, node.health = None, 0, HealthMonitor(node.services)
    node.locks = NodeLocks(lambda *a: None, lambda *a: None, 10.0)  # none attached
    node.quota = QuotaSlaves(None, node.services)  # type: ignore[arg-type]  # asks nothing
    return node


async def test_sync_of_a_target_without_transactions_is_answered_at_once(tmp_path: Path):
    ost = OST(NAME, tmp_path / "ost0", fs="scratch", commit_interval=3600)
    ost.format()
    await ost.start()
    try:
        node = node_for(ost)
        reply = await asyncio.wait_for(
            node._handle(CONN, m.Request(1, "sync", NAME, {})), 5)  # type: ignore[arg-type]
        assert reply is not None and reply.status is None
        assert not node.health.inflight
    finally:
        await ost.stop()


async def test_a_request_waiting_for_a_commit_when_its_target_stops_gets_enodev(
        tmp_path: Path):
    ost = OST(NAME, tmp_path / "ost0", fs="scratch", commit_interval=3600)
    ost.format()
    await ost.start()
    node = node_for(ost)
    w = m.Request(1, "write", NAME, {"oid": 1, "offset": 0}, bulk=b"x" * 4096)
    assert (await node._handle(CONN, w)).status is None  # type: ignore[arg-type, union-attr]
    await ost.commit()  # the client's first change is behind it: the next ones are held
    w2 = m.Request(2, "write", NAME, {"oid": 1, "offset": 0}, bulk=b"y" * 4096)
    assert (await node._handle(CONN, w2)).status is None  # type: ignore[arg-type, union-attr]
    ost.no_commit = True  # the device went away: no commit will ever come
    sync = asyncio.create_task(
        node._handle(CONN, m.Request(3, "sync", NAME, {})))  # type: ignore[arg-type]
    await asyncio.sleep(0.2)
    assert not sync.done() and len(node.health.inflight) == 1
    ost.abandon()
    reply = await asyncio.wait_for(sync, 5)
    assert reply is not None and reply.status == "ENODEV"
    assert not node.health.inflight
