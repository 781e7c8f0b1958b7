"""`shoal bench io`: one client streams a file striped over 4 OSTs, against the local disk.

Both sides do the same thing in the same run: write SIZE bytes in large chunks and make them
durable (fsync / a forced commit on every OST), then read them back twice: once cold (the page
cache for the local file and for the OST object files dropped with posix_fadvise, so both
read the disk) and once warm (straight from the page cache). The ratios compare cold with
cold; the warm figures are reported beside them. The local file lives in the cluster
directory, on the same disk as the OST devices.

Each of `rounds` rounds runs every side, taking turns at going first; the figures are
medians over the rounds (workload/rounds.py).

With `quota`, each round also streams as a user with block and inode limits (far above what
it writes, so that every write is checked against a grant and the OSTs ask the quota master
for more as it goes), beside the same stream as root, whom no limit holds: `quota_write_ratio`
and `quota_read_ratio` compare the two (issue 23: within 5%), and `quota_write_cpu_ratio` the
CPU seconds the client and the nodes spent on the two writes (root's / the user's), which a
shared disk's swings do not move.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from shoal.client import quota
from shoal.client.client import Client
from shoal.net import loop
from shoal.node.spec import ClusterSpec
from shoal.target.ost_files import object_path
from shoal.workload.rounds import Round, ratio, run_rounds

CHUNK = 16 << 20
WINDOW = 4
QUOTA_UID = 60_001  # the user the quota side streams as
_write_cpu: dict[int, float] = {}  # uid -> CPU seconds of its side's last write phase


def _pattern(size: int) -> bytes:
    return os.urandom(size)


def drop_cache(path: Path) -> None:
    """Evict a file's pages so the next read comes from the disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _drop_object_cache(cluster_dir: Path, oid: int) -> None:
    spec = ClusterSpec.load(cluster_dir)
    for t in spec.osts:
        for device in set(t.devices.values()):
            drop_cache(object_path(Path(device) / "objects", oid))


def cpu_seconds(cluster_dir: Path) -> float:
    """CPU time so far of this process (the client) and of the local cluster's node
    processes: on a shared machine a steadier measure of what a path costs than wall time."""
    total = time.process_time()
    for pidfile in (cluster_dir / "run").glob("*.pid"):
        try:
            t = psutil.Process(int(pidfile.read_text())).cpu_times()
        except (ValueError, OSError, psutil.Error):
            continue  # a node of another host, or stopped
        total += t.user + t.system
    return total


async def _shoal(cluster_dir: Path, size: int, stripes: int,
                 tick: Callable[[int], None], uid: int = 0) -> tuple[float, float, float]:
    data = _pattern(CHUNK)
    path = f"/bench-io-{os.getpid()}-{uid}"
    async with Client.from_cluster_dir(cluster_dir, uid=uid, gid=uid) as c:
        f = await c.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, stripe_count=stripes,
                         stripe_size=1 << 20)
        sem = asyncio.Semaphore(WINDOW)

        async def put(off: int) -> None:
            async with sem:
                await f.write(data, off)
                tick(CHUNK)

        cpu0 = cpu_seconds(cluster_dir)
        t0 = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for off in range(0, size, CHUNK):
                await sem.acquire()
                sem.release()
                tg.create_task(put(off))
        await f.fsync()
        write_s = time.perf_counter() - t0
        _write_cpu[uid] = cpu_seconds(cluster_dir) - cpu0

        async def get(off: int) -> None:
            async with sem:
                got = await f.read(CHUNK, off)
                if len(got) != CHUNK or got[:64] != data[:64]:
                    raise AssertionError(f"read back wrong data at {off}")
                tick(CHUNK)

        async def read_all() -> float:
            t0 = time.perf_counter()
            async with asyncio.TaskGroup() as tg:
                for off in range(0, size, CHUNK):
                    await sem.acquire()
                    sem.release()
                    tg.create_task(get(off))
            return time.perf_counter() - t0

        assert f.layout is not None
        _drop_object_cache(cluster_dir, f.layout.oid)
        cold_s = await read_all()
        warm_s = await read_all()
        await f.close()
        await c.unlink(path)
    return write_s, cold_s, warm_s


