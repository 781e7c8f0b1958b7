"""An upgrade from PR to PW (client/data_locks.py `_enqueue`, node/data_locks.py): what the
PR lock covered (the kernel's pages) is kept only where nobody else's write can come between
the two locks, and otherwise goes before anybody else's write is served. Against the OST's
real lock manager and enqueue rules, on a real event loop (from the review of 3c00b78,
whose first version let a waiting writer through before the pages went)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shoal.client.data_locks import DataLocks
from shoal.errors import IOFailure
from shoal.ldlm.server import LockManager
from shoal.node.data_locks import resource, serve
from shoal.protocol import messages as m
from shoal.protocol.ldlm import CANCEL_OP, ENQUEUE_OP, OBJECT_EOF, Extent, Mode

OST = "scratch-OST0000"
OID = 1


class Ost:
    """The OST's side, served in-process: its lock manager, and client A's calls to it.
    Callbacks go to A's DataLocks as the node's notices would (`a`), others are noted."""

    def __init__(self) -> None:
        self.lm = LockManager(OST, send_callback=self._callback, evict=lambda c, r: None,
                              callback_timeout=5)
        self.order: list[str] = []
        self.a: DataLocks | None = None
        self.xid = 0

    def _callback(self, lock: Any, by: Any) -> None:
        if lock.client == "A" and self.a is not None:
            asyncio.get_running_loop().call_soon(self.a.called_back, lock.handle)

    async def call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        self.xid += 1
        if op == CANCEL_OP:
            for h in args["handles"]:
                self.lm.cancel(h, "A")
            return {}
        reply = serve(self.lm, "A", m.Request(self.xid, op, OST, args), lambda: None, 5)
        reply = reply if isinstance(reply, m.Reply) else await reply
        assert reply.status is None, reply
        return reply.data


def holder(ost: Ost) -> DataLocks:
    async def release(mode: Mode, data: Any) -> None:
        ost.order.append(f"A's {mode.name} pages dropped")

    dl = DataLocks(ost.call, release)
    ost.a = dl
    return dl


async def test_an_upgrade_nobody_waits_on_keeps_the_pages() -> None:
    ost = Ost()
    a = holder(ost)
    await a.hold(OID, Mode.PR, "ino")
    await a.hold(OID, Mode.PW, "ino")
    assert ost.order == [] and a.stats["kept"] == 1
    assert a.holds(OID, Mode.PW)
    ost.lm.close()


async def test_a_writer_waiting_on_the_pr_lock_is_served_only_after_the_pages_went() -> None:
    ost = Ost()
    a = holder(ost)
    await a.hold(OID, Mode.PR, "ino")
    ost.a = None  # the waiting writer's callback reaches A only through its upgrade

    async def b_write() -> None:  # a library write: a lock on the OST's side
        async with ost.lm.held(resource(OID), Mode.PW, Extent(0, 9), timeout=5):
            ost.order.append("B's write served")

    b = asyncio.ensure_future(b_write())
    await asyncio.sleep(0)
    assert not b.done()
    await asyncio.wait_for(a.hold(OID, Mode.PW, "ino"), 5)
    await asyncio.wait_for(b, 5)
    assert ost.order.index("A's PR pages dropped") < ost.order.index("B's write served")
    assert a.stats["kept"] == 0
    ost.lm.close()


async def test_a_callback_that_overtakes_the_upgrades_grant_drops_the_pages_first() -> None:
    """The OST grants the PW lock (nothing waited), another client's write calls it back at
    once, and the callback is read before the grant's reply: the handle is unknown then.
    Its cancel waits until the pages the upgrade was to keep are gone."""
    sent: list[tuple[str, Any]] = []
    first = asyncio.Event()

    async def call(op: str, args: dict[str, Any]) -> dict[str, Any]:
        sent.append((op, args.get("handles", args.get("oid"))))
        if op == ENQUEUE_OP and args.get("upgrade"):
            dl.called_back(200)  # the notice, handled before this coroutine resumes
            return {"handle": 200, "mode": "PW", "start": 0, "end": OBJECT_EOF}
        if op == ENQUEUE_OP:
            first.set()
            await asyncio.Event().wait()  # the next enqueue waits behind the writer
        return {"handle": 100, "mode": "PR", "start": 0, "end": OBJECT_EOF}

    async def release(mode: Mode, data: Any) -> None:
        sent.append(("pages dropped", mode.name))

    dl = DataLocks(call, release)
    assert dl.ask_with_read(OID)
    assert dl.learn(OID, [100, "PR", 0, OBJECT_EOF], "ino") == 100
    task = asyncio.ensure_future(dl.hold(OID, Mode.PW, "ino"))
    await asyncio.wait_for(first.wait(), 5)
    for _ in range(5):
        await asyncio.sleep(0)
    cancel = sent.index((CANCEL_OP, [200]))
    assert sent.index(("pages dropped", "PR")) < cancel
    task.cancel()


async def test_a_failover_during_an_upgrade_drops_the_pages_before_the_window_closes() -> None:
    """The PR lock given up is not replayed; what it covered goes as the import meets the
    new server, not when the resent upgrade is answered after the window."""
    gate = asyncio.Event()
    dropped: list[str] = []

    async def call(op: str, args: dict[str, Any]) -> dict[str, Any]:
        await gate.wait()
        return {"again": True}

    async def release(mode: Mode, data: Any) -> None:
        dropped.append(mode.name)

    dl = DataLocks(call, release)
    assert dl.ask_with_read(OID)
    dl.learn(OID, [100, "PR", 0, OBJECT_EOF], "ino")
    task = asyncio.ensure_future(dl.hold(OID, Mode.PW, "ino"))
    await asyncio.sleep(0)
    dl.suspend()
    assert dl.replayable() == []
    dl.replayed([])
    for _ in range(5):
        await asyncio.sleep(0)
    assert dropped == ["PR"]
    gate.set()
    task.cancel()


async def test_a_callback_for_a_pr_lock_let_go_after_a_failed_upgrade_waits_for_its_pages(
        ) -> None:
    """The upgrade's enqueue failed (an error reply, a cancelled request): what the PR lock
    covered goes in the background, and a callback for it that comes meanwhile is answered
    only once it is gone (the OST may still hold the lock, and a writer wait on it)."""
    sent: list[tuple[str, Any]] = []
    hook = asyncio.Event()

    async def call(op: str, args: dict[str, Any]) -> dict[str, Any]:
        sent.append((op, args.get("handles")))
        if op == ENQUEUE_OP:
            raise IOFailure("the OST went away")
        return {}

    async def release(mode: Mode, data: Any) -> None:
        await hook.wait()
        sent.append(("pages dropped", mode.name))

    dl = DataLocks(call, release)
    assert dl.ask_with_read(OID)
    dl.learn(OID, [100, "PR", 0, OBJECT_EOF], "ino")
    with pytest.raises(IOFailure):
        await dl.hold(OID, Mode.PW, "ino")
    dl.called_back(100)
    for _ in range(5):
        await asyncio.sleep(0)
    assert (CANCEL_OP, [100]) not in sent
    hook.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert sent.index(("pages dropped", "PR")) < sent.index((CANCEL_OP, [100]))
