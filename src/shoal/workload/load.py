"""`shoal load`: clients that write, overwrite, read back and verify data with known content.

Every write's content is a pure function of (client, file, generation), so any reader can tell
whether a file holds the last acknowledged generation (good), an older one (an acknowledged
write was lost) or something else (corrupt). Clients are spread over worker processes, each
running many clients on one event loop; each client has its own uuid, imports and connections,
exactly as separate client nodes would.

A run ends within its duration and a grace (`grace`, default max(30 s, the duration)) whatever
the cluster does: a client waits for a server up to 300 s per request, so a stopped cluster
once kept a 25 s load running for an hour. What is left at that bound is abandoned and
counted (`unfinished`), and the workers go with the run: they die with their parent
(PR_SET_PDEATHSIG), and the run kills any still alive when it returns or is interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import multiprocessing as mp
import os
import random
import signal
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shoal.client.client import Client
from shoal.errors import Exists, ShoalError
from shoal.net import loop

LOAD_DIR = "/load"
GRACE_MIN = 30.0  # seconds past the duration a run may take to finish and verify
CLOSE_TIMEOUT = 5.0  # per client, at the end
KILL_MARGIN = 15.0  # the parent's patience with a worker past its own deadline
PR_SET_PDEATHSIG = 1
FILES_PER_CLIENT = 4
MAX_FILE = 192 << 10
STRIPE_SIZE = 64 << 10


def content(client: int, file: int, gen: int) -> bytes:
    """The bytes of generation `gen` of a file: size and data fixed by the triple."""
    seed = int.from_bytes(hashlib.blake2b(f"{client}/{file}/{gen}".encode(),
                                          digest_size=8).digest(), "big")
    rng = random.Random(seed)
    return rng.randbytes(rng.randint(1, MAX_FILE))


def file_path(client: int, file: int) -> str:
    return f"{LOAD_DIR}/c{client:05d}/f{file}"


@dataclass
class LoadSummary:
    clients: int = 0
    duration_s: float = 0.0
    acked_writes: int = 0
    verified: int = 0
    lost: int = 0
    corrupt: int = 0
    errors: int = 0
    max_stall_s: float = 0.0
    unfinished: int = 0  # workers that gave up at the run's bound (the cluster stopped answering)
    bytes_written: int = 0
    bytes_read: int = 0
    error_samples: list[str] = field(default_factory=list)

    def merge(self, other: LoadSummary) -> None:
        for k in ("acked_writes", "verified", "lost", "corrupt", "errors", "unfinished",
                  "bytes_written", "bytes_read"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.max_stall_s = max(self.max_stall_s, other.max_stall_s)
        self.error_samples = (self.error_samples + other.error_samples)[:10]

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.corrupt == 0 and self.unfinished == 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["max_stall_s"] = round(self.max_stall_s, 3)
        d["duration_s"] = round(self.duration_s, 2)
        return d


class LoadClient:
    def __init__(self, index: int, client: Client, summary: LoadSummary) -> None:
        self.index = index
        self.client = client
        self.s = summary
        self.acked: dict[int, int] = {}  # file -> last acknowledged generation
        self.rng = random.Random(index)

    async def _timed(self, coro: Any) -> Any:
        t0 = time.monotonic()
        try:
            return await coro
        finally:
            self.s.max_stall_s = max(self.s.max_stall_s, time.monotonic() - t0)

    def _judge(self, file: int, data: bytes) -> str:
        gen = self.acked.get(file)
        if gen is None:
            return "ok"
        if data == content(self.index, file, gen):
            return "ok"
        for older in range(gen - 1, 0, -1):
            if data == content(self.index, file, older):
                return "lost"
        return "corrupt"

    def _count(self, verdict: str, file: int) -> None:
        if verdict == "ok":
            self.s.verified += 1
        else:
            setattr(self.s, verdict, getattr(self.s, verdict) + 1)
            self.s.error_samples.append(
                f"client {self.index} file {file}: {verdict} (acked gen {self.acked[file]})")

    async def step(self) -> None:
        c = self.client
        file = self.rng.randrange(FILES_PER_CLIENT)
        gen = self.acked.get(file, 0) + 1
        data = content(self.index, file, gen)
        path = file_path(self.index, file)
        overwrite = file in self.acked and self.rng.random() < 0.5
        flags = os.O_WRONLY | os.O_CREAT | (0 if overwrite else os.O_TRUNC)
        f = await self._timed(c.open(path, flags))
        await self._timed(f.write(data, 0))
        if overwrite and f.size > len(data):
            await self._timed(f.truncate(len(data)))
        await self._timed(f.close())
        self.acked[file] = gen
        self.s.acked_writes += 1
        self.s.bytes_written += len(data)
        got = await self._timed(c.read_file(path))
        self.s.bytes_read += len(got)
        self._count(self._judge(file, got), file)

    async def verify_all(self) -> None:
        for file in sorted(self.acked):
            got = await self._timed(self.client.read_file(file_path(self.index, file)))
            self._count(self._judge(file, got), file)


def grace_for(duration: float) -> float:
    return max(GRACE_MIN, duration)


async def _worker_async(cluster_dir: str, indexes: list[int], duration: float, grace: float,
                        progress: Any) -> LoadSummary:
    summary = LoadSummary(clients=len(indexes))
    clients: list[LoadClient] = []
    loop_time = asyncio.get_running_loop().time
    stop_at = time.monotonic() + duration
    try:
        async with asyncio.timeout_at(loop_time() + duration + grace):
            await _run_clients(cluster_dir, indexes, stop_at, summary, clients, progress)
    except TimeoutError:
        summary.unfinished += 1
        summary.error_samples.insert(0, f"gave up {duration + grace:.0f}s after the start "
                                        "(the cluster stopped answering): what was left is "
                                        "not verified")
    for lc in clients:
        with contextlib.suppress(ShoalError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await lc.client.close()
    summary.error_samples = summary.error_samples[:10]
    return summary


async def _run_clients(cluster_dir: str, indexes: list[int], stop_at: float,
                       summary: LoadSummary, clients: list[LoadClient], progress: Any) -> None:
    for i in indexes:
        c = Client.from_cluster_dir(cluster_dir, name=f"load-{os.getpid()}-{i}")
        await c.mount()
        clients.append(LoadClient(i, c, summary))
        try:
            await c.mkdir(f"{LOAD_DIR}/c{i:05d}")
        except Exists:
            pass
        # connected to every target, as a Lustre client is once mounted: each target has
        # its slot on disk (a connect is answered once it is), so a fault struck from now
        # on finds every client known to every target's recovery. No request to a target:
        # tests aim fail points at the ops the load never sends
        await c.connected()
        if progress is not None:
            progress.put(("ready", 1))

    async def drive(lc: LoadClient) -> None:
        while time.monotonic() < stop_at:
            try:
                await lc.step()
            except ShoalError as exc:
                summary.errors += 1
                summary.error_samples.append(f"client {lc.index}: {exc.errno_name} {exc}")
                await asyncio.sleep(0.1)
            if progress is not None:
                progress.put(("op", 1))

    async with asyncio.TaskGroup() as tg:
        for lc in clients:
            tg.create_task(drive(lc))
    for lc in clients:
        try:
            await lc.verify_all()
        except ShoalError as exc:
            summary.errors += 1
            summary.error_samples.append(f"final verify, client {lc.index}: {exc}")


def _die_with_parent() -> None:
    """A worker must not outlive the run (SIGKILL of `shoal load` included)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _worker(cluster_dir: str, indexes: list[int], duration: float, grace: float, results: Any,
            progress: Any) -> None:
    _die_with_parent()
    try:
        s = loop.run(_worker_async(cluster_dir, indexes, duration, grace, progress))
        results.put(("ok", asdict(s)))
    except BaseException as exc:  # report any crash of the worker to the parent
        results.put(("crash", "".join(traceback.format_exception(exc))))


