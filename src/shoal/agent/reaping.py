"""The agent's lease reaper: a partner's death seen at its lease's expiry, not etcd's tick.

On etcd, each agent runs a store.reaper.LeaseReaper over the leases it would act on: its
partners' node leases and the owner leases of the targets it can take. Its own leases are
never looked at. SQLite expires leases on every reader's poll already: nothing to do there.
A reaper that fails stops reaping and says so; etcd's own expiry still works behind it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from shoal.agent.records import NODES_PREFIX, TARGETS_PREFIX, alive_key, owner_key
from shoal.errors import ShoalError
from shoal.node.spec import TargetSpec
from shoal.store.base import KeyValue, Store
from shoal.store.etcd import EtcdStore
from shoal.store.reaper import LeaseReaper

log = logging.getLogger(__name__)


def partner_reaper(store: Store, me: str, my_targets: list[TargetSpec],
                   own_leases: Callable[[], set[int]]) -> LeaseReaper | None:
    """The reaper for node `me`, or None where the store expires leases promptly itself."""
    if not isinstance(store, EtcdStore):
        return None
    keys = {alive_key(n) for t in my_targets for n in t.nodes if n != me}
    keys |= {owner_key(t.name) for t in my_targets}

    def wanted(kv: KeyValue) -> bool:
        return kv.key in keys and kv.lease not in own_leases()

    return LeaseReaper(store, (NODES_PREFIX, TARGETS_PREFIX), wanted=wanted)


async def run_reaper(reaper: LeaseReaper) -> None:
    try:
        await reaper.run()
    except ShoalError as exc:
        log.warning("lease reaper stopped (%s); etcd's own lease expiry remains", exc)
