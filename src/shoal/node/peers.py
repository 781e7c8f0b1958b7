"""Calls from one server to a target served by another (Lustre's OSP and LWP): the MDT's
object destroys and owner changes to the OSTs, an OST's quota asks to the master.

A call goes with FLAG_SYNC: the target answers after its commit and keeps no replay state
for this sender (no last_rcvd slot, so no recovery window ever waits for a server). Only
idempotent operations go this way, so a lost answer or a failover of either side only means
the same call again. The target is tried on each node of its failover pair in turn.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

from shoal.errors import NotConnected, TimedOut
from shoal.net.client import RpcConnection
from shoal.net.tls import client_context
from shoal.node.host import HostSpec
from shoal.node.spec import TargetSpec
from shoal.protocol import messages as m

log = logging.getLogger(__name__)

CALL_TIMEOUT = 10.0  # a sync call waits for the target's commit (its interval, and fsyncs)


class PeerCalls:
    """One connection per peer node, shared by every caller on this node."""

    def __init__(self, spec: HostSpec, key: bytes, uuid: str) -> None:
        self.spec = spec
        self.key = key
        self.uuid = uuid
        self._conns: dict[str, RpcConnection] = {}
        self._xid = itertools.count(1)

    def target(self, fs: str, kind: str, index: int) -> TargetSpec | None:
        spec = self.spec.fss.get(fs)
        if spec is None:
            return None
        return next((t for t in spec.targets if t.kind == kind and t.index == index), None)

    async def call(self, target: TargetSpec, op: str, args: dict[str, Any], *,
                   timeout: float = CALL_TIMEOUT) -> m.Reply | None:
        """The reply of the first node of the pair that serves `target` (its status may be
        an error), or None if none did (down, not serving it, or still recovering)."""
        for node in target.nodes:
            req = m.Request(next(self._xid), op, target.name, args, flags=m.FLAG_SYNC)
            try:
                conn = await self._connection(node)
                reply = await conn.call(req, timeout=timeout)
            except (NotConnected, TimedOut) as exc:
                log.debug("%s %s via %s: %s", op, target.name, node, exc)
                await self._drop(node)
                continue
            if reply.status in ("ENODEV", "ENOTCONN"):
                # served elsewhere, or recovering: the next node, or the next round
                log.debug("%s %s via %s: %s %s", op, target.name, node, reply.status,
                          reply.message)
                continue
            return reply
        return None

    async def _connection(self, node: str) -> RpcConnection:
        conn = self._conns.get(node)
        if conn is None or conn.closed:
            addr, port = self.spec.addr_port(node)
            conn = await RpcConnection.open(addr, port, self.key, m.Hello(self.uuid),
                                            timeout=2.0,
                                            tls=client_context(self.spec.settings))
            self._conns[node] = conn
        return conn

    async def _drop(self, node: str) -> None:
        conn = self._conns.pop(node, None)
        if conn is not None:
            await conn.close()

    async def close(self) -> None:
        for node in list(self._conns):
            await self._drop(node)


__all__ = ["CALL_TIMEOUT", "PeerCalls"]
