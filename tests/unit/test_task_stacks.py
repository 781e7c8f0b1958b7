"""What SIGUSR1 writes to a mount's or a node's log: every pending task and the await it is
stuck in, innermost last."""

from __future__ import annotations

import asyncio

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