async def prepare(cluster_dir: Path | str) -> None:
    async with Client.from_cluster_dir(cluster_dir) as c:
        try:
            await c.mkdir(LOAD_DIR)
        except Exists:
            pass
        await c.setstripe(LOAD_DIR, stripe_count=-1, stripe_size=STRIPE_SIZE)


def run_load(cluster_dir: Path | str, *, clients: int, duration: float, procs: int = 0,
             grace: float | None = None, on_progress: Any = None,
             on_ready: Any = None) -> LoadSummary:
    """Run the load; on_progress(elapsed_s, ops) is called about 5 times a second, and
    on_ready() once every client has mounted and connected to every target. Returns
    within duration + grace (+ KILL_MARGIN for a worker that does not report)."""
    grace = grace_for(duration) if grace is None else grace
    t0 = time.monotonic()
    total = LoadSummary(clients=clients)
    try:
        loop.run(asyncio.wait_for(prepare(cluster_dir), duration + grace))
    except (TimeoutError, ShoalError) as exc:
        total.unfinished += 1
        total.error_samples.append(f"could not prepare {LOAD_DIR}: {exc or 'timed out'}")
        total.duration_s = time.monotonic() - t0
        return total
    procs = procs or min(clients, max(1, os.cpu_count() or 1))
    ctx = mp.get_context("spawn")
    results, progress = ctx.Queue(), ctx.Queue()
    shards = [list(range(p, clients, procs)) for p in range(procs)]
    workers = [ctx.Process(target=_worker, args=(str(cluster_dir), s, duration, grace, results,
                                                 progress), daemon=True) for s in shards if s]
    try:
        for w in workers:
            w.start()
        _collect(workers, results, progress, total, t0 + duration + grace + KILL_MARGIN,
                 on_progress, on_ready)
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
            w.join(timeout=10)
    total.duration_s = time.monotonic() - t0
    return total


def _collect(workers: list[Any], results: Any, progress: Any, total: LoadSummary,
             give_up_at: float, on_progress: Any, on_ready: Any = None) -> None:
    t0 = time.monotonic()
    pending = len(workers)
    counts = {"op": 0, "ready": 0}
    while pending:
        while not progress.empty():
            kind, n = progress.get_nowait()
            counts[kind] += n
            if kind == "ready" and counts["ready"] == total.clients and on_ready is not None:
                on_ready()
        ops = counts["op"]
        try:
            kind, payload = results.get(timeout=0.2)
        except Exception:  # queue.Empty: nothing yet, keep reporting progress
            if on_progress is not None:
                on_progress(time.monotonic() - t0, ops)
            if not any(w.is_alive() for w in workers) and results.empty():
                total.errors += pending
                total.error_samples.append("a load worker died without a result")
                return
            if time.monotonic() > give_up_at:
                total.unfinished += pending
                total.error_samples.append(f"{pending} load workers did not report in time: "
                                           "killed")
                return
            continue
        pending -= 1
        if kind == "ok":
            total.merge(LoadSummary(**payload))
        else:
            total.errors += 1
            total.error_samples.append(f"worker crashed: {payload[-500:]}")
