"""What a client does beside the requests it is asked for: commits asked for early, when its
uncommitted bytes pile up (`CommitPressure`), and the objects of files whose last link went
destroyed in batches (`Destroyer`). Parts of the client (client/client.py) that the namespace
and file operations use by these public methods only."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shoal.client.imports import Import

log = logging.getLogger(__name__)

DESTROY_DELAY = 0.05  # seconds a destroy waits for others to go in the same batch


class CommitPressure:
    """Keeps the uncommitted bytes (`total()`, over `imports()`) under `limit`."""

    def __init__(self, total: Callable[[], int], imports: Callable[[], list[Import]],
                 limit: int) -> None:
        self.total = total
        self.imports = imports
        self.limit = limit
        self._committing: dict[Import, asyncio.Future[None]] = {}  # syncs asked for early

    async def relieve(self) -> None:
        """Past half the limit, the targets holding uncommitted bytes are asked to commit (one
        sync each at a time) while writing goes on; only past the limit does a writer wait
        for those commits. Waiting at the limit alone stopped a streaming writer for a
        commit and an fsync on every OST each time it reached it."""
        if self.total() <= self.limit // 2:
            return
        for imp in self.imports():
            if imp.uncommitted_bytes > 0 and imp not in self._committing:
                fut = asyncio.ensure_future(imp.sync(report_lost=False))
                self._committing[imp] = fut
                fut.add_done_callback(partial(self._committed, imp))
        if self.total() > self.limit:
            heavy = [imp for imp in self.imports() if imp.uncommitted_bytes > 0]
            await asyncio.gather(*(imp.sync(report_lost=False) for imp in heavy))

    def _committed(self, imp: Import, fut: asyncio.Future[None]) -> None:
        del self._committing[imp]
        exc = None if fut.cancelled() else fut.exception()
        if exc is not None:
            log.warning("%s: commit asked for under pressure failed: %s", imp.target, exc)

    def asked(self, imp: Import) -> bool:
        """A commit of `imp` asked for early is on its way."""
        return imp in self._committing

    async def settle(self) -> None:
        """The commits asked for finished (before the imports close under them, when they
        would fail as "import closed")."""
        await asyncio.gather(*self._committing.values(), return_exceptions=True)


class Destroyer:
    """The objects of files whose last link went away, destroyed off the hot path."""

    def __init__(self, osts: dict[int, Import]) -> None:
        self.osts = osts  # the client's, filled as it mounts
        self._queue: dict[int, list[int]] = {}
        self._flush: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        """Objects queued and not yet taken by a flush."""
        return sum(len(oids) for oids in self._queue.values())

    @property
    def flushing(self) -> bool:
        """A background flush is on its way."""
        return self._flush is not None and not self._flush.done()

    def queue(self, layout: dict[str, Any]) -> None:
        for ost in layout["osts"]:
            self._queue.setdefault(int(ost), []).append(int(layout["oid"]))
        if self._flush is None or self._flush.done():
            self._flush = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(DESTROY_DELAY)
        await self.flush()

    async def flush(self) -> None:
        queue, self._queue = self._queue, {}
        calls = []
        for ost, oids in queue.items():
            imp = self.osts.get(ost)
            if imp is not None:
                calls.append(imp.call("destroy", {"oids": oids}))
        for res in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(res, Exception):
                log.warning("object destroy failed (objects leak until lfsck): %s", res)

    async def close(self) -> None:
        """Every destroy queued is sent: a batch taken may still be on its way, and
        closing the imports under it would leak those objects."""
        if self._flush is not None:
            await self._flush
        await self.flush()
