"""An agent taking back the owner key of a target it serves (agent/takeover.py `reacquire`),
after the key's lease lapsed in a store outage: one real agent in this process, a real
SQLite store, a real target on its device.

The agent's view of the store lags behind it, so a reacquire can be started again before the
view shows the key the first one won. The second must see that the key is its own and keep
serving; it once took its own key for another node's and stopped serving (superseded), and
the backup then took the target over after a store outage that should have changed nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.agent.agent import FailoverAgent
from shoal.agent.records import OwnerRecord, dump, load, owner_key
from shoal.cluster.local import LocalCluster
from shoal.node.local import local_node
from shoal.node.spec import ClusterSpec, TargetSpec

TARGET = "scratch-OST0000"


@pytest.fixture
def cluster_dir(tmp_path: Path) -> Path:
    LocalCluster(tmp_path / "cluster").create()  # written, no node started
    return tmp_path / "cluster"


@pytest.fixture
async def serving(cluster_dir: Path) -> AsyncIterator[tuple[FailoverAgent, TargetSpec]]:
    """An agent on the target's primary that has taken the target over and serves it."""
    t = ClusterSpec.load(cluster_dir).target(TARGET)
    node = local_node(cluster_dir, t.nodes[0])
    agent = FailoverAgent(node)
    await node.serve()
    agent.heartbeat.start()
    try:
        await agent.actions.take(t, None, "test")
        assert TARGET in node.services
        yield agent, t
    finally:
        agent.heartbeat.stop()
        if TARGET in node.services:
            await node.stop_target(TARGET)
        await node.rpc.close()
        await agent.store.close()


async def owner(agent: FailoverAgent) -> OwnerRecord | None:
    kv = await agent.store.get(owner_key(TARGET))
    return None if kv is None else load(OwnerRecord, kv.value)


async def lapse(agent: FailoverAgent) -> None:
    """What a store outage longer than the TTL does: the lease goes, the key with it."""
    rec = await owner(agent)
    assert rec is not None
    await agent.store.revoke_lease(rec.lease)
    assert await owner(agent) is None


async def test_a_repeated_reacquire_keeps_the_key_and_the_target(
        serving: tuple[FailoverAgent, TargetSpec]) -> None:
    agent, t = serving
    await lapse(agent)
    await agent.actions.reacquire(t)
    first = await owner(agent)
    assert first is not None and first.node == agent.name and first.boot_id == agent.boot_id
    await agent.actions.reacquire(t)  # the view has not caught up: the key looks absent
    assert TARGET in agent.node.services, "superseded by its own owner key"
    assert await owner(agent) == first
    assert agent.heartbeat.lease(TARGET) == first.lease
    assert agent.mounts[TARGET].token > 0


async def test_reacquire_stops_serving_when_another_node_holds_the_key(
        serving: tuple[FailoverAgent, TargetSpec]) -> None:
    agent, t = serving
    await lapse(agent)
    other = t.nodes[1]
    await agent.store.put(owner_key(TARGET), dump(OwnerRecord(other, agent.spec.nid(other),
                                                              "another-boot", 0)))
    await agent.actions.reacquire(t)
    assert TARGET not in agent.node.services
    assert TARGET not in agent.mounts
    rec = await owner(agent)
    assert rec is not None and rec.node == other
