"""`shoal bench failover`: how long N clients wait when the node serving an OST dies.

A fresh local cluster is started; N clients (spread over a few worker processes, each running
many clients on one event loop, as `shoal load` does) each keep a file that lives on the OST
about to fail and keep writing small records into it, now and then reading one back. Every
completed I/O's wall time is kept. Once every client has done I/O for a while, the node
serving the OST is killed (SIGKILL of its process group, as a power-off) and the benchmark
waits until every client has completed an I/O on the OST again, served by its new instance
(a reply carrying a new epoch): that is `total_s`, measured from the kill. The clients then
stop, read back what they wrote and count what was acknowledged but is gone (`lost`).

The per-phase times come from the failover's own events in the store (agent/takeover.py),
read by workload/failover_phases.py: the kill, then detect, fenced, the MMP claim (the `start`
event's `take_s`), start, the IR notice to clients (`ir_notify`, from the MGS) and recovered,
each phase ending where the next begins, so detect_s + fence_s + take_s + start_s + notify_s
+ recover_s = failover_s (kill to recovered); total_s adds the time the last client needed to
complete an I/O after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import multiprocessing as mp
import os
import queue
import random
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from shoal.client.client import Client
from shoal.client.fileio import File
from shoal.cluster.local import LocalCluster
from shoal.errors import Exists, NotFound, ShoalError, TimedOut
from shoal.net import loop
from shoal.node.spec import ClusterSpec
from shoal.workload.failover_phases import read_phases

BENCH_DIR = "/bench-failover"
RECORD = 4096  # bytes per write: small I/O, so the time measured is the failover, not bulk
SLOTS = 16  # records per client file, overwritten in turn
READ_EVERY = 4  # one read-back per this many writes
SETTLE_S = 2.0  # load before the kill: uncommitted writes pile up, the MGS knows every client
RESUME_TIMEOUT_S = 120.0  # give up waiting for clients to come back after this long
REPORT_PERIOD = 0.2  # seconds between a worker's progress messages


def record(client: int, slot: int, gen: int) -> bytes:
    """Generation `gen` of a record: a pure function of the triple, so any reader can tell
    the last acknowledged generation from an older one (lost) or anything else (corrupt)."""
    seed = int.from_bytes(hashlib.blake2b(f"{client}/{slot}/{gen}".encode(),
                                          digest_size=8).digest(), "big")
    return random.Random(seed).randbytes(RECORD)


# -- the clients (in worker processes) ---------------------------------------------------
@dataclass
class ClientReport:
    """What one client saw: the wall time of every completed I/O on the OST, and when it
    first completed one on the OST's new instance."""

    index: int
    times: list[float] = field(default_factory=list)
    resumed_at: float | None = None
    acked_writes: int = 0
    verified: int = 0
    lost: int = 0
    corrupt: int = 0
    errors: int = 0
    replays: int = 0  # requests this client replayed to the OST's new instance
    history: list[tuple[float, str]] = field(default_factory=list)  # the OST import's states
    samples: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class WorkerConfig:
    cluster_dir: str
    indexes: list[int]
    ost_index: int
    ir: bool


class BenchClient:
    def __init__(self, index: int, client: Client, f: File, ost_index: int) -> None:
        self.r = ClientReport(index)
        self.client = client
        self.f = f
        self.imp = client.osts[ost_index]
        self.acked: dict[int, int] = {}  # slot -> last acknowledged generation
        self.tried: dict[int, int] = {}  # slot -> newest generation written (may have landed)
        self.n = 0
        self.epoch0: int | None = None
        self.rng = random.Random(index)

    @property
    def path(self) -> str:
        return f"{BENCH_DIR}/c{self.r.index:05d}"

    def _done(self, out: queue.Queue[Any] | Any) -> None:
        t = time.time()
        self.r.times.append(t)
        # the import's epoch is that of the instance that answered: a new one after failover
        epoch = self.imp.epoch
        if self.epoch0 is None:
            self.epoch0 = epoch
            out.put(("ready", self.r.index, t))
        elif epoch != self.epoch0 and self.r.resumed_at is None:
            self.r.resumed_at = t
            out.put(("resumed", self.r.index, t))

    def _judge(self, slot: int, data: bytes) -> None:
        gen = self.acked.get(slot)
        if gen is None:
            return
        # a write that failed without an answer may still have landed: newer is not lost
        if any(data == record(self.r.index, slot, g)
               for g in range(gen, self.tried.get(slot, gen) + 1)):
            self.r.verified += 1
            return
        older = any(data == record(self.r.index, slot, g) for g in range(gen - 1, 0, -1))
        verdict = "lost" if older else "corrupt"
        setattr(self.r, verdict, getattr(self.r, verdict) + 1)
        self.r.samples.append(f"client {self.r.index} slot {slot}: {verdict} "
                              f"(acked generation {gen})")

    async def step(self, out: Any) -> None:
        slot = self.n % SLOTS
        self.n += 1
        gen = self.tried.get(slot, 0) + 1
        self.tried[slot] = gen
        await self.f.write(record(self.r.index, slot, gen), slot * RECORD)
        self.acked[slot] = gen
        self.r.acked_writes += 1
        self._done(out)
        if self.n % READ_EVERY == 0:
            slot = self.rng.choice(list(self.acked))
            got = await self.f.read(RECORD, slot * RECORD)
            self._done(out)
            self._judge(slot, bytes(got))

    async def verify(self) -> None:
        """Read the whole file back through a fresh open (its size from the MDT)."""
        await self.f.close()
        data = await self.client.read_file(self.path)
        for slot in sorted(self.acked):
            self._judge(slot, bytes(data[slot * RECORD:(slot + 1) * RECORD]))


