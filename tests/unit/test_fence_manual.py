"""Fencing with the manual driver: a real SQLite store, confirmed by the real
`shoal fence confirm` command.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from shoal.fence import FenceFailed, ManualFenceDriver, fence_confirm_key, fence_request_key
from shoal.store import open_store
from tests.unit.fence_helpers import run_shoal


async def wait_for_key(store, key: str, timeout: float = 10.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while await store.get(key) is None:
        assert time.monotonic() < deadline, f"{key} never appeared"
        await asyncio.sleep(0.02)


async def test_manual_fence_confirmed_by_the_cli(tmp_path: Path):
    url = f"sqlite://{tmp_path / 'store.db'}"
    alerts: list[str] = []
    async with open_store(url) as store:
        # an old confirmation must not count for this fence
        await store.put(fence_confirm_key("nid00061"), b'{"by": "yesterday"}')
        driver = ManualFenceDriver(store, timeout=60, requester="nid00060",
                                   on_alert=alerts.append)
        task = asyncio.create_task(driver.fence("nid00061"))
        await wait_for_key(store, fence_request_key("nid00061"))
        await asyncio.sleep(0.2)
        assert not task.done(), "a stale confirmation was taken for this fence"
        assert alerts and "shoal fence confirm nid00061" in alerts[0]

        rc, out = await run_shoal("fence", "confirm", "nid00061", "--by", "alice",
                                  "--store", url, "--dir", str(tmp_path))
        assert rc == 0, out
        assert "requested by nid00060" in out

        result = await asyncio.wait_for(task, 10)
        assert result.ok and result.method == "manual"
        assert "by alice@" in result.detail
        # consumed: the next fence needs its own confirmation; the alert is taken down
        assert await store.get(fence_confirm_key("nid00061")) is None
        assert await store.get(fence_request_key("nid00061")) is None


async def test_manual_fence_times_out(tmp_path: Path):
    async with open_store(f"sqlite://{tmp_path / 'store.db'}") as store:
        driver = ManualFenceDriver(store, timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(FenceFailed, match="no `shoal fence confirm nid00061` within"):
            await driver.fence("nid00061")
        assert time.monotonic() - t0 >= 0.5
        assert await store.get(fence_request_key("nid00061")) is None
        assert await driver.status("nid00061") == "unknown"


async def test_confirm_without_a_waiting_fence_is_refused(tmp_path: Path):
    url = f"sqlite://{tmp_path / 'store.db'}"
    async with open_store(url) as store:
        await store.put("/shoal/x", b"1")
        rc, out = await run_shoal("fence", "confirm", "nid00061", "--store", url)
        assert rc == 3 and "no manual fence of nid00061 is waiting" in out  # not found
        assert await store.get(fence_confirm_key("nid00061")) is None
        rc, out = await run_shoal("fence", "confirm", "nid00061", "--store", url, "--force")
        assert rc == 0, out
        kv = await store.get(fence_confirm_key("nid00061"))
        assert kv is not None and set(json.loads(kv.value)) == {"by", "host", "at"}