def _local(cluster_dir: Path, size: int,
           tick: Callable[[int], None]) -> tuple[float, float, float]:
    data = _pattern(CHUNK)
    path = cluster_dir / f"bench-io-local-{os.getpid()}"
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for off in range(0, size, CHUNK):
            os.pwrite(fd, data, off)
            tick(CHUNK)
        os.fsync(fd)
    finally:
        os.close(fd)
    write_s = time.perf_counter() - t0

    def read_all() -> float:
        t0 = time.perf_counter()
        fd = os.open(path, os.O_RDONLY)
        try:
            for off in range(0, size, CHUNK):
                got = os.pread(fd, CHUNK, off)
                if got[:64] != data[:64]:
                    raise AssertionError("local read back wrong data")
                tick(CHUNK)
        finally:
            os.close(fd)
        return time.perf_counter() - t0

    drop_cache(path)
    cold_s = read_all()
    warm_s = read_all()
    path.unlink()
    return write_s, cold_s, warm_s


async def _limit(cluster_dir: Path, kib: int, inodes: int) -> None:
    async with Client.from_cluster_dir(cluster_dir) as c:
        await quota.set_quota(c, "u", QUOTA_UID, bhard=kib, ihard=inodes)


def run_bench_io(cluster_dir: Path, *, size: int = 1 << 30, stripes: int = 4, rounds: int = 3,
                 tick: Callable[[int], None] = lambda n: None,
                 with_quota: bool = False) -> dict[str, Any]:
    size = max(CHUNK, size // CHUNK * CHUNK)
    if with_quota:
        loop.run(_limit(cluster_dir, 4 * size // 1024, 1000))
        try:
            return _run(cluster_dir, size, stripes, rounds, tick, with_quota)
        finally:
            loop.run(_limit(cluster_dir, 0, 0))
    return _run(cluster_dir, size, stripes, rounds, tick, with_quota)


def _run(cluster_dir: Path, size: int, stripes: int, rounds: int,
         tick: Callable[[int], None], with_quota: bool) -> dict[str, Any]:
    mb = size / 1e6

    def one_round(i: int) -> Round:
        # the sides take turns at going first: the disk and the page cache favour no one
        sides = ["local", "shoal", "quota"] if with_quota else ["local", "shoal"]
        k = i % len(sides)
        times: dict[str, tuple[float, float, float]] = {}
        for side in sides[k:] + sides[:k]:
            os.sync()  # the last side's dirty pages must not slow this one's writes
            if side == "local":
                times[side] = _local(cluster_dir, size, tick)
            else:
                uid = QUOTA_UID if side == "quota" else 0
                times[side] = loop.run(_shoal(cluster_dir, size, stripes, tick, uid))
        (lw, lr, lrw), (sw, sr, srw) = times["local"], times["shoal"]
        r = {"write_MBps": mb / sw, "read_MBps": mb / sr,
             "local_write_MBps": mb / lw, "local_read_MBps": mb / lr,
             "read_warm_MBps": mb / srw, "local_read_warm_MBps": mb / lrw}
        r = {k: round(v, 1) for k, v in r.items()}
        r["write_ratio"] = ratio(r["write_MBps"], r["local_write_MBps"])
        r["read_ratio"] = ratio(r["read_MBps"], r["local_read_MBps"])
        if with_quota:
            qw, qr, _ = times["quota"]
            r["quota_write_MBps"], r["quota_read_MBps"] = round(mb / qw, 1), round(mb / qr, 1)
            r["quota_write_ratio"] = ratio(r["quota_write_MBps"], r["write_MBps"])
            # CPU of the client and the nodes per byte written: quotas' own cost, apart
            # from the disk's moods (the wall-time ratio swings by a fifth either way here)
            r["quota_write_cpu_ratio"] = ratio(_write_cpu[0], _write_cpu[QUOTA_UID])
            r["quota_read_ratio"] = ratio(r["quota_read_MBps"], r["read_MBps"])
        return r

    return {"size_bytes": size, "stripe_count": stripes, **run_rounds(rounds, one_round)}
