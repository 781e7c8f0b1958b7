"""pyfuse3 on asyncio, with its wait for /dev/fuse mended (imported by mount/fs.py)."""

from __future__ import annotations

import asyncio

import pyfuse3
import pyfuse3.asyncio

pyfuse3.asyncio.enable()

# pyfuse3's asyncio shim finishes the future of the worker waiting on /dev/fuse from two
# sides without checking: the fd's reader (set_result) and terminate()'s notify_closing
# (set_exception). A SIGTERM while requests come in lets both fire before the waiter wakes,
# and asyncio logs an InvalidStateError traceback (or stop() itself raises). These
# replacements finish the future once and drop the reader as soon as the waiter wakes.
_fuse_waiters: dict[int, set[asyncio.Future[None]]] = {}


async def _wait_readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    waiters = _fuse_waiters.setdefault(fd, set())
    waiters.add(fut)

    def readable() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await fut
    finally:
        loop.remove_reader(fd)  # pyfuse3 lets one worker at a time wait on the fd
        waiters.discard(fut)
        if not waiters:
            _fuse_waiters.pop(fd, None)


def _notify_closing(fd: int) -> None:
    for fut in _fuse_waiters.get(fd, ()):
        if not fut.done():  # one the reader finished reads its request, then sees the exit
            fut.set_exception(pyfuse3.asyncio.ClosedResourceError())


# pyfuse3 looks both up on this module at every call (its `trio.lowlevel`)
pyfuse3.asyncio.wait_readable = _wait_readable  # type: ignore[assignment]
pyfuse3.asyncio.notify_closing = _notify_closing  # type: ignore[assignment]
