"""SQLite-only behaviour: persistence, automatic compaction, locking, threads and loops, and
what an unusable file looks like to the caller."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from contextlib import aclosing
from pathlib import Path

import pytest

from shoal.errors import StoreError, StoreUnreachable
from shoal.store import Compacted, EventType
from shoal.store.sqlite import SQLiteStore


async def test_state_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with SQLiteStore(path) as store:
        rev = await store.put("/k", b"v")
    async with SQLiteStore(path) as store:
        assert await store.revision() == rev
        kv = await store.get("/k")
        assert kv is not None and kv.value == b"v"
        assert await store.put("/k", b"w") == rev + 1


async def test_history_is_compacted_automatically(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "s.db", history_revisions=50) as store:
        first = await store.put("/k", b"0")
        for i in range(120):
            last = await store.put("/k", str(i).encode())
        with pytest.raises(Compacted) as err:
            async with aclosing(store.watch("/", first)) as events:
                await anext(events)
        assert last - 60 <= err.value.compact_revision <= last - 50
        async with aclosing(store.watch("/", last - 49)) as events:  # recent history is kept
            ev = await anext(events)
        assert ev.revision == last - 49


async def test_watcher_that_falls_behind_compaction_raises_compacted(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "s.db", history_revisions=20) as store:
        start = await store.put("/k", b"first")
        events = store.watch("/", start)
        assert (await anext(events)).value == b"first"
        for i in range(60):  # written while the watcher is not reading
            await store.put("/k", str(i).encode())
        with pytest.raises(Compacted):
            await anext(events)


async def test_expired_lease_invisible_to_readers_without_a_watcher(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "s.db") as store:
        lease = await store.grant_lease(0.3)
        rev = await store.put("/leased", b"x", lease=lease.id)
        await store.put("/plain", b"y")
        await asyncio.sleep(0.5)
        kvs, at = await store.range("/")
        assert [kv.key for kv in kvs] == ["/plain"]
        assert at == rev + 2  # the reap was a revision of its own, after /plain
        assert await store.lease_deadline(lease.id) is None


async def test_lease_ttl_counts_whole_seconds_as_etcd_does(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "s.db") as store:
        lease = await store.grant_lease(2.0)
        assert await store.lease_ttl(lease.id) == 1.0  # 1.99... left reads 1, as in etcd
        await asyncio.sleep(1.05)
        assert await store.lease_ttl(lease.id) == 0.0  # less than a second left
        await store.keepalive(lease.id)
        assert await store.lease_ttl(lease.id) == 1.0
        await store.revoke_lease(lease.id)
        assert await store.lease_ttl(lease.id) is None


async def test_locked_database_is_unreachable_not_a_hang(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with SQLiteStore(path, busy_timeout=0.3) as store:
        await store.put("/k", b"v")
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # another process wedged inside a write
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        t0 = time.monotonic()
        with pytest.raises(StoreUnreachable, match=str(path)):
            await store.put("/k", b"w")
        assert time.monotonic() - t0 < 5
        assert ticks >= 5  # the loop kept running while SQLite waited on its lock
        task.cancel()
        blocker.execute("ROLLBACK")
        blocker.close()
        assert await store.put("/k", b"w") > 0


async def test_missing_directory_is_unreachable_with_url(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "no" / "such" / "dir" / "s.db")
    with pytest.raises(StoreUnreachable) as err:
        await store.get("/k")
    assert store.url in str(err.value) and store.url.startswith("sqlite:///")
    with pytest.raises(StoreUnreachable):
        await store.put("/k", b"v")
    await store.close()


async def test_not_a_database_is_a_clear_store_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not an SQLite file, just some text " * 100)
    store = SQLiteStore(path)
    with pytest.raises(StoreError, match="junk.db"):
        await store.get("/k")
    await store.close()
    assert path.read_bytes().startswith(b"this is not")  # and nothing was changed


def test_keepalive_from_a_thread_with_its_own_loop(tmp_path: Path) -> None:
    """The agent renews its lease from its own thread and loop while the main loop watches."""
    path = tmp_path / "s.db"
    stop = threading.Event()
    errors: list[BaseException] = []
    lease_box: list[int] = []

    def keeper() -> None:
        async def run() -> None:
            async with SQLiteStore(path) as store:
                lease = await store.grant_lease(0.5)
                await store.put("/nodes/n1/alive", b"1", lease=lease.id)
                lease_box.append(lease.id)
                while not stop.is_set():
                    await store.keepalive(lease.id)
                    await asyncio.sleep(0.1)

        try:
            asyncio.run(run())
        except Exception as exc:  # reported to the test thread below
            errors.append(exc)

    async def main() -> list[EventType]:
        async with SQLiteStore(path) as store:
            thread = threading.Thread(target=keeper)
            thread.start()
            while not lease_box and thread.is_alive():
                await asyncio.sleep(0.02)
            _, rev = await store.range("/")
            seen: list[EventType] = []
            async with aclosing(store.watch("/nodes/", rev + 1)) as events:
                waiter = asyncio.ensure_future(anext(events))
                await asyncio.sleep(1.5)  # three TTLs: the lease must stay alive
                assert not waiter.done()
                assert await store.get("/nodes/n1/alive") is not None
                stop.set()  # the keeper stops renewing and closes without revoking
                thread.join(10)
                seen.append((await asyncio.wait_for(waiter, 10)).type)
            return seen

    assert asyncio.run(main()) == [EventType.DELETE]
    assert not errors
