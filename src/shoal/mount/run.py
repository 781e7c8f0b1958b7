"""A mount's life: check FUSE is there, connect, mount, serve, and unmount cleanly.

The process that serves a mount must never need the mount itself, or an MDS failover
deadlocks it (DESIGN.md, invariant 3): it works from "/", drops import paths that lie under
the mountpoint, imports everything before the mount exists, and from then on an import hook
logs any module that is still loaded late, so a test can pin that none is.

SIGTERM, SIGINT and SIGHUP end the FUSE session; buffered writes are landed, every open
handle is closed on the MDT, and the file system is unmounted before the process exits.
"""

from __future__ import annotations

import asyncio
import importlib.abc
import importlib.machinery
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pyfuse3

from shoal.client.client import Client
from shoal.client.metrics import ClientCollector
from shoal.errors import Busy, NotFound, NotPermitted, ShoalError, TimedOut, Unsupported
from shoal.mount.fs import ShoalFS
from shoal.mount.mounts import mount_entry, pid_file, set_read_ahead
from shoal.mount.options import MountOptions
from shoal.net.loop import fewer_collections, task_stacks
from shoal.net.metrics_http import MetricsServer

log = logging.getLogger(__name__)

FUSE_DEVICE = Path("/dev/fuse")
LATE_IMPORT = "late import"


@dataclass(frozen=True, slots=True)
class FuseCheck:
    ok: bool
    reason: str = ""


def check_fuse(device: Path = FUSE_DEVICE) -> FuseCheck:
    """Whether this machine can mount a FUSE file system, and if not, precisely why."""
    if not device.exists():
        return FuseCheck(False, f"{device} does not exist: the kernel's fuse module is not "
                                "loaded (modprobe fuse), or this container was started "
                                "without the device (docker run --device /dev/fuse "
                                "--cap-add SYS_ADMIN)")
    if not os.access(device, os.R_OK | os.W_OK):
        return FuseCheck(False, f"{device} is not readable and writable by uid {os.getuid()}")
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        return FuseCheck(False, "fusermount3 is not installed (Debian package fuse3): a "
                                "non-root user needs it to mount")
    return FuseCheck(True)


def check_mountpoint(mountpoint: Path) -> None:
    on = mount_entry(mountpoint)
    if on is not None:
        raise Busy(f"{mountpoint}: {on[0]} ({on[1]}) is already mounted there")
    if not mountpoint.is_dir():
        raise NotFound(f"{mountpoint}: no such directory to mount on")


def confine_imports(mountpoint: Path) -> None:
    """Work from "/" and import nothing from under the mountpoint, ever."""
    os.chdir("/")
    mp = str(mountpoint.resolve())
    sys.path[:] = [p for p in sys.path
                   if p and os.path.isabs(p) and p != mp and not p.startswith(mp + os.sep)]


class LateImportGuard(importlib.abc.MetaPathFinder):
    """Logs every module imported after the mount is up: each is a file read in a request
    path, which an MDS failover could block forever when that file lives on a Shoal mount."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        log.warning("%s of module %s while the mount is up (invariant 3)", LATE_IMPORT, fullname)
        return None  # the normal finders still load it: this only reports


async def serve(make_client: Callable[[], Client], mountpoint: Path, opts: MountOptions,
                ready: Callable[[str], None]) -> None:
    """Mount, call ready(fs_name) once requests are being served, and serve until told to
    stop (a signal) or unmounted (`shoal umount`, fusermount3 -u)."""
    fuse = check_fuse()
    if not fuse.ok:
        raise Unsupported(f"FUSE is not available: {fuse.reason}")
    check_mountpoint(mountpoint)
    client = make_client()
    metrics: MetricsServer | None = None
    client.locks = opts.locks  # before mount(): the MDT's import is made with its cache
    try:
        try:
            await asyncio.wait_for(client.mount(), opts.mount_timeout)
        except TimeoutError:
            raise TimedOut(f"no configuration from the MGS in {opts.mount_timeout:g} s: is "
                           "the file system up?") from None
        fs = ShoalFS(client, opts)
        try:
            pyfuse3.init(fs, str(mountpoint), opts.fuse_options(client.fs))
        except RuntimeError as exc:
            raise NotPermitted(f"{mountpoint}: the FUSE mount failed ({exc}); see the "
                               "libfuse message above") from None
        if opts.metrics is not None:
            metrics = MetricsServer(ClientCollector(client, fs.requests,
                                                     fs.request_seconds, fs.early.stats,
                                                     lambda: fs.kernel.late))
            await metrics.start(*opts.metrics)
        await _serve_mounted(fs, mountpoint, ready, client.fs)
    finally:
        if metrics is not None:
            await metrics.close()
        await client.close()


async def _serve_mounted(fs: ShoalFS, mountpoint: Path, ready: Callable[[str], None],
                         fs_name: str) -> None:
    loop = asyncio.get_running_loop()
    stopping = False

    def stop(signame: str) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            log.info("%s: unmounting %s", signame, mountpoint)
            pyfuse3.terminate()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop, sig.name)
    loop.add_signal_handler(signal.SIGUSR1, lambda: log.warning("SIGUSR1: tasks\n%s",
                                                                 task_stacks()))
    pidf = pid_file(mountpoint)
    guard = LateImportGuard()
    unmounted = False
    try:
        pidf.parent.mkdir(parents=True, exist_ok=True)
        pidf.write_text(f"{os.getpid()}\n")
        main = asyncio.create_task(pyfuse3.main(min_tasks=1, max_tasks=fs.opts.max_tasks))
        try:
            initialized = asyncio.create_task(fs.initialized.wait())
            await asyncio.wait({main, initialized}, return_when=asyncio.FIRST_COMPLETED)
            if not main.done():
                kb = fs.opts.read_ahead_kb
                if kb and not set_read_ahead(mountpoint, kb):
                    log.info("%s: could not set the kernel's read-ahead (not root?): large "
                             "reads come in 128 KiB requests", mountpoint)
                sys.meta_path.insert(0, guard)
                # it keeps its locks and what they cover for long: netloop.fewer_collections
                fewer_collections()
                ready(fs_name)
            initialized.cancel()
            await main
        finally:
            await fs.close_all()
            fs.kernel.close()
            pyfuse3.close(unmount=True)
            unmounted = True
    finally:
        if guard in sys.meta_path:
            sys.meta_path.remove(guard)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            loop.remove_signal_handler(sig)
        if not unmounted:
            pyfuse3.close(unmount=True)
        pidf.unlink(missing_ok=True)


def shoal_error_text(exc: BaseException) -> str:
    if isinstance(exc, ShoalError):
        return f"{exc.errno_name}: {exc}"
    return str(exc)
