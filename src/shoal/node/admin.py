"""Talking to node processes (administrators, agents of other nodes): one RPC to `@node`."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from shoal.errors import NotConnected, TimedOut, from_errno_name
from shoal.net.client import RpcConnection
from shoal.net.tls import client_context
from shoal.node.host import HostSpec
from shoal.node.spec import ClusterSpec
from shoal.protocol import messages as m

NODE_TARGET = "@node"
ADMIN_PREFIX = "admin-"  # the client uuid prefix of administrative connections


async def node_call(spec: ClusterSpec | HostSpec, key: bytes, node: str, op: str,
                    args: dict[str, Any] | None = None, *, timeout: float = 2.0) -> dict[str, Any]:
    """One admin RPC to a node; NotConnected/TimedOut if it does not answer."""
    addr, port = spec.addr_port(node)
    conn = await RpcConnection.open(addr, port, key,
                                    m.Hello(f"{ADMIN_PREFIX}{uuid.uuid4().hex[:8]}"), timeout=timeout,
                                    tls=client_context(spec.settings))
    try:
        reply = await conn.call(m.Request(1, op, NODE_TARGET, args or {}), timeout=timeout)
    finally:
        await conn.close()
    if reply.status is not None:
        raise from_errno_name(reply.status, reply.message)
    return reply.data


async def all_nodes(spec: ClusterSpec | HostSpec, key: bytes, op: str, args: dict[str, Any] | None = None,
                    *, timeout: float = 2.0) -> dict[str, dict[str, Any] | None]:
    """The same admin RPC to every node at once; None for a node that did not answer."""

    async def one(node: str) -> dict[str, Any] | None:
        try:
            return await node_call(spec, key, node, op, args, timeout=timeout)
        except (NotConnected, TimedOut):
            return None

    results = await asyncio.gather(*(one(n) for n in spec.nodes))
    return dict(zip(spec.nodes, results, strict=True))