async def _mount(cfg: WorkerConfig, index: int) -> BenchClient:
    c = Client.from_cluster_dir(cfg.cluster_dir, name=f"bench-fo-{os.getpid()}-{index}",
                                ir=cfg.ir)
    await c.mount()
    f = await c.open(f"{BENCH_DIR}/c{index:05d}", os.O_RDWR | os.O_CREAT | os.O_TRUNC,
                     stripe_count=1, stripe_offset=cfg.ost_index)
    return BenchClient(index, c, f, cfg.ost_index)


async def _worker_async(cfg: WorkerConfig, stop: Any, out: Any) -> list[ClientReport]:
    clients = [await _mount(cfg, i) for i in cfg.indexes]
    stopping = asyncio.Event()
    ops = 0

    async def watch_stop() -> None:
        # mp.Event.wait would block the loop: poll it, and report progress meanwhile
        nonlocal ops
        while not stop.is_set():
            await asyncio.sleep(REPORT_PERIOD)
            out.put(("ops", ops))
            ops = 0
        stopping.set()

    async def drive(bc: BenchClient) -> None:
        nonlocal ops
        while not stopping.is_set():
            try:
                await bc.step(out)
                ops += 1
            except ShoalError as exc:
                bc.r.errors += 1
                bc.r.samples.append(f"client {bc.r.index}: {exc.errno_name} {exc}")
                await asyncio.sleep(0.1)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(watch_stop())
        for bc in clients:
            tg.create_task(drive(bc))
    for bc in clients:
        try:
            await bc.verify()
        except ShoalError as exc:
            bc.r.errors += 1
            bc.r.samples.append(f"final verify, client {bc.r.index}: {exc}")
        bc.r.replays = bc.imp.sm.replays_sent
        bc.r.history = bc.imp.state_history
        await bc.client.close()
        bc.r.samples = bc.r.samples[:5]
    return [bc.r for bc in clients]


def _worker(cfg: WorkerConfig, stop: Any, out: Any) -> None:
    # a client's warnings (reconnects, evictions, state machine errors) go to stderr, timed
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s bench-worker "
                        f"{os.getpid()} %(levelname)s %(name)s: %(message)s")
    try:
        reports = loop.run(_worker_async(cfg, stop, out))
        out.put(("done", [asdict(r) for r in reports]))
    except BaseException as exc:  # any crash of a worker is reported to the parent
        out.put(("crash", "".join(traceback.format_exception(exc))))


# -- the benchmark (in the calling process) ----------------------------------------------
@dataclass
class BenchProgress:
    """What the caller's progress display shows."""

    stage: str
    clients: int
    ready: int = 0
    resumed: int = 0
    ops: int = 0
    since_kill_s: float | None = None


@dataclass
class FailoverResult:
    clients: int
    ir: bool
    commit_interval: float = 1.0
    detect_s: float | None = None
    fence_s: float | None = None
    take_s: float | None = None
    start_s: float | None = None
    notify_s: float | None = None
    recover_s: float | None = None
    total_s: float | None = None
    lost: int = 0
    corrupt: int = 0
    errors: int = 0
    resumed: int = 0
    mmp_s: float | None = None
    failover_s: float | None = None  # kill -> recovered (the sum of the phases)
    resume_p50_s: float | None = None  # kill -> the median client's first I/O
    max_stall_s: float = 0.0  # the longest any client waited between two completed I/Os
    # where the clients' part goes: kill -> the last client connected to the new instance,
    # and -> the last one done replaying (sent its final ping); replays: requests replayed
    reconnect_last_s: float | None = None
    replayed_last_s: float | None = None
    replays: int = 0
    ir_told: int | None = None  # clients the MGS pushed the new location to
    acked_writes: int = 0
    verified: int = 0
    victim: str = ""
    target: str = ""
    dir: str = ""
    samples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _prepare(cluster_dir: Path) -> None:
    async with Client.from_cluster_dir(cluster_dir, name="bench-fo-setup") as c:
        with contextlib.suppress(Exists):
            await c.mkdir(BENCH_DIR)


