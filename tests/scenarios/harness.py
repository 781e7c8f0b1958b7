"""What every failure scenario does: run `shoal load` against a real local cluster, inject a
fault while it runs, and afterwards read back the store's view and the event log."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoal.agent.events import read_events
from shoal.agent.records import Event
from shoal.agent.status import read_status
from shoal.cluster.local import LocalCluster
from shoal.store import open_store
from shoal.workload.load import LoadSummary, run_load


class Load:
    """`shoal load` in the background (its client processes are real processes)."""

    def __init__(self, cluster: LocalCluster, *, clients: int = 6, duration: float = 8.0):
        self.summary: LoadSummary | None = None
        self.error: BaseException | None = None

        def body() -> None:
            try:
                self.summary = run_load(cluster.dir, clients=clients, duration=duration,
                                        procs=2)
            except BaseException as exc:  # reported by result()
                self.error = exc

        self.thread = threading.Thread(target=body, daemon=True)
        self.thread.start()

    def result(self, timeout: float = 120.0) -> LoadSummary:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "load did not finish"
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary


def assert_clean(s: LoadSummary, *, errors_ok: bool = False) -> None:
    """No acknowledged write lost or corrupt; the application saw no error."""
    assert s.acked_writes > 0, s
    assert s.lost == 0, s.error_samples
    assert s.corrupt == 0, s.error_samples
    if not errors_ok:
        assert s.errors == 0, s.error_samples
    assert s.verified >= s.acked_writes, s


async def _status(cluster: LocalCluster) -> dict[str, Any]:
    store = open_store(cluster.spec.store_url)
    try:
        return await read_status(store, cluster.spec, events=0)
    finally:
        await store.close()


def status(cluster: LocalCluster) -> dict[str, Any]:
    return asyncio.run(_status(cluster))


def targets(cluster: LocalCluster) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in status(cluster)["targets"]}


def nodes(cluster: LocalCluster) -> dict[str, str]:
    return {n["name"]: n["state"] for n in status(cluster)["nodes"]}


def events(cluster: LocalCluster, since: float = 0.0) -> list[Event]:
    async def go() -> list[Event]:
        store = open_store(cluster.spec.store_url)
        try:
            return await read_events(store, since=since)
        finally:
            await store.close()

    return asyncio.run(go())


def wait_for(what: str, pred: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def served_by(cluster: LocalCluster, owner: str, names: list[str]) -> Callable[[], bool]:
    def pred() -> bool:
        ts = targets(cluster)
        return all(ts[n]["owner"] == owner and ts[n]["state"] == "UP" for n in names)

    return pred


def write_fs_defs(path: Path, extra: str = "") -> Path:
    """The example file system plus extra fs_defs lines."""
    example = Path(__file__).resolve().parents[2] / "src/shoal/cluster/scratch.fs_defs"
    path.write_text(example.read_text() + "\n" + extra + "\n")
    return path
