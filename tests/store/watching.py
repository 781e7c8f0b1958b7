"""Reading a watch in store tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from shoal.store import WatchEvent


async def take(events: AsyncIterator[WatchEvent], n: int, timeout: float = 20.0) -> list[WatchEvent]:
    """The next n events of a watch, or fail after a generous timeout."""

    async def go() -> list[WatchEvent]:
        out = []
        async for ev in events:
            out.append(ev)
            if len(out) == n:
                break
        return out

    return await asyncio.wait_for(go(), timeout)