class FailoverSite(Protocol):
    """The file system the benchmark runs against, and how its fault is struck."""

    spec: ClusterSpec
    dir: Path  # what the client workers mount (a local cluster's directory, or "." on a
    # host where $SHOAL_STORE names the file system)

    def owner(self, target: str) -> str | None: ...

    def strike(self, node: str) -> float:
        """Make `node` fail; the wall-clock time of the fault."""
        ...


class LocalSite:
    """A local cluster: the fault is a kill of the node's process group."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.spec = cluster.spec
        self.dir = cluster.dir

    def owner(self, target: str) -> str | None:
        return next((t["owner"] or None for t in self.cluster.status()["targets"]
                     if t["name"] == target), None)

    def strike(self, node: str) -> float:
        t = time.time()
        self.cluster.kill_node(node)
        return t


class _Run:
    """One benchmark run against a running file system: workers, fault, wait, collect."""

    def __init__(self, cluster: FailoverSite, clients: int, ir: bool, procs: int,
                 on_progress: Callable[[BenchProgress], None]) -> None:
        self.cluster = cluster
        self.p = BenchProgress("starting clients", clients)
        self.on_progress = on_progress
        self.ready: set[int] = set()
        self.resumed: dict[int, float] = {}
        self.reports: list[ClientReport] = []
        self.crashes: list[str] = []
        self.kill_at = 0.0
        spec = cluster.spec
        if not spec.osts:
            raise NotFound(f"{cluster.dir}: the file system has no OST to fail")
        self.ost = spec.osts[0]
        ctx = mp.get_context("spawn")
        self.stop = ctx.Event()
        self.out: Any = ctx.Queue()
        procs = min(clients, procs or max(2, os.cpu_count() or 1))
        self.workers = [
            ctx.Process(target=_worker, daemon=True, args=(WorkerConfig(
                str(cluster.dir), list(range(p, clients, procs)), self.ost.index, ir),
                self.stop, self.out))
            for p in range(procs)]

    def _pump(self, timeout: float) -> None:
        """Take the workers' messages for up to `timeout` seconds; then show progress."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.out.get(timeout=max(0.0, min(0.1, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    break
                continue
            kind = msg[0]
            if kind == "ops":
                self.p.ops += msg[1]
            elif kind == "ready":
                self.ready.add(msg[1])
            elif kind == "resumed":
                self.resumed[msg[1]] = msg[2]
            elif kind == "done":
                self.reports += [ClientReport(**r) for r in msg[1]]
            else:
                self.crashes.append(msg[1][-800:])
        self.p.ready, self.p.resumed = len(self.ready), len(self.resumed)
        self.on_progress(self.p)

    def _wait(self, stage: str, until: Callable[[], bool], timeout: float) -> bool:
        self.p.stage = stage
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline or self.crashes or not any(
                    w.is_alive() for w in self.workers):
                return False
            self._pump(REPORT_PERIOD)
            if self.p.since_kill_s is not None:
                self.p.since_kill_s = time.time() - self.kill_at
        return True

    def _reporting(self, n: int) -> bool:
        """Whether reports may still come: some are missing and a worker is still alive."""
        if not self.out.empty():
            return True
        return len(self.reports) < n and any(w.is_alive() for w in self.workers)

    def run(self, result: FailoverResult) -> None:
        n = result.clients
        for w in self.workers:
            w.start()
        try:
            if not self._wait("mounting clients", lambda: len(self.ready) >= n,
                              60.0 + n * 0.5):
                raise TimedOut(f"only {len(self.ready)} of {n} clients started: "
                               f"{' '.join(self.crashes)[:800]}")
            self._wait("load before the kill", lambda: False, SETTLE_S)
            owner = self.cluster.owner(self.ost.name)
            if not owner:
                raise NotFound(f"{self.ost.name} is served by no node: nothing to fail")
            result.victim, result.target = owner, self.ost.name
            self.kill_at = self.cluster.strike(owner)
            self.p.since_kill_s = time.time() - self.kill_at
            self._wait(f"{owner} struck: waiting for every client's I/O on {self.ost.name}",
                       lambda: len(self.resumed) >= n, RESUME_TIMEOUT_S)
        finally:
            self.stop.set()
            self.p.stage = "clients verifying their data"
            deadline = time.monotonic() + 60.0 + n * 0.2
            while self._reporting(n) and time.monotonic() < deadline:
                self._pump(REPORT_PERIOD)
            for w in self.workers:
                w.join(timeout=5)
                if w.is_alive():
                    w.kill()


