"""`shoal bench meta`: creates, stats and unlinks per second, with 1 and 8 clients.

Clients run in worker processes (one per core), several clients per process, each client
with its own connections and several requests in flight, as mdtest runs several tasks per
node. The same operations on a local directory on the same disk give the comparison.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

from shoal.client.client import Client
from shoal.errors import Exists
from shoal.net import loop

IN_FLIGHT = 8  # requests each client keeps in flight


async def _phase(clients: list[Client], names: list[list[str]], op: str) -> None:
    async def one(c: Client, mine: list[str]) -> None:
        it = iter(mine)

        async def lane() -> None:
            for p in it:
                if op == "create":
                    await c.create(p)
                elif op == "stat":
                    await c.stat(p)
                else:
                    await c.unlink(p)

        await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))

    await asyncio.gather(*(one(c, m) for c, m in zip(clients, names, strict=True)))


def _worker(cluster_dir: str, first: int, count: int, files: int, base: str,
            barrier: Any, results: Any) -> None:
    async def go() -> dict[str, float]:
        clients = []
        for i in range(first, first + count):
            c = Client.from_cluster_dir(cluster_dir, name=f"meta-{os.getpid()}-{i}")
            await c.mount()
            clients.append(c)
        names = [[f"{base}/c{i}/f{j}" for j in range(files)] for i in range(first, first + count)]
        for i in range(first, first + count):
            try:
                await clients[0].mkdir(f"{base}/c{i}")
            except Exists:
                pass
        times = {}
        for op in ("create", "stat", "unlink"):
            await asyncio.to_thread(barrier.wait)
            t0 = time.perf_counter()
            await _phase(clients, names, op)
            times[op] = time.perf_counter() - t0
            await asyncio.to_thread(barrier.wait)
        for c in clients:
            await c.close()
        return times

    results.put(loop.run(go()))


def _shoal_rates(cluster_dir: Path, nclients: int, files: int) -> dict[str, float]:
    procs = min(nclients, max(1, os.cpu_count() or 1))
    base = f"/bench-meta-{os.getpid()}-{nclients}"

    async def mk() -> None:
        async with Client.from_cluster_dir(cluster_dir) as c:
            await c.mkdir(base)

    loop.run(mk())
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(procs + 1), ctx.Queue()
    share = [nclients // procs + (1 if p < nclients % procs else 0) for p in range(procs)]
    workers, first = [], 0
    for n in share:
        workers.append(ctx.Process(target=_worker, args=(str(cluster_dir), first, n, files,
                                                         base, barrier, results), daemon=True))
        first += n
    for w in workers:
        w.start()
    wall: dict[str, float] = {}
    for op in ("create", "stat", "unlink"):
        barrier.wait(timeout=120)
        t0 = time.perf_counter()
        barrier.wait(timeout=600)
        wall[op] = time.perf_counter() - t0
    for _ in workers:
        results.get(timeout=60)
    for w in workers:
        w.join(timeout=10)
    total = nclients * files
    return {op: total / t for op, t in wall.items()}


def _local_rates(workdir: Path, files: int) -> dict[str, float]:
    d = workdir / f"bench-meta-local-{os.getpid()}"
    d.mkdir()
    names = [str(d / f"f{j}") for j in range(files)]
    t0 = time.perf_counter()
    for p in names:
        os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    tc = time.perf_counter() - t0
    t0 = time.perf_counter()
    for p in names:
        os.stat(p)
    ts = time.perf_counter() - t0
    t0 = time.perf_counter()
    for p in names:
        os.unlink(p)
    tu = time.perf_counter() - t0
    d.rmdir()
    return {"create": files / tc, "stat": files / ts, "unlink": files / tu}


def run_bench_meta(cluster_dir: Path, *, files_per_client: int = 2000) -> dict[str, Any]:
    one = _shoal_rates(cluster_dir, 1, files_per_client * 4)
    eight = _shoal_rates(cluster_dir, 8, files_per_client)
    local = _local_rates(cluster_dir, files_per_client * 4)
    res: dict[str, Any] = {
        "creates_per_s": round(eight["create"]), "stats_per_s": round(eight["stat"]),
        "unlinks_per_s": round(eight["unlink"]),
        "creates_per_s_1": round(one["create"]), "stats_per_s_1": round(one["stat"]),
        "unlinks_per_s_1": round(one["unlink"]),
        "local_creates_per_s": round(local["create"]), "local_stats_per_s": round(local["stat"]),
        "local_unlinks_per_s": round(local["unlink"]),
    }
    res["create_ratio"] = round(res["creates_per_s"] / res["local_creates_per_s"], 3)
    return res
