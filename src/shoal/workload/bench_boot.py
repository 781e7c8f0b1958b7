"""`shoal bench boot`: a boot storm of diskless nodes whose root lives on the file system.

Every client is a node: a library Client of its own, with its own cache (the MDT lock cache
with `locks`, as a node's kernel keeps its dcache and inode attributes). Every one replays
the same program start (workload/boot_trace.py: a Python interpreter importing some 60
standard modules, some 1,100 file accesses), all at once, twice:

    cold   each node mounts, then replays the start with nothing cached
    warm   each node replays it again, with what it kept

and, before them, one node alone (cold, then warm): the baseline a storm's times are read
against. A replay goes as a kernel client's would: a path is walked a component at a time
(lookup, answered from the node's cache when it holds the lock), a symlink met on the way is
read and followed, a listing is one readdir of the inode, an open of a file is walked, then
opened, read (the bytes the trace read, from the OSTs) and closed on the MDT. Every op must
end as the trace says it will on this machine (an ENOENT probe must find nothing): any other
ending is a client error.

Measured per run: the wall time from the start signal until the last node is done, the MDT
requests each node sent (Import.requests_sent: its median and max), the CPU seconds of the
processes of the MDT's failover pair (psutil), and the client errors. With `failover`, the
node serving the MDT (and the MGS, in the default cluster) is killed when half the cold
run's ops are done; its backup takes over and no node may fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from shoal.client.client import Client
from shoal.client.namespace import Attr
from shoal.cluster.local import LocalCluster
from shoal.errors import InvalidArgument, IOFailure, NotADirectory, NotFound, ShoalError
from shoal.net import loop
from shoal.workload import boot_trace
from shoal.workload.boot_trace import MAX_LINKS, Plan, Step, Trace, make_plan, norm

Progress = Callable[[str, int, int], None]  # (stage, ops done, ops in all)
EXPECTED_FAILURES = (NotFound, NotADirectory, InvalidArgument)  # readlink of a non-link
SETUP_IN_FLIGHT = 16
RUN_TIMEOUT = 3600.0
SAMPLES = 5  # error messages kept per run


@dataclass
class ClientRun:
    requests: int = 0
    errors: int = 0
    ops: int = 0
    seconds: float = 0.0
    samples: list[str] = field(default_factory=list)


@dataclass
class RunFigures:
    clients: int
    wall_s: float
    mdt_requests_median: float
    mdt_requests_max: int
    mds_cpu_s: float
    clients_cpu_s: float  # of the worker processes the nodes run in, on the same cores
    errors: int
    ops: int  # ops replayed as the trace says, over every node
    client_s_median: float
    client_s_max: float
    samples: list[str]


# -- building the root on Shoal and taking it away --------------------------------------
async def build(c: Client, plan: Plan) -> None:
    await c.mkdir(plan.base)
    for d in plan.dirs:
        await c.mkdir(plan.full(d))
    sem = asyncio.Semaphore(SETUP_IN_FLIGHT)

    async def put(rel: str, local: str | None) -> None:
        async with sem:
            if local is None:
                await c.create(plan.full(rel), stripe_count=1)
            else:
                data = await asyncio.to_thread(Path(local).read_bytes)
                await c.write_file(plan.full(rel), data, stripe_count=1)

    await asyncio.gather(*(put(r, p) for r, p in plan.files.items()),
                         *(put(r, None) for r in plan.empty))
    for rel, target in plan.links.items():
        await c.symlink(plan.base + target if target.startswith("/") else target,
                        plan.full(rel))


async def remove(c: Client, path: str) -> None:
    """rm -rf of a directory."""
    for name, _ino, kind in await c.readdir(path):
        if kind == "d":
            await remove(c, f"{path}/{name}")
        else:
            await c.unlink(f"{path}/{name}")
    await c.rmdir(path)


# -- one node's replay -------------------------------------------------------------------
class Node:
    """One diskless node: a client of its own, replaying the trace as its kernel would."""

    def __init__(self, client: Client, plan: Plan, done: Callable[[], None]) -> None:
        self.c = client
        self.plan = plan
        self.done = done
        self.root: Attr | None = None
        self.mounted = False

    async def _walk(self, rel: str, follow: bool, depth: int = 0) -> Attr:
        assert self.root is not None
        attr = self.root
        parts = [p for p in rel.split("/") if p]
        for i, name in enumerate(parts):
            attr = await self.c.lookup(attr.ino, name)
            last = i == len(parts) - 1
            if attr.type == "l" and (follow or not last):
                if depth >= MAX_LINKS:
                    raise NotFound(f"{rel}: too many symbolic links")
                target = await self.c.readlink(self.plan.full("/".join(parts[: i + 1])))
                if target.startswith(self.plan.base + "/"):
                    target = target[len(self.plan.base):]
                prefix = "" if target.startswith("/") else "/".join(parts[:i])
                rest = "/".join(p for p in (prefix, target.lstrip("/"), *parts[i + 1:]) if p)
                return await self._walk(norm(rest), follow, depth + 1)
        return attr

    async def _step(self, s: Step) -> None:
        if s.kind in ("stat", "lstat"):
            await self._walk(s.path, s.kind == "stat")
        elif s.kind == "listdir":
            await self.c.entries((await self._walk(s.path, True)).ino)
        elif s.kind == "readlink":
            await self._walk(s.path, False)
            await self.c.readlink(self.plan.full(s.path))
        else:
            attr = await self._walk(s.path, True)
            if attr.type != "f":
                raise NotFound(f"{s.path}: not a file")  # the trace opens files only
            f = await self.c.open(self.plan.full(s.path))
            try:
                if s.nbytes:
                    await f.read(s.nbytes, 0)
            finally:
                await f.close()

    async def boot(self) -> ClientRun:
        """Mount (the first time) and replay the trace once."""
        run = ClientRun()
        t0 = time.perf_counter()
        try:
            if not self.mounted:
                await self.c.mount()
                self.root = await self.c.stat(self.plan.base)
                self.mounted = True
        except (ShoalError, OSError) as exc:
            run.errors += 1
            run.samples.append(f"{self.c.uuid}: mount: {_why(exc)}")
            run.seconds = time.perf_counter() - t0
            return run
        before = self.c.mdt.requests_sent
        for s in self.plan.steps:
            ended_ok: bool | None  # None: neither, an error no op of the trace may end in
            try:
                await self._step(s)
                ended_ok, why = True, ""
            except EXPECTED_FAILURES as exc:
                ended_ok, why = False, _why(exc)
            except (ShoalError, OSError) as exc:
                ended_ok, why = None, _why(exc)
            self.done()
            if ended_ok == s.ok:
                run.ops += 1
                continue
            run.errors += 1
            if len(run.samples) < SAMPLES:
                run.samples.append(f"{self.c.uuid}: {s.kind} {s.path}: "
                                   f"{why or 'succeeded'}, where the trace says it "
                                   f"{'succeeds' if s.ok else 'fails (ENOENT)'}")
        run.requests = self.c.mdt.requests_sent - before
        run.seconds = time.perf_counter() - t0
        return run


def _why(exc: BaseException) -> str:
    name = exc.errno_name if isinstance(exc, ShoalError) else type(exc).__name__
    return f"{name} {exc}"


def _worker(cluster_dir: str, names: list[str], plan: Plan, locks: bool, barrier: Any,
            results: Any, progress: Any, slot: int) -> None:
    async def go() -> dict[str, list[dict[str, Any]]]:
        count = [0]

        def done() -> None:
            count[0] += 1
            progress[slot] = count[0]

        nodes = [Node(Client.from_cluster_dir(cluster_dir, name=n, locks=locks), plan, done)
                 for n in names]
        out: dict[str, list[dict[str, Any]]] = {"cold": [], "warm": []}
        for run in ("cold", "warm"):
            await asyncio.to_thread(barrier.wait, RUN_TIMEOUT)
            got = await asyncio.gather(*(n.boot() for n in nodes))
            out[run] = [asdict(r) for r in got]
            await asyncio.to_thread(barrier.wait, RUN_TIMEOUT)
        for n in nodes:
            with contextlib.suppress(ShoalError, OSError):
                await n.c.close()
        return out

    loop.fewer_collections()  # as a client node's daemon does (mount/run.py)
    results.put((slot, loop.run(go())))


# -- the storm, from the outside ---------------------------------------------------------
class _Cpu:
    """CPU seconds of the MDT pair's node processes; a killed node's last sample stays."""

    def __init__(self, cluster: LocalCluster, nodes: list[str]) -> None:
        self.cluster, self.nodes = cluster, nodes
        self.last: dict[tuple[str, int], float] = {}

    def sample(self) -> float:
        for n in self.nodes:
            pid = self.cluster.pid(n)
            if pid is None:
                continue
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(pid).cpu_times()
                self.last[(n, pid)] = t.user + t.system + t.children_user + t.children_system
        return sum(self.last.values())


def _cpu_of(procs: list[Any]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error, ValueError):
            t = psutil.Process(p.pid).cpu_times()
            total += t.user + t.system
    return total


def _mds_owner(cluster: LocalCluster, target: str) -> str | None:
    for t in cluster.status()["targets"]:
        if t["name"] == target:
            return t["owner"]
    return None


def _figures(runs: list[dict[str, Any]], wall: float, cpu: float, ccpu: float) -> RunFigures:
    reqs = [r["requests"] for r in runs]
    secs = [r["seconds"] for r in runs]
    samples = [s for r in runs for s in r["samples"]][:SAMPLES]
    return RunFigures(len(runs), round(wall, 3), float(statistics.median(reqs)), max(reqs),
                      round(cpu, 3), round(ccpu, 3), sum(r["errors"] for r in runs),
                      sum(r["ops"] for r in runs),
                      round(statistics.median(secs), 3), round(max(secs), 3), samples)


def _storm(cluster: LocalCluster, plan: Plan, clients: int, locks: bool, victim: str | None,
           tag: str, progress: Progress) -> dict[str, Any]:
    """Both runs of `clients` nodes; `victim`, if named, is killed halfway through the
    cold run."""
    procs = min(clients, max(1, os.cpu_count() or 1))
    spec = cluster.spec
    mdt = next(t for t in spec.targets if t.kind == "MDT")
    cpu = _Cpu(cluster, list(mdt.nodes))
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(procs + 1), ctx.Queue()
    counts = ctx.RawArray("q", procs)
    workers, first = [], 0
    for p in range(procs):
        n = clients // procs + (1 if p < clients % procs else 0)
        names = [f"boot-{tag}-{os.getpid()}-{i}" for i in range(first, first + n)]
        workers.append(ctx.Process(target=_worker, args=(str(cluster.dir), names, plan, locks,
                                                         barrier, results, counts, p),
                                   daemon=True))
        first += n
    for w in workers:
        w.start()
    total = clients * len(plan.steps)
    out: dict[str, Any] = {}
    killed: dict[str, Any] = {}
    try:
        for run in ("cold", "warm"):
            _wait(barrier, workers, lambda: None)
            base = sum(counts)
            cpu0, ccpu0, t0 = cpu.sample(), _cpu_of(workers), time.perf_counter()

            def poll(run: str = run, base: int = base, t0: float = t0) -> None:
                done = sum(counts) - base
                cpu.sample()
                progress(f"{tag} {run}", done, total)
                if victim and run == "cold" and not killed and done * 2 >= total:
                    cpu.sample()
                    killed.update(node=victim, at_ops=done,
                                  at_s=round(time.perf_counter() - t0, 3))
                    cluster.kill_node(victim)

            _wait(barrier, workers, poll)
            wall = time.perf_counter() - t0
            out[run] = (wall, cpu.sample() - cpu0, _cpu_of(workers) - ccpu0)
        got = [results.get(timeout=120) for _ in workers]
    finally:
        for w in workers:
            w.join(timeout=30)
            if w.is_alive():
                w.kill()
    per: dict[str, list[dict[str, Any]]] = {"cold": [], "warm": []}
    for _slot, res in sorted(got, key=lambda g: g[0]):
        for run in per:
            per[run].extend(res[run])
    figs = {run: asdict(_figures(per[run], *out[run])) for run in per}
    if killed:
        figs["killed"] = killed
    return figs


def _wait(barrier: Any, workers: list[Any], poll: Callable[[], None]) -> None:
    """barrier.wait, polling meanwhile; a worker that died breaks the barrier at once."""
    err: list[BaseException] = []

    def wait() -> None:
        try:
            barrier.wait(RUN_TIMEOUT)
        except BaseException as exc:  # noqa: BLE001 - raised below, in the caller's thread
            err.append(exc)

    t = threading.Thread(target=wait, daemon=True)
    t.start()
    while t.is_alive():
        poll()
        dead = [w for w in workers if w.exitcode not in (None, 0)]
        if dead:
            barrier.abort()
            t.join()
            raise IOFailure(f"a bench worker died (exit {dead[0].exitcode})")
        t.join(0.1)
    if err:
        raise IOFailure(f"bench workers did not meet: {err[0]!r}")


def run_bench_boot(cluster_dir: Path, *, clients: int = 200, locks: bool = True,
                   failover: bool = False, trace: Trace | None = None,
                   progress: Progress = lambda s, d, t: None) -> dict[str, Any]:
    if clients < 1:
        raise InvalidArgument(f"clients must be at least 1, not {clients}")
    cluster = LocalCluster(cluster_dir)
    spec = cluster.spec  # ConfigError: no cluster in that directory
    mdt = next(t for t in spec.targets if t.kind == "MDT")
    if all(cluster.pid(n) is None for n in mdt.nodes):
        raise IOFailure(f"{cluster.dir}: no node of {mdt.name} is running (`shoal up` first)")
    if failover and len(mdt.nodes) < 2:
        raise InvalidArgument(f"--failover: {mdt.name} has no backup node")
    trace = trace or boot_trace.load()
    plan = make_plan(trace, f"/bench-boot-{os.getpid()}")
    progress("building the root", 0, 1)

    async def setup() -> None:
        async with Client.from_cluster_dir(cluster_dir) as c:
            await build(c, plan)

    async def teardown() -> None:
        async with Client.from_cluster_dir(cluster_dir) as c:
            with contextlib.suppress(NotFound):  # a setup that failed early
                await remove(c, plan.base)

    try:
        loop.run(setup())
        alone = _storm(cluster, plan, 1, locks, None, "alone", progress)
        mds_before = _mds_owner(cluster, mdt.name)
        victim = (mds_before or mdt.nodes[0]) if failover else None
        storm = _storm(cluster, plan, clients, locks, victim, "storm", progress)
        mds_after = _mds_owner(cluster, mdt.name)
    finally:
        progress("removing the root", 0, 1)
        loop.run(teardown())
    s = boot_trace.summary(trace)
    res: dict[str, Any] = {
        "clients": clients, "locks": locks, "failover": failover,
        "trace": {"ops": len(plan.steps), "fail_ops": sum(1 for st in plan.steps if not st.ok),
                  "stats": s["stat"] + s["lstat"], "opens": s["open_read"],
                  "listdirs": s["listdir"], "readlinks": s["readlink"],
                  "files": len(plan.files), "missing_here": plan.missing,
                  "python": trace.about.get("python", "")},
        "cold": storm["cold"], "warm": storm["warm"],
        "alone_cold": alone["cold"], "alone_warm": alone["warm"],
        "warm_over_alone": round(storm["warm"]["wall_s"] / alone["warm"]["wall_s"], 3)
        if alone["warm"]["wall_s"] else 0.0,
        "mds_before": mds_before, "mds_after": mds_after,
    }
    if "killed" in storm:
        res["killed"] = storm["killed"]
    return res
