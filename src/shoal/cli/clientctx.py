"""Running a command body with a mounted client of the local cluster."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from shoal.cli.common import run
from shoal.client.client import Client

T = TypeVar("T")


def with_client(cluster_dir: Path, body: Callable[[Client], Awaitable[T]], **kw: Any) -> T:
    async def go() -> T:
        client = Client.from_cluster_dir(cluster_dir, **kw)
        try:
            await client.mount()
            return await body(client)
        finally:
            await client.close()

    return run(go())
