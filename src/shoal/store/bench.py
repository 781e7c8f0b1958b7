"""`shoal bench store`: what the failover budget's "detect" step costs on each backend.

For the SQLite store and a real one-member etcd (default raft timings, as deployed), in one run:

- lease expiry detection, across processes: a holder process grants a lease (TTL 2 s), puts
  a key on it, renews once, reports the wall-clock time of that last successful keepalive and
  is killed with SIGKILL; this process watches the key and notes when the DELETE arrives.
  `detect_s_<backend>` is the lateness past the lease deadline, event - (last keepalive + TTL),
  i.e. what the store adds on top of the TTL; `detect_total_s_<backend>` is event - last
  keepalive. Medians over `trials`; every trial is in `detect_trials_<backend>`.
  A node renewing every TTL/3 dies up to TTL/3 after its last keepalive, so its death is
  detected between detect_total_s - TTL/3 and detect_total_s after it happens.
- `cas_per_s_<backend>`, `put_per_s_<backend>`: sequential compare-and-swap chain and plain
  puts on one key from one client, for `rate_seconds` each (latency-bound, like the agent).
- `watch_ms_<backend>`: put by one store object to the event seen by another, median.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import statistics
import time
from collections.abc import Callable
from contextlib import aclosing
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from shoal.store import EventType, Store, open_store
from shoal.store.etcd_server import EtcdCluster
from shoal.store.reaper import LeaseReaper

Progress = Callable[[str], None] | None


def _holder(url: str, key: str, ttl: float, conn: Connection) -> None:
    """Child process: lease a key, renew once, report when, then wait to be killed."""

    async def run() -> None:
        store = open_store(url)
        lease = await store.grant_lease(ttl)
        await store.put(key, str(os.getpid()).encode(), lease=lease.id)
        await asyncio.sleep(ttl / 3)  # a renewal as the agent does it, TTL/3 after the grant
        sent = time.time()
        granted = await store.keepalive(lease.id)
        done = time.time()
        conn.send({"sent": sent, "done": done, "ttl": granted})
        await asyncio.sleep(3600)  # keepalives stop here; the parent kills us

    asyncio.run(run())


async def _detect_once(store: Store, url: str, ttl: float, trial: int,
                       reap: bool = False) -> dict[str, float]:
    key = f"/bench/detect/{trial}/{os.getpid()}/{int(reap)}"
    _, rev = await store.range("/bench/detect/")
    ctx = multiprocessing.get_context("spawn")  # no forked copy of our loop or gRPC state
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_holder, args=(url, key, ttl, child), daemon=True)

    async def wait_delete() -> float:
        async with aclosing(store.watch(key, rev + 1)) as events:
            async for ev in events:
                if ev.type is EventType.DELETE and ev.key == key:
                    return time.time()
        raise RuntimeError("watch ended")

    watcher = asyncio.ensure_future(wait_delete())
    reaper = LeaseReaper(store, "/bench/detect/") if reap else None
    reaping = asyncio.ensure_future(reaper.run()) if reaper else None
    proc.start()
    try:
        if not await asyncio.to_thread(parent.poll, 30):
            raise TimeoutError(f"lease holder for {url} did not report in 30 s")
        report = parent.recv()
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        seen = await asyncio.wait_for(watcher, report["ttl"] + 30)
    finally:
        watcher.cancel()
        if reaping is not None:
            reaping.cancel()
        if proc.is_alive():
            proc.kill()
        await asyncio.to_thread(proc.join, 10)
    return {
        "late": seen - (report["done"] + report["ttl"]),
        "total": seen - report["done"],
        "keepalive_rtt": report["done"] - report["sent"],
    }


async def _rates(store: Store, seconds: float) -> tuple[float, float]:
    key = f"/bench/rate/{os.getpid()}"
    rev = await store.put(key, b"0")
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        new = await store.compare_and_swap(key, str(n).encode(), mod_revision=rev)
        assert new is not None, "CAS lost a race nobody else runs"
        rev, n = new, n + 1
    cas = n / (time.perf_counter() - t0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        await store.put(key, str(n).encode())
        n += 1
    return cas, n / (time.perf_counter() - t0)


async def _watch_ms(writer: Store, reader: Store, samples: int = 10) -> float:
    prefix = f"/bench/watch/{os.getpid()}/"
    _, rev = await reader.range(prefix)
    lat = []
    async with aclosing(reader.watch(prefix, rev + 1)) as events:
        for i in range(samples):
            # The watcher must already be waiting (polling, for SQLite) when the put lands,
            # as it is between real events; a watch pulled only after the put would time
            # just one poll.
            waiter = asyncio.ensure_future(anext(events))
            await asyncio.sleep(0.05 + 0.0037 * (i % 5))  # vary the phase against the polling
            t0 = time.perf_counter()
            await writer.put(f"{prefix}{i}", b"x")
            await asyncio.wait_for(waiter, 10)
            lat.append((time.perf_counter() - t0) * 1000)
    return statistics.median(lat)


async def run_store_bench(
    workdir: Path,
    progress: Progress = None,
    *,
    trials: int = 3,
    ttl: float = 2.0,
    rate_seconds: float = 1.0,
) -> dict[str, Any]:
    """Measure both backends (see the module docstring); returns flat numbers for the CLI."""
    say = progress or (lambda _msg: None)
    workdir = Path(workdir).resolve() / "store-bench"
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "bench.db"
    for leftover in (db, db.with_name("bench.db-wal"), db.with_name("bench.db-shm")):
        leftover.unlink(missing_ok=True)
    say("starting a one-member etcd on a free loopback port")
    cluster = EtcdCluster(workdir / "etcd", size=1)
    await asyncio.to_thread(cluster.start)
    out: dict[str, Any] = {"ttl_s": ttl, "trials": trials}
    try:
        for name, url in (("sqlite", f"sqlite://{db}"), ("etcd", cluster.url)):
            async with open_store(url) as store, open_store(url) as other:
                found, ticked = [], []
                for trial in range(trials):
                    say(f"{name}: lease expiry seen from another process, trial {trial + 1}/{trials}")
                    found.append(await _detect_once(store, url, ttl, trial, name == "etcd"))
                    if name == "etcd":
                        say(f"etcd without a lease reaper (etcd's own expiry), trial {trial + 1}")
                        ticked.append(await _detect_once(store, url, ttl, trial))
                say(f"{name}: CAS and put rates, {rate_seconds:g} s each")
                cas, put = await _rates(store, rate_seconds)
                say(f"{name}: watch latency")
                watch_ms = await _watch_ms(other, store)
            out[f"detect_s_{name}"] = round(statistics.median(f["late"] for f in found), 4)
            out[f"detect_total_s_{name}"] = round(statistics.median(f["total"] for f in found), 4)
            out[f"detect_max_s_{name}"] = round(max(f["late"] for f in found), 4)
            out[f"detect_trials_{name}"] = [round(f["late"], 4) for f in found]
            if ticked:
                out[f"detect_s_{name}_tick"] = round(statistics.median(f["late"] for f in ticked), 4)
                out[f"detect_trials_{name}_tick"] = [round(f["late"], 4) for f in ticked]
            out[f"keepalive_ms_{name}"] = round(
                1000 * statistics.median(f["keepalive_rtt"] for f in found), 3
            )
            out[f"cas_per_s_{name}"] = round(cas, 1)
            out[f"put_per_s_{name}"] = round(put, 1)
            out[f"watch_ms_{name}"] = round(watch_ms, 2)
    finally:
        await asyncio.to_thread(cluster.stop)
    return out
