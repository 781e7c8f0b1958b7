"""The event loop every Shoal process runs on: uvloop where it is installed.

uvloop's transports cost a fraction of the pure-Python selector loop per frame, which is the
difference between a metadata server that keeps up with eight clients and one that does not.

The first loop a process makes also sets glibc's malloc thresholds (tune_malloc). Bulk I/O
allocates and frees buffers of megabytes all the time (a receive buffer per bulk, pread's
result, a client's assembled read); with the default dynamic thresholds glibc keeps handing
the top of the heap back to the kernel (brk) and taking it again, so every page of every
buffer is faulted in and cleared anew: on `shoal bench io`'s reads that was more system time
than the copies themselves. With buffers of up to 32 MiB kept on the heap and up to
MALLOC_TRIM_MB of free heap kept for reuse, a steady stream of 4 MiB bulks reuses the same
memory. A process that sets its own malloc tunables (GLIBC_TUNABLES) is left alone.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency; this keeps odd platforms going
    uvloop = None  # type: ignore[assignment]

MMAP_THRESHOLD = 32 << 20  # glibc's largest: buffers below this come from the heap
MALLOC_TRIM_MB = 256  # free heap kept before any is returned to the kernel

_tuned = False
YOUNG_EVERY = 10  # times fewer collections of the young generation in a long-lived process


def fewer_collections() -> None:
    """For a process that keeps many small objects for long: a server (every client's
    locks, exports, the namespace's caches) or a client (the locks it caches under, each
    with a few dicts and sets). The collector scans them over and over: collect the young
    generation ten times less often, and leave what the process made until now out of it.
    Measured: the MDT's CPU per create under the lock cache 160-177 µs against 180-203;
    `bench meta`'s cached stats with 8 clients in two processes 141,000-210,000/s against
    65,000-90,000."""
    gc.collect()
    gc.freeze()
    first, second, third = gc.get_threshold()
    gc.set_threshold(first * YOUNG_EVERY, second, third)


def tune_malloc() -> bool:
    """Keep bulk-sized buffers on a heap that is not trimmed at every free (glibc only).
    Returns whether the thresholds were set."""
    global _tuned
    if _tuned:
        return True
    _tuned = True
    if not sys.platform.startswith("linux") or "glibc.malloc" in os.environ.get(
            "GLIBC_TUNABLES", ""):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        gnu_get_libc_version = libc.gnu_get_libc_version  # glibc, not musl
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return False
    del gnu_get_libc_version
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = mallopt(m_mmap_threshold, MMAP_THRESHOLD) == 1
    ok = mallopt(m_trim_threshold, MALLOC_TRIM_MB << 20) == 1 and ok
    return ok


def new_event_loop() -> asyncio.AbstractEventLoop:
    tune_malloc()
    return uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()


def run(coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(coro)


def task_stacks() -> str:
    """Every pending task of the running loop and what it waits on, innermost last: what an
    administrator asks a process that answers nothing (SIGUSR1 writes it to the log). A
    chain that goes through a coroutine of compiled code (pyfuse3's request handlers) is
    found again from the Python coroutines it awaits, listed apart."""
    out = []
    for task in sorted(asyncio.all_tasks(), key=lambda t: t.get_name()):
        out.append(f"task {task.get_name()}:")
        out += _chain(task.get_coro())
    # coroutines no Python coroutine awaits: a task's own, or one compiled code awaits
    coros = [o for o in gc.get_objects() if inspect.iscoroutine(o) and o.cr_frame is not None]
    awaited = {id(c.cr_await) for c in coros}
    owned = {id(t.get_coro()) for t in asyncio.all_tasks()}
    for coro in coros:
        if id(coro) not in awaited and id(coro) not in owned:
            out.append("awaited by compiled code:")
            out += _chain(coro)
    return "\n".join(out)


def _chain(coro: Any) -> list[str]:
    out = []
    for _ in range(64):  # an await chain is never that deep; a cycle must not hang us
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            out.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} "
                       f"{frame.f_code.co_qualname}")
        inner = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        if inner is None:
            out.append(f"  waits on {coro!r:.200}")
            break
        coro = inner
    return out
