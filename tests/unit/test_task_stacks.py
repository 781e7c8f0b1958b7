"""What SIGUSR1 writes to a mount's or a node's log: every pending task and the await it is
stuck in, innermost last."""

from __future__ import annotations

import asyncio
from typing import Any

from shoal.net.loop import task_stacks


async def _inner(ev: asyncio.Event) -> None:
    await ev.wait()


async def _outer(ev: asyncio.Event) -> None:
    await _inner(ev)


async def test_a_stuck_task_shows_the_chain_it_waits_in() -> None:
    ev = asyncio.Event()
    task = asyncio.create_task(_outer(ev), name="stuck-one")
    await asyncio.sleep(0)
    text = task_stacks()
    lines = text.splitlines()
    start = lines.index("task stuck-one:")
    chain = lines[start + 1:start + 5]
    assert "_outer" in chain[0] and "_inner" in chain[1] and "Event.wait" in chain[2], chain
    ev.set()
    await task
    assert "stuck-one" not in task_stacks()


async def test_a_coroutine_that_no_task_owns_is_listed_with_its_chain() -> None:
    # as pyfuse3's compiled handlers await the file system's Python coroutines
    ev = asyncio.Event()
    coro = _outer(ev)
    fut = asyncio.ensure_future(_drive(coro))
    await asyncio.sleep(0)
    text = task_stacks()
    # coroutines of other tests' loops, suspended and not collected yet, are listed too
    sections = text.split("awaited by compiled code:")[1:]
    ours = [s for s in sections if "_outer" in s]
    assert len(ours) == 1 and "_inner" in ours[0].split("_outer", 1)[1], text
    ev.set()
    await fut


async def _drive(coro: Any) -> None:
    """Await `coro` through its iterator, as compiled code does: no cr_await leads to it."""
    it = coro.__await__()
    try:
        while True:
            await asyncio.wait({it.send(None)})
    except StopIteration:
        return
