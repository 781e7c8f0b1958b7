"""The MDT's way to the OSTs (Lustre's OSP): destroying objects no client will destroy.

A client destroys the objects of a file it unlinked or closed last. When the MDT itself
removes a file, nobody would: the orphans (unlinked while open) of a client that is evicted
or goes away, and (after a crash) whatever recovery leaves with nlink 0 and no handle
(Lustre's mds_cleanup_orphans). The MDT writes those objects into its destroy log, in the same
transaction that drops the inodes (MDT.drop_client, MDT.sweep_orphans); this module sends the
log to the OSTs and clears each entry once an OST has committed the destroy.

The destroys go with FLAG_SYNC: the OST answers after its commit and keeps no replay state for
this sender (no last_rcvd slot, so no recovery window ever waits for an MDT). A destroy is
idempotent, so a lost answer, an OST failover or an MDT restart before the log's deletions
commit only means the same destroy is sent again. An OST is tried on each of its failover
nodes in turn; one that is down or recovering is tried again the next round.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
from collections.abc import Mapping

from shoal.errors import NotConnected, ShoalError, TimedOut
from shoal.net.client import RpcConnection
from shoal.net.tls import client_context
from shoal.node.host import HostSpec
from shoal.node.spec import TargetSpec
from shoal.protocol import messages as m
from shoal.target.base import TargetService
from shoal.target.mdt import MDT
from shoal.target.recovery import TargetRecovery

log = logging.getLogger(__name__)

ROUND = 1.0  # seconds between rounds when nothing kicks the sender
BATCH = 1024  # objects per destroy request (an OST takes up to OST.max_oids)
CALL_TIMEOUT = 10.0  # a sync destroy waits for the OST's commit (its interval, and fsyncs)


class ObjectDestroyer:
    """One per node: drains the destroy log of every MDT this node serves."""

    def __init__(self, spec: HostSpec, key: bytes, node: str,
                 services: Mapping[str, TargetService],
                 recovery: Mapping[str, TargetRecovery]) -> None:
        self.spec = spec
        self.key = key
        self.uuid = f"osp-{node}"
        self.services = services
        self.recovery = recovery
        self._conns: dict[str, RpcConnection] = {}
        self._xid = itertools.count(1)
        self._kick = asyncio.Event()
        self.destroyed = 0  # objects the OSTs confirmed (get_param node.*.osp_destroyed)

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
            for conn in self._conns.values():
                await conn.close()

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
            elif await self._destroy(ost, oids):
                self.destroyed += len(oids)
            else:
                continue
            if not self._ours(name, svc):
                return  # stopped while we waited: its next server sends them again
            svc.destroys_done(ost_index, oids)

    def _ost(self, fs: str, index: int) -> TargetSpec | None:
        spec = self.spec.fss.get(fs)
        return next((t for t in spec.osts if t.index == index), None) if spec else None

    async def _destroy(self, ost: TargetSpec, oids: list[int]) -> bool:
        """Destroy `oids` on `ost`, committed there; False if no node of its pair did."""
        for node in ost.nodes:
            req = m.Request(next(self._xid), "destroy", ost.name, {"oids": oids},
                            flags=m.FLAG_SYNC)
            try:
                conn = await self._connection(node)
                reply = await conn.call(req, timeout=CALL_TIMEOUT)
            except (NotConnected, TimedOut) as exc:
                log.debug("%s via %s: %s", ost.name, node, exc)
                await self._drop(node)
                continue
            if reply.status is None:
                log.info("%s: destroyed %d orphan objects", ost.name, len(oids))
                return True
            # ENODEV: served elsewhere; ENOTCONN: recovering; anything else: next round
            log.debug("%s via %s: %s %s", ost.name, node, reply.status, reply.message)
        return False

    async def _connection(self, node: str) -> RpcConnection:
        conn = self._conns.get(node)
        if conn is None or conn.closed:
            addr, port = self.spec.addr_port(node)
            conn = await RpcConnection.open(addr, port, self.key,
                                            m.Hello(self.uuid), timeout=2.0,
                                            tls=client_context(self.spec.settings))
            self._conns[node] = conn
        return conn

    async def _drop(self, node: str) -> None:
        conn = self._conns.pop(node, None)
        if conn is not None:
            await conn.close()


__all__ = ["ObjectDestroyer"]