def run_bench_failover(cluster_dir: Path | None, *, clients: int, ir: bool = True,
                       keep: bool = False, procs: int = 0, commit_interval: float = 1.0,
                       on_progress: Callable[[BenchProgress], None] = lambda p: None,
                       ) -> FailoverResult:
    """Start a cluster (in cluster_dir, else a temporary directory), run the benchmark,
    stop the cluster unless `keep`; a temporary directory is removed unless `keep`.
    commit_interval is the targets' journal commit interval: it bounds the uncommitted tail
    that clients replay, which is most of what the recovery phase costs."""
    temp = cluster_dir is None
    d = Path(tempfile.mkdtemp(prefix="shoal-bench-failover-")) if temp else cluster_dir
    assert d is not None
    cluster = LocalCluster(d)
    result = FailoverResult(clients=clients, ir=ir, commit_interval=commit_interval,
                            dir=str(cluster.dir))
    on_progress(BenchProgress("starting the cluster", clients))
    try:
        cluster.up(commit_interval=commit_interval)
        run_on_site(LocalSite(cluster), result, procs, on_progress)
    finally:
        if not keep:
            cluster.down()
            if temp:
                shutil.rmtree(d, ignore_errors=True)
    return result


def run_on_site(site: FailoverSite, result: FailoverResult, procs: int,
                on_progress: Callable[[BenchProgress], None]) -> None:
    """The benchmark against a running file system: clients, the fault, the phases."""
    loop.run(_prepare(site.dir))
    bench = _Run(site, result.clients, result.ir, procs, on_progress)
    bench.run(result)
    _collect(result, bench)
    if bench.resumed:
        on_progress(BenchProgress("reading the failover's events", result.clients,
                                  len(bench.ready), len(bench.resumed), bench.p.ops))
        ph = read_phases(site.spec.store_url, bench.ost.name, bench.kill_at)
        for k, v in ph.items():
            setattr(result, k, v)


def _collect(result: FailoverResult, bench: _Run) -> None:
    for r in bench.reports:
        for k in ("lost", "corrupt", "errors", "acked_writes", "verified"):
            setattr(result, k, getattr(result, k) + getattr(r, k))
        result.samples += r.samples
    result.samples = ([f"worker crashed: {c}" for c in bench.crashes] + result.samples)[:10]
    result.errors += len(bench.crashes)
    missing = result.clients - len(bench.reports)
    if missing:
        result.errors += missing
        result.samples.append(f"{missing} clients reported nothing (worker died or hung)")
    gaps = [b - a for r in bench.reports for a, b in zip(r.times, r.times[1:], strict=False)]
    result.max_stall_s = round(max(gaps, default=0.0), 3)
    result.resumed = len(bench.resumed)
    result.replays = sum(r.replays for r in bench.reports)
    connected = [_first_after(r.history, bench.kill_at, ("REPLAY", "RECOVER", "FULL"))
                 for r in bench.reports]
    replayed = [_first_after(r.history, bench.kill_at, ("REPLAY_WAIT", "RECOVER", "FULL"))
                for r in bench.reports]
    result.reconnect_last_s = _last(connected, bench.kill_at)
    result.replayed_last_s = _last(replayed, bench.kill_at)
    if bench.resumed:
        waits = sorted(t - bench.kill_at for t in bench.resumed.values())
        result.resume_p50_s = round(waits[len(waits) // 2], 3)
        if len(waits) == result.clients:
            result.total_s = round(waits[-1], 3)


def _last(marks: list[float | None], kill: float) -> float | None:
    """Seconds from the kill to the last client's mark; None unless every client has one."""
    if not marks or any(m is None for m in marks):
        return None
    return round(max(m for m in marks if m is not None) - kill, 3)


def _first_after(history: list[tuple[float, str]], kill: float,
                 states: tuple[str, ...]) -> float | None:
    """When an import first reached one of `states` after it lost the killed server."""
    lost = next((i for i, (t, st) in enumerate(history)
                 if t >= kill and st not in ("FULL", "RECOVER")), None)
    if lost is None:
        return None
    return next((t for t, st in history[lost:] if st in states), None)
