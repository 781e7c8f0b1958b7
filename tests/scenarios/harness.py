"""What every failure scenario does: run `shoal load` against a real local cluster, inject a
fault while it runs, and afterwards read back the store's view and the event log."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from shoal.agent.events import read_events
from shoal.agent.records import Event
from shoal.agent.status import read_status
from shoal.client.client import Client
from shoal.cluster.local import LocalCluster
from shoal.node.admin import node_call
from shoal.store import open_store
from shoal.workload.load import LoadSummary, run_load
from tests.helpers import shoal

T = TypeVar("T")


class Load:
    """`shoal load` in the background (its client processes are real processes)."""

    def __init__(self, cluster: LocalCluster, *, clients: int = 6, duration: float = 8.0):
        self.summary: LoadSummary | None = None
        self.error: BaseException | None = None
        # every client has connected to every target (its slot is on disk there) and the
        # clients have done about 20 operations each
        self.ready = threading.Event()
        self.writing = threading.Event()

        def progress(_elapsed: float, ops: int) -> None:
            if ops >= 20 * clients and self.ready.is_set():
                self.writing.set()

        def body() -> None:
            try:
                self.summary = run_load(cluster.dir, clients=clients, duration=duration,
                                        procs=2, on_progress=progress,
                                        on_ready=self.ready.set)
            except BaseException as exc:  # reported by result()
                self.error = exc

        self.thread = threading.Thread(target=body, daemon=True)
        self.thread.start()

    def wait_writing(self, timeout: float = 30.0) -> None:
        """Until the load's clients have started work: on a loaded machine its processes
        may take seconds to start, and a fault struck before would leave them nothing to
        acknowledge (the load would end with no write at all). A client that first
        connected to a target behind a commit barrier would be unknown to its backup (ci22:
        a late worker's two clients lost their OST0000 writes in a double failure)."""
        assert self.writing.wait(timeout), "the load did not start writing"

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


def set_fail(cl: LocalCluster, node: str, *, cli: bool = False, **settings: str) -> None:
    """Set a node's fail point: with `shoal ctl set_param --node NODE fail_loc=...` (cli),
    or with the same set_param RPC sent from here (a command takes seconds to start on a
    loaded machine, long enough to miss a short load)."""
    pairs = sorted(settings.items(), key=lambda kv: kv[0] == "loc")  # fail_loc last
    if cli:
        shoal("ctl", "set_param", "--node", node, *[f"fail_{k}={v}" for k, v in pairs],
              cluster_dir=cl.dir)
        return

    async def go() -> None:
        for k, v in pairs:
            await node_call(cl.spec, cl.key, node, "set_param", {"name": f"fail_{k}",
                                                                 "value": v})

    asyncio.run(go())


def params(cl: LocalCluster, node: str, pattern: str) -> dict[str, str]:
    data = asyncio.run(node_call(cl.spec, cl.key, node, "get_param", {"pattern": pattern}))
    return dict(data["params"])


def stat(cl: LocalCluster, node: str, target: str, what: str) -> int:
    """One counter of a target's `*.stats` (0 if it never happened)."""
    text = "\n".join(params(cl, node, f"*.{target}.stats").values())
    m = re.search(rf"^{what}\s+(\d+) samples", text, re.M)
    return int(m.group(1)) if m else 0


def recovery_status(cl: LocalCluster, node: str, target: str) -> dict[str, str]:
    text = params(cl, node, f"*.{target}.recovery_status")
    assert text, f"{target} has no recovery_status on {node}"
    lines = next(iter(text.values())).splitlines()
    return dict(line.split(": ", 1) for line in lines)


class Probe:
    """Clients of the test's own on an event loop in a thread of their own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, coro: Coroutine[Any, Any, T]) -> Callable[[float], T]:
        """Run in the background; returns result(timeout)."""
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return lambda timeout=90.0: fut.result(timeout)

    def client(self, cl: LocalCluster, **kw: Any) -> Client:
        async def mount() -> Client:
            return await Client.from_cluster_dir(cl.dir, **kw).mount()

        return self.run(mount())

    def close(self, *clients: Client) -> None:
        for c in clients:
            self.run(c.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5.0)


def node_log(cl: LocalCluster, node: str) -> str:
    return (cl.dir / "logs" / f"{node}.log").read_text(errors="replace")


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def urls(cl: LocalCluster) -> dict[str, str]:
    status = json.loads(shoal("status", "--json", cluster_dir=cl.dir).stdout)
    return {n["name"]: n["metrics"] for n in status["nodes"] if n["metrics"]}


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - a node of ours
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))
