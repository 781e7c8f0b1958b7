"""A synchronous facade over the async Client: its own event loop in a background thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from shoal.client.client import Client
from shoal.net import loop

T = TypeVar("T")


class SyncClient:
    """`with SyncClient.from_cluster_dir(d) as c: c.write_file("/a", b"x")`.

    Every async method of Client is available with the same name, called synchronously.
    """

    def __init__(self, client_factory: Any) -> None:
        self._loop = loop.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="shoal-client",
                                        daemon=True)
        self._thread.start()
        self.client: Client = self._run(self._make(client_factory))

    @staticmethod
    async def _make(factory: Any) -> Client:
        client: Client = factory()
        try:
            return await client.mount()
        except BaseException:
            await client.close()
            raise

    @classmethod
    def from_cluster_dir(cls, cluster_dir: Path | str, **kw: Any) -> SyncClient:
        return cls(lambda: Client.from_cluster_dir(cluster_dir, **kw))

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if not asyncio.iscoroutinefunction(attr):
            return attr

        def call(*args: Any, **kw: Any) -> Any:
            return self._run(attr(*args, **kw))

        return call

    def close(self) -> None:
        try:
            self._run(self.client.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
