"""What the mount keeps of file data, under the OSTs' extent locks (client/data_locks.py).

The kernel keeps the pages a read brought, and the mount buffers writes, only under a lock
on each object that holds those bytes: PR before a read is answered, PW before a write is
buffered. When a lock goes (called back, the LRU, a reconnect), what it covered goes
first: the writes buffered under a PW lock land and their size is reported to the MDT, the
read-ahead is dropped and the kernel is told to drop the file's pages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from shoal.client.client import Client
from shoal.client.layout import Layout, osts_touched
from shoal.mount.cache import Served
from shoal.mount.handles import HandleTable, Node
from shoal.mount.kernel_cache import KernelCache
from shoal.protocol.ldlm import Mode


def still_served(client: Client, layout: Layout | None, served: Served, start: int,
                 end: int) -> bool:
    """Whether bytes [start, end) read under the locks `served` names (by OST index) may be
    kept: on every object that holds them, the very lock it was read under is still held
    (one that came after the read does not make its bytes current)."""
    return layout is None or all(
        (dl := client.osts[o].data_locks) is None or dl.still_under(layout.oid, served.get(o))
        for o in osts_touched(layout, start, end))


class KeptData:
    def __init__(self, client: Client, table: HandleTable, kernel: KernelCache,
                 report: Callable[[Node], Awaitable[None]]) -> None:
        self.client = client
        self.table = table
        self.kernel = kernel
        self.report = report  # lands a node's buffered writes and reports their size
        client.keep_data(self._released)

    async def hold(self, node: Node, mode: Mode, start: int, end: int) -> None:
        """Hold a lock of `mode` on each object with bytes [start, end) of the file. A
        small file has one object with data: one lock."""
        layout = node.layout
        if layout is None:
            return
        oid = layout.oid
        wants = [dl for o in osts_touched(layout, start, end)
                 if (dl := self.client.osts[o].data_locks) is not None
                 and not dl.holds(oid, mode)]
        if wants:
            await asyncio.gather(*(dl.hold(oid, mode, node.ino) for dl in wants))

    def current(self, node: Node, served: Served, start: int, end: int) -> bool:
        return still_served(self.client, node.layout, served, start, end)

    def covered(self, node: Node, mode: Mode, start: int, end: int) -> bool:
        """Whether this mount holds a lock of `mode` on every object with those bytes."""
        layout = node.layout
        return layout is None or all(
            (dl := self.client.osts[o].data_locks) is None or dl.holds(layout.oid, mode)
            for o in osts_touched(layout, start, end))

    async def _released(self, mode: Mode, ino: Any) -> None:
        if not isinstance(ino, int):
            return
        node = self.table.nodes.get(ino)
        if node is not None:
            if mode is Mode.PW:
                await self.report(node)
            node.reader.drop()
        await self.kernel.drop_pages(ino)
