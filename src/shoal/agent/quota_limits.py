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
import json
import logging
import weakref
from collections.abc import Mapping
from typing import Any

from shoal.errors import InvalidArgument, ShoalError
from shoal.store.base import ROOT, Store
from shoal.target.base import TargetService
from shoal.target.mdt import MDT
from shoal.target.mdt_quota import MdtQuota

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
        # the MDT0 instances whose start read the store's copy
        self.read: weakref.WeakSet[MDT] = weakref.WeakSet()
        self.restored = 0  # starts that took the store's copy

    async def run(self) -> None:
        while True:
            await asyncio.sleep(EVERY)
            for svc in list(self.services.values()):
                if isinstance(svc, MDT) and svc.quota.master:
                    await self._save(svc)

    async def _stored_version(self, fs: str) -> tuple[int, Any] | None:
        """(version, copy) in the store, (-1, None) when there is none; None when the store
        did not answer."""
        try:
            async with asyncio.timeout(STORE_WAIT):
                kv = await self.store.get(limits_key(fs))
        except (ShoalError, OSError, TimeoutError) as exc:
            log.warning("the store's quota limits of %s not read: %s", fs, exc)
            return None
        if kv is None:
            return -1, None
        try:
            snap = json.loads(kv.value)
            version = MdtQuota.check_snapshot(snap)[0]
        except (ValueError, InvalidArgument) as exc:
            log.error("the store's copy of the quota limits of %s is unreadable: %s", fs, exc)
            return -1, None
        return version, snap

    async def _save(self, svc: MDT) -> None:
        qt = svc.quota
        # only what has committed, and only once no change of it waits for a commit
        if qt.version != qt.committed_version or self.saved.get(svc.name) == qt.version:
            return
        if svc not in self.read:
            # its start did not see the store's copy: a copy of another timeline (before a
            # restore of the device) must not come back over what this one acknowledged
            got = await self._stored_version(svc.fs)
            if got is None:
                return
            self.read.add(svc)
            if got[0] >= qt.version:
                svc.quota_version_past(got[0])  # saved once that has committed
                return
        snap = qt.snapshot()
        try:
            await self.store.put(limits_key(svc.fs), json.dumps(snap).encode())
        except (ShoalError, OSError) as exc:
            log.warning("%s: quota limits not copied to the store: %s", svc.name, exc)
            return
        self.saved[svc.name] = int(snap["version"])

    async def opened(self, svc: TargetService) -> None:
        """MDT0 is about to be served here: take the store's copy if it is newer. Never
        raises: the device is the authority, and MDT0 must start whatever the store holds."""
        if not (isinstance(svc, MDT) and svc.quota.master):
            return
        got = await self._stored_version(svc.fs)
        if got is None:
            return  # the store did not answer: _save looks again before it writes
        self.read.add(svc)
        version, snap = got
        if version > svc.quota.version:
            log.warning("%s: the device's quota limits (version %d) are older than the "
                        "store's (version %d): taking the store's", svc.name,
                        svc.quota.version, version)
            try:
                svc.quota.restore(snap)
            except ValueError as exc:
                log.error("%s: the store's copy of the quota limits not taken: %s",
                          svc.name, exc)
                return
            self.restored += 1
        self.saved[svc.name] = max(version, 0)


__all__ = ["LimitsCopy", "limits_key"]
