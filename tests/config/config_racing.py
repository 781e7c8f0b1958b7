"""Real store clients with a hook in them, to make the worst interleavings of concurrent
administrators happen every time instead of once in a while."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from shoal.store.base import KeyValue, Lease, Store, WatchEvent


class BarrierStore(Store):
    """A real store client that runs `after_first_read` between its first read and anything
    else, e.g. waiting until every racer has read: the worst interleaving of administrators,
    made to happen every time."""

    def __init__(self, inner: Store, after_first_read: Callable[[], Awaitable[object]]) -> None:
        self.inner, self.after_first_read, self.url = inner, after_first_read, inner.url
        self.waited = False

    async def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        result = await self.inner.range(prefix)
        if not self.waited:
            self.waited = True
            await self.after_first_read()
        return result

    async def get(self, key: str) -> KeyValue | None:
        return await self.inner.get(key)

    async def revision(self) -> int:
        return await self.inner.revision()

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        return await self.inner.put(key, value, lease=lease)

    async def create(self, key: str, value: bytes, *, lease: int = 0) -> int | None:
        return await self.inner.create(key, value, lease=lease)

    async def compare_and_swap(
        self, key: str, value: bytes, *, mod_revision: int, lease: int = 0
    ) -> int | None:
        return await self.inner.compare_and_swap(key, value, mod_revision=mod_revision, lease=lease)

    async def delete(self, key: str, *, mod_revision: int | None = None) -> bool:
        return await self.inner.delete(key, mod_revision=mod_revision)

    async def transaction(
        self, compares: list[tuple[str, int]], puts: list[tuple[str, bytes]], deletes: list[str]
    ) -> int | None:
        return await self.inner.transaction(compares, puts, deletes)

    async def grant_lease(self, ttl: float) -> Lease:
        return await self.inner.grant_lease(ttl)

    async def keepalive(self, lease_id: int) -> float:
        return await self.inner.keepalive(lease_id)

    async def revoke_lease(self, lease_id: int) -> None:
        await self.inner.revoke_lease(lease_id)

    async def lease_ttl(self, lease_id: int) -> float | None:
        return await self.inner.lease_ttl(lease_id)

    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        return self.inner.watch(prefix, start_revision)

    async def close(self) -> None:
        await self.inner.close()


def racers(factory: Callable[[], Store], n: int) -> list[Store]:
    barrier = asyncio.Barrier(n)
    return [BarrierStore(factory(), barrier.wait) for _ in range(n)]
