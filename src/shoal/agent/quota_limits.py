"""The store's copy of the quota limits (issue 23: limits "stored in the store, so a backup
node has them").

The limits live on MDT0's device, in the same transactions as the grants and the usage they
govern, so that an acknowledged `setquota` survives an MDS failover as any change does (the
client replays it). The store keeps a copy, written by the node serving MDT0 once a change
of them has committed, with the version the device gave it. A node that starts MDT0 looks
at the copy first: a higher version than the device's means the device lost limits (it was
restored from an older backup, or formatted again), and the copy replaces them. The store
unreachable changes nothing: the device is the authority.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping

from shoal.errors import ShoalError
from shoal.store.base import ROOT, Store
from shoal.target.base import TargetService
from shoal.target.mdt import MDT

log = logging.getLogger(__name__)

EVERY = 2.0  # seconds between looks at MDT0's limits
STORE_WAIT = 2.0  # the most a start waits for the store's copy


def limits_key(fs: str) -> str:
    return f"{ROOT}/quota/{fs}/limits"


class LimitsCopy:
    def __init__(self, store: Store, services: Mapping[str, TargetService]) -> None:
        self.store = store
        self.services = services
        self.saved: dict[str, int] = {}  # MDT0 name -> the version the store has
        self.restored = 0  # starts that took the store's copy

    async def run(self) -> None:
        while True:
            await asyncio.sleep(EVERY)
            for svc in list(self.services.values()):
                if isinstance(svc, MDT) and svc.quota.master:
                    await self._save(svc)

    async def _save(self, svc: MDT) -> None:
        qt = svc.quota
        # only what has committed, and only once no change of it waits for a commit
        if qt.version != qt.committed_version or self.saved.get(svc.name) == qt.version:
            return
        snap = qt.snapshot()
        try:
            await self.store.put(limits_key(svc.fs), json.dumps(snap).encode())
        except (ShoalError, OSError) as exc:
            log.warning("%s: quota limits not copied to the store: %s", svc.name, exc)
            return
        self.saved[svc.name] = int(snap["version"])

    async def opened(self, svc: TargetService) -> None:
        """MDT0 is about to be served here: take the store's copy if it is newer."""
        if not (isinstance(svc, MDT) and svc.quota.master):
            return
        kv = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STORE_WAIT):
                try:
                    kv = await self.store.get(limits_key(svc.fs))
                except (ShoalError, OSError) as exc:
                    log.warning("%s: the store's quota limits not read: %s", svc.name, exc)
        if kv is None:
            return
        try:
            snap = json.loads(kv.value)
            newer = int(snap["version"]) > svc.quota.version
        except (ValueError, KeyError, TypeError) as exc:
            log.error("%s: the store's copy of the quota limits is unreadable: %s",
                      svc.name, exc)
            return
        if newer:
            log.warning("%s: the device's quota limits (version %d) are older than the "
                        "store's (version %d): taking the store's", svc.name,
                        svc.quota.version, snap["version"])
            svc.quota.restore(snap)
            self.restored += 1
        self.saved[svc.name] = int(snap["version"])


__all__ = ["LimitsCopy", "limits_key"]
