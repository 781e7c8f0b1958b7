"""Imperative recovery's shortcut of the recovery window: a recovering target asks the MGS's
node which of the clients it still waits for are dead, and stops waiting for those.

The MGS's node answers from what it saw of the clients' connections (protocol/presence.py):
a client is dead only when its connection closed a while ago and it has not come back. A
client it has never seen (a new MGS after a failover knows nobody yet) is not dead: the
window waits for it until the soft timeout.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from shoal.agent.view import ClusterView
from shoal.errors import InvalidArgument, NoDevice, ShoalError
from shoal.net.server import ServerConnection
from shoal.node.admin import ADMIN_PREFIX, node_call
from shoal.node.host import HostSpec
from shoal.node.server import NodeServer
from shoal.node.spec import TargetSpec
from shoal.protocol.presence import REMEMBERED, Presence
from shoal.target.base import TargetService

ASK_PERIOD = 0.25  # how often a recovering target asks the MGS who is dead
MGS_NAME = "MGS"


def client_connections(node: NodeServer) -> list[ServerConnection]:
    """Connections of file system clients (not administrators' or other agents')."""
    return [c for c in node.rpc.connections
            if c.client_uuid and not c.client_uuid.startswith(ADMIN_PREFIX)]


class Liveness:
    """A node's part of it: the MGS's answers when it serves the MGS, the questions of
    its recovering targets."""

    def __init__(self, name: str, node: NodeServer, spec: HostSpec, view: ClusterView
                 ) -> None:
        self.name, self.node, self.spec, self.view = name, node, spec, view
        self.presence = Presence()
        node.rpc.on_disconnect = self._disconnected
        node.node_ops["dead_clients"] = self._op_dead_clients

    def _disconnected(self, conn: ServerConnection) -> None:
        if conn.client_uuid and not conn.client_uuid.startswith(ADMIN_PREFIX):
            self.presence.closed(conn.client_uuid, time.monotonic())

    async def recovered(self, t: TargetSpec, svc: TargetService) -> None:
        """Wait for the target's recovery window to close (clients reconnect and replay),
        meanwhile evicting the clients the MGS knows are dead."""
        rec = self.node.recovery.get(t.name)
        if rec is None:
            return
        while rec.recovering:
            for client in await self._dead(rec.awaited()):
                rec.client_dead(client)
            try:
                async with asyncio.timeout(ASK_PERIOD):
                    await rec.wait_complete()
            except TimeoutError:
                pass

    async def _dead(self, clients: list[str]) -> list[str]:
        """Those of `clients` the MGS knows are dead ([] when it cannot be asked)."""
        owner = self.view.owner(MGS_NAME)
        if owner is None or not clients:
            return []
        args = {"clients": clients}
        try:
            if owner[0].node == self.name:
                data = await self._op_dead_clients(args)
            else:
                data = await node_call(self.spec, self.node.key, owner[0].node, "dead_clients",
                                       args, timeout=0.5)
        except (ShoalError, OSError):
            return []
        return [c for c in data.get("dead", []) if c in clients]

    async def _op_dead_clients(self, args: dict[str, Any]) -> dict[str, Any]:
        if MGS_NAME not in self.node.services:
            raise NoDevice(f"the MGS is not served by {self.name}")
        clients = args.get("clients")
        if (not isinstance(clients, list) or len(clients) > REMEMBERED
                or not all(isinstance(c, str) for c in clients)):
            raise InvalidArgument("dead_clients: clients must be a list of client uuids")
        connected = {c.client_uuid for c in client_connections(self.node)}
        return {"dead": self.presence.dead(clients, connected, time.monotonic())}
