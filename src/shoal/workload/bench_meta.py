"""`shoal bench meta`: creates, stats and unlinks per second, with 1 and 8 clients.

Clients run in worker processes (one per core), several clients per process, each client
with its own connections and several requests in flight, as mdtest runs several tasks per
node. The same operations on a local directory on the same disk give the comparison.

Each phase lasts about a second, so one run is at the mercy of the machine's moment: on the
2-core development machine the same cluster gave 8 clients 19,600 and 9,900 creates/s a few
minutes apart. Like the other benchmarks it runs rounds (workload/rounds.py), each of the
three sides once per round in an order that turns, and reports medians; every round removes
what it made, so the next one starts from the same namespace.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoal.client.client import Client
from shoal.errors import Exists
from shoal.net import loop
from shoal.workload.rounds import Round, in_turn, ratio, run_rounds

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
            barrier: Any, results: Any, locks: bool) -> None:
    async def go() -> dict[str, float]:
        clients = []
        for i in range(first, first + count):
            c = Client.from_cluster_dir(cluster_dir, name=f"meta-{os.getpid()}-{i}",
                                        locks=locks)
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

    loop.fewer_collections()  # as a client node's daemon does (mount/run.py)
    results.put(loop.run(go()))


def _shoal_rates(cluster_dir: Path, nclients: int, files: int,
                 tag: str = "", locks: bool = True) -> dict[str, float]:
    procs = min(nclients, max(1, os.cpu_count() or 1))
    base = f"/bench-meta-{os.getpid()}-{nclients}{tag}"

    async def mk() -> None:
        async with Client.from_cluster_dir(cluster_dir) as c:
            await c.mkdir(base)

    async def rm() -> None:
        async with Client.from_cluster_dir(cluster_dir) as c:
            for name in await c.listdir(base):
                await c.rmdir(f"{base}/{name}")  # the files went in the unlink phase
            await c.rmdir(base)

    loop.run(mk())
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(procs + 1), ctx.Queue()
    share = [nclients // procs + (1 if p < nclients % procs else 0) for p in range(procs)]
    workers, first = [], 0
    for n in share:
        workers.append(ctx.Process(target=_worker, args=(str(cluster_dir), first, n, files,
                                                         base, barrier, results, locks),
                                   daemon=True))
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
    loop.run(rm())
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


def run_bench_meta(cluster_dir: Path, *, files_per_client: int = 2000, rounds: int = 3,
                   locks: bool = True,
                   tick: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Medians over `rounds` of 8 clients, 1 client (4x the files) and the local directory.
    `locks`: the clients keep what they create and stat under the MDT's locks (issue 20):
    a stat of a file the client made, or stat'ed before, is answered from its cache."""
    if files_per_client < 1:
        raise ValueError(f"files per client must be at least 1, not {files_per_client}")

    def one_round(i: int) -> Round:
        sides: dict[str, Callable[[], dict[str, float]]] = {
            "8": lambda: _shoal_rates(cluster_dir, 8, files_per_client, f"-r{i}", locks),
            "1": lambda: _shoal_rates(cluster_dir, 1, files_per_client * 4, f"-r{i}", locks),
            "local": lambda: _local_rates(cluster_dir, files_per_client * 4),
        }
        got: dict[str, dict[str, float]] = {}
        for name in in_turn(list(sides), i):
            got[name] = sides[name]()
            tick()
        eight, one, local = got["8"], got["1"], got["local"]
        r: Round = {
            "creates_per_s": round(eight["create"]), "stats_per_s": round(eight["stat"]),
            "unlinks_per_s": round(eight["unlink"]),
            "creates_per_s_1": round(one["create"]), "stats_per_s_1": round(one["stat"]),
            "unlinks_per_s_1": round(one["unlink"]),
            "local_creates_per_s": round(local["create"]),
            "local_stats_per_s": round(local["stat"]),
            "local_unlinks_per_s": round(local["unlink"]),
        }
        r["create_ratio"] = ratio(r["creates_per_s"], r["local_creates_per_s"])
        r["stat_ratio"] = ratio(r["stats_per_s"], r["local_stats_per_s"])
        return r

    return {**run_rounds(rounds, one_round), "locks": locks}
