"""Several processes on one store (both backends): concurrent writers, and a lease holder
killed with SIGKILL whose key a watcher in another process sees vanish."""

from __future__ import annotations

import asyncio
import json
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from shoal.store import EventType, open_store

WORKER = str(Path(__file__).with_name("store_worker.py"))


class Worker:
    """A store_worker.py process whose JSON output lines can be awaited with a timeout."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, WORKER, *args], stdout=subprocess.PIPE, text=True
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def next(self, timeout: float = 20.0) -> dict[str, Any]:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"worker {self.proc.args} said nothing in {timeout} s") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


@pytest.fixture
def workers() -> Any:
    started: list[Worker] = []

    def start(*args: str) -> Worker:
        w = Worker(*args)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()


def test_two_processes_increment_one_counter(store_url: str, ns: str, workers: Any) -> None:
    n = 100
    a = workers("incr", store_url, ns + "counter", str(n))
    b = workers("incr", store_url, ns + "counter", str(n))
    revs_a, revs_b = a.next(60)["revs"], b.next(60)["revs"]

    async def final() -> bytes:
        async with open_store(store_url) as store:
            kv = await store.get(ns + "counter")
            assert kv is not None
            return kv.value

    assert asyncio.run(final()) == str(2 * n).encode()  # no increment lost
    assert revs_a == sorted(revs_a) and revs_b == sorted(revs_b)
    assert len(set(revs_a) | set(revs_b)) == 2 * n  # every revision handed out once


def test_killed_holder_lease_expires_for_watcher_in_another_process(
    store_url: str, ns: str, workers: Any
) -> None:
    key = ns + "nodes/nid00060/alive"
    holder = workers("hold", store_url, key, "1")
    held = holder.next()
    watcher = workers("watch", store_url, ns, str(held["rev"] + 1))
    assert watcher.next()["watching"]
    holder.kill()  # SIGKILL: no revoke, no goodbye
    ev = watcher.next(timeout=15)
    assert (ev["type"], ev["key"], ev["create_revision"]) == ("DELETE", key, held["rev"])
    assert ev["revision"] > held["rev"]


def test_lease_expires_with_no_process_alive(store_url: str, ns: str, workers: Any) -> None:
    """The holder exits without revoking and nobody watches: the next reader must not see
    the key once its TTL has passed, and history shows the DELETE."""
    key = ns + "orphan"
    left = workers("leave", store_url, key, "1").next()
    assert left["rev"] > 0

    async def check() -> None:
        async with open_store(store_url) as store:
            deadline = asyncio.get_running_loop().time() + 10
            while await store.get(key) is not None:
                assert asyncio.get_running_loop().time() < deadline, "lease never expired"
                await asyncio.sleep(0.1)
            kvs, _ = await store.range(ns)
            assert kvs == []
            events = store.watch(ns, left["rev"] + 1)
            ev = await asyncio.wait_for(anext(events), 10)
            await events.aclose()  # type: ignore[attr-defined]
            assert (ev.type, ev.key, ev.create_revision) == (EventType.DELETE, key, left["rev"])

    asyncio.run(check())

