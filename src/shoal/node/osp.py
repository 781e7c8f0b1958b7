"""The MDT's way to the OSTs (Lustre's OSP): destroying objects no client will destroy, and
telling the OSTs of their objects' new owners.

A client destroys the objects of a file it unlinked or closed last. When the MDT itself
removes a file, nobody would: the orphans (unlinked while open) of a client that is evicted
or goes away, and (after a crash) whatever recovery leaves with nlink 0 and no handle
(Lustre's mds_cleanup_orphans). The MDT writes those objects into its destroy log, in the same
transaction that drops the inodes (MDT.drop_client, MDT.sweep_orphans); this module sends the
log to the OSTs and clears each entry once an OST has committed the destroy.

A chown, chgrp or new project of a file goes into the MDT's owner log in the same way
(target/mdt_quota.py), and reaches the OSTs as `setowner`, so that their blocks count for the
file's owners.

Both go with FLAG_SYNC (node/peers.py): a lost answer, an OST failover or an MDT restart
before the log's deletions commit only means the same call again, which changes nothing.
An OST that is down or recovering is tried again the next round.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Mapping

from shoal.errors import ShoalError
from shoal.node.peers import PeerCalls
from shoal.node.spec import TargetSpec
from shoal.target.base import TargetService
from shoal.target.mdt import MDT
from shoal.target.recovery import TargetRecovery

log = logging.getLogger(__name__)

ROUND = 1.0  # seconds between rounds when nothing kicks the sender
BATCH = 1024  # objects per destroy or setowner request (an OST takes up to OST.max_oids)


class ObjectDestroyer:
    """One per node: drains the destroy log of every MDT this node serves."""

    def __init__(self, peers: PeerCalls, services: Mapping[str, TargetService],
                 recovery: Mapping[str, TargetRecovery]) -> None:
        self.peers = peers
        self.services = services
        self.recovery = recovery
        self._kick = asyncio.Event()
        self.destroyed = 0  # objects the OSTs confirmed (get_param node.*.osp_destroyed)
        self.owners_set = 0  # object owners the OSTs confirmed

    def kick(self) -> None:
        """The log grew: do not wait for the next round."""
        self._kick.set()

    async def run(self) -> None:
        try:
            while True:
                try:
                    async with asyncio.timeout(ROUND):
                        await self._kick.wait()
                except TimeoutError:
                    pass
                self._kick.clear()
                await self.round()
        finally:
            await self.peers.close()

    async def round(self) -> None:
        """One pass over every MDT served here: sweep after recovery, then send the log."""
        for name, svc in list(self.services.items()):
            if not isinstance(svc, MDT):
                continue
            try:
                await self._drain(name, svc)
            except (sqlite3.Error, ShoalError, OSError) as exc:
                # the MDT stopped under us, or its device failed: the next round (or its
                # next server) tries again; the node must not go down for it
                log.warning("%s: object destroys: %s", name, exc)

    def _ours(self, name: str, svc: MDT) -> bool:
        """Still served here by this instance (a stopped one's database is closed)."""
        return self.services.get(name) is svc

    async def _drain(self, name: str, svc: MDT) -> None:
        rec = self.recovery.get(name)
        if rec is not None and rec.recovering:
            return  # its orphans are known only once every client is back or evicted
        if not svc.orphans_swept:
            swept = svc.sweep_orphans()
            if swept:
                log.warning("%s: %d orphan files no client holds any more: destroying "
                            "their objects", name, swept)
        for ost_index, oids in svc.pending_destroys(BATCH).items():
            ost = self._ost(svc.fs, ost_index)
            if ost is None:
                log.error("%s: destroy log names OST index %d, which is not in the "
                          "file system; dropping %d entries", name, ost_index, len(oids))
            elif await self._sent(ost, "destroy", {"oids": oids}):
                self.destroyed += len(oids)
                log.info("%s: destroyed %d orphan objects", ost.name, len(oids))
            else:
                continue
            if not self._ours(name, svc):
                return  # stopped while we waited: its next server sends them again
            svc.destroys_done(ost_index, oids)
        for ost_index, rows in svc.pending_owners(BATCH).items():
            ost = self._ost(svc.fs, ost_index)
            if ost is not None and not await self._sent(ost, "setowner", {"objects": rows}):
                continue
            if not self._ours(name, svc):
                return
            self.owners_set += len(rows)
            svc.owners_done(ost_index, rows)

    def _ost(self, fs: str, index: int) -> TargetSpec | None:
        return self.peers.target(fs, "OST", index)

    async def _sent(self, ost: TargetSpec, op: str, args: dict[str, object]) -> bool:
        """Whether `ost` did it, committed there (anything else: the next round)."""
        reply = await self.peers.call(ost, op, args)
        if reply is None or reply.status is not None:
            if reply is not None:
                log.debug("%s %s: %s %s", op, ost.name, reply.status, reply.message)
            return False
        return True


__all__ = ["ObjectDestroyer"]
