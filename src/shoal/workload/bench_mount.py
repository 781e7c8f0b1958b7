"""`shoal bench mount`: a stream through the FUSE mount, against the library and a local file.

All three do the same in one run: write SIZE bytes in 16 MiB write()s and make them durable
(fsync; for the library a forced commit on every OST and the MDT), then read them back in
16 MiB reads. Reads come right after the writes, so every side reads warm caches: the page
cache under the local file, under the OST objects for the other two (the mount's own kernel
page cache is dropped when the file is opened again, since pages of a mount's own writes are
never kept across an open, mount/handles.py: its reads do go through FUSE). The mount is
served by a `shoal mount --foreground` process of its own, as a user's would be.

Each of `rounds` rounds runs the three sides, in an order that turns with the round; the
figures are medians over the rounds (workload/rounds.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoal.client.client import Client
from shoal.errors import IOFailure, TimedOut
from shoal.mount.mounts import mount_entry
from shoal.net import loop
from shoal.workload.rounds import Round, in_turn, ratio, run_rounds

CHUNK = 16 << 20
WINDOW = 4
MOUNT_TIMEOUT = 30.0
_KEYS = [f"{side}_{way}_MBps" for side in ("mount", "lib", "local") for way in ("write", "read")]

Tick = Callable[[int], None]


def _check(got: bytes | bytearray, want: bytes, where: str) -> None:
    if len(got) != len(want) or got[:4096] != want[:4096] or got[-4096:] != want[-4096:]:
        raise IOFailure(f"{where}: read back wrong data")


def _stream_file(path: Path, data: bytes, size: int, tick: Tick) -> tuple[float, float]:
    """Write then read path with plain system calls; (write_s, read_s)."""
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(0, size, CHUNK):
            mv = memoryview(data)
            while mv:
                mv = mv[os.write(fd, mv):]
            tick(CHUNK)
        os.fsync(fd)
    finally:
        os.close(fd)
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        for off in range(0, size, CHUNK):
            got = os.pread(fd, CHUNK, off)
            _check(got, data, str(path))
            tick(CHUNK)
    finally:
        os.close(fd)
    read_s = time.perf_counter() - t0
    path.unlink()
    return write_s, read_s


async def _stream_lib(cluster_dir: Path, data: bytes, size: int,
                      tick: Tick) -> tuple[float, float]:
    path = f"/bench-mount-lib-{os.getpid()}"
    async with Client.from_cluster_dir(cluster_dir) as c:
        f = await c.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        sem = asyncio.Semaphore(WINDOW)

        async def put(off: int) -> None:
            async with sem:
                await f.write(data, off)
                tick(CHUNK)

        async def get(off: int) -> None:
            async with sem:
                _check(await f.read(CHUNK, off), data, path)
                tick(CHUNK)

        async def each(job: Callable[[int], Any]) -> float:
            t0 = time.perf_counter()
            async with asyncio.TaskGroup() as tg:
                for off in range(0, size, CHUNK):
                    await sem.acquire()  # no more than WINDOW tasks waiting either
                    sem.release()
                    tg.create_task(job(off))
            return time.perf_counter() - t0

        write_s = await each(put)
        t0 = time.perf_counter()
        await f.fsync()
        write_s += time.perf_counter() - t0
        read_s = await each(get)
        await f.close()
        await c.unlink(path)
    return write_s, read_s


def start_mount(cluster_dir: Path, mountpoint: Path, options: list[str],
                log: Path) -> subprocess.Popen[bytes]:
    """A `shoal mount --foreground` process; returns once the mount is in the mount table."""
    cmd = [sys.executable, "-m", "shoal", "mount", "--foreground", "--dir", str(cluster_dir)]
    for o in options:
        cmd += ["-o", o]
    with open(log, "ab") as out:
        proc = subprocess.Popen([*cmd, str(mountpoint)], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=out)
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while mount_entry(mountpoint) is None:
        if proc.poll() is not None:
            raise IOFailure(f"shoal mount exited with {proc.returncode}: "
                            f"{log.read_text(errors='replace')[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise TimedOut(f"{mountpoint}: not mounted after {MOUNT_TIMEOUT:g} s")
        time.sleep(0.05)
    return proc


def stop_mount(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM: the process lands its writes, closes its handles and unmounts."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise TimedOut(f"shoal mount (pid {proc.pid}) did not stop in {timeout:g} s") from None


def run_bench_mount(cluster_dir: Path, *, size: int = 1 << 30, options: list[str] | None = None,
                    rounds: int = 3, tick: Tick = lambda n: None) -> dict[str, Any]:
    size = max(CHUNK, size // CHUNK * CHUNK)
    data = os.urandom(CHUNK)
    cluster_dir = Path(os.path.abspath(cluster_dir))
    mb = size / 1e6
    with tempfile.TemporaryDirectory(prefix="bench-mount-", dir=cluster_dir) as tmp:
        mountpoint = Path(tmp) / "mnt"
        mountpoint.mkdir()
        proc = start_mount(cluster_dir, mountpoint, options or [], Path(tmp) / "mount.log")
        sides: dict[str, Callable[[], tuple[float, float]]] = {
            "local": lambda: _stream_file(cluster_dir / f"bench-mount-local-{os.getpid()}",
                                          data, size, tick),
            "lib": lambda: loop.run(_stream_lib(cluster_dir, data, size, tick)),
            "mount": lambda: _stream_file(mountpoint / f"bench-mount-{os.getpid()}", data,
                                          size, tick),
        }

        def one_round(i: int) -> Round:
            r: Round = {}
            for name in in_turn(list(sides), i):
                w, rd = sides[name]()
                r[f"{name}_write_MBps"] = round(mb / w, 1)
                r[f"{name}_read_MBps"] = round(mb / rd, 1)
            r = {k: r[k] for k in _KEYS}  # the same order whichever side went first
            r["mount_write_ratio"] = ratio(r["mount_write_MBps"], r["lib_write_MBps"])
            r["mount_read_ratio"] = ratio(r["mount_read_MBps"], r["lib_read_MBps"])
            return r

        try:
            res = run_rounds(rounds, one_round)
        finally:
            stop_mount(proc)
    return {"size_bytes": size, **res}
