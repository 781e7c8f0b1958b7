"""Early replies for a request a node is still serving: the timer around the plan.

protocol/adaptive.py's EarlyReplies decides when one is due and how much time it asks for;
this only arms the loop's timer for its next check and sends what it says. Only the waiting
part of a request needs it (a read from the disk, a commit it forces: NodeServer._finish);
a request held by a recovery window has early replies of its own (target/recovery.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from shoal.protocol.adaptive import ATParams, EarlyReplies

__all__ = ["keep_alive"]


def keep_alive(send: Callable[[float], None], arrived: float,
               params: ATParams) -> Callable[[], None]:
    """Send `send(extra)` whenever the request that arrived at `arrived` (the loop's clock,
    time.monotonic()) needs an early reply, until the returned function is called."""
    loop = asyncio.get_running_loop()
    # the plan runs on the loop's clock (uvloop's may be read at the iteration's start)
    plan = EarlyReplies(loop.time() - (time.monotonic() - arrived), params)
    handle: asyncio.TimerHandle | None = None

    def arm() -> None:
        nonlocal handle
        at = plan.next_check
        handle = None if at is None else loop.call_at(at, tick)

    def tick() -> None:
        extra = plan.due(loop.time())  # 0 if the timer ran early: armed again for then
        if extra > 0:
            send(extra)
        arm()

    def stop() -> None:
        if handle is not None:
            handle.cancel()

    arm()
    return stop
