"""A target's lock manager (ldlm/server.py) on a real event loop: enqueues wait for their
grant, callbacks go to the holders, the late holder is evicted, the target's own locks."""

from __future__ import annotations

import asyncio

import pytest

from shoal.errors import Evicted, TimedOut
from shoal.ldlm.server import LockManager
from shoal.protocol.ldlm import Bits, Extent, Lock, Mode, State

INO = ("ino", 3)


class Holders:
    """What the node would do: note callbacks (and cancel when told to), and evictions."""

    def __init__(self) -> None:
        self.callbacks: list[tuple[str, int, int]] = []
        self.evicted: list[str] = []
        self.lm: LockManager | None = None
        self.answer: set[str] = set()  # clients that cancel as soon as they are called back

    def send(self, lock: Lock, by: Lock) -> None:
        self.callbacks.append((lock.client, lock.handle, by.handle))
        if lock.client in self.answer and self.lm is not None:
            lm = self.lm
            asyncio.get_running_loop().call_soon(lm.cancel, lock.handle, lock.client)

    def evict(self, client: str, reason: str) -> None:
        self.evicted.append(client)


def manager(timeout: float = 5.0) -> tuple[LockManager, Holders]:
    h = Holders()
    h.lm = LockManager("scratch-MDT0000", send_callback=h.send, evict=h.evict,
                       callback_timeout=timeout)
    return h.lm, h


async def test_a_writer_waits_for_the_readers_it_called_back() -> None:
    lm, h = manager()
    h.answer = {"c1", "c2"}
    a = await lm.enqueue("c1", INO, Mode.PR, Bits.UPDATE, timeout=1)
    b = await lm.enqueue("c2", INO, Mode.PR, Bits.UPDATE, timeout=1)
    w = await asyncio.wait_for(lm.enqueue("c3", INO, Mode.EX, Bits.UPDATE, timeout=1), 2)
    assert w.state is State.GRANTED
    assert sorted(c for c, _h, _by in h.callbacks) == ["c1", "c2"]
    assert a.state is b.state is State.CANCELLED
    lm.close()


async def test_a_holder_that_never_cancels_is_evicted_and_the_writer_goes_on() -> None:
    lm, h = manager(timeout=0.2)
    await lm.enqueue("dead", INO, Mode.PR, Bits.UPDATE, timeout=1)
    w = await asyncio.wait_for(lm.enqueue("live", INO, Mode.EX, Bits.UPDATE, timeout=5), 3)
    assert w.state is State.GRANTED and h.evicted == ["dead"]
    assert lm.space.held_by("dead") == []
    lm.close()


async def test_an_enqueue_that_times_out_is_withdrawn() -> None:
    lm, h = manager(timeout=60)
    held = await lm.enqueue("c1", INO, Mode.EX, Bits.UPDATE, timeout=1)
    with pytest.raises(TimedOut):
        await lm.enqueue("c2", INO, Mode.PR, Bits.UPDATE, timeout=0.1)
    assert [lk.client for lk in lm.space.locks.values()] == ["c1"]
    assert lm.cancel(held.handle, "c1")
    assert lm.space.locks == {}
    lm.close()


async def test_a_client_may_cancel_only_its_own_locks() -> None:
    lm, _h = manager()
    lk = await lm.enqueue("c1", INO, Mode.PR, Bits.UPDATE, timeout=1)
    assert not lm.cancel(lk.handle, "c2")
    assert not lm.cancel(999, "c1")
    assert lk.state is State.GRANTED
    lm.close()


async def test_the_targets_own_lock_waits_for_clients_and_blocks_them_while_held() -> None:
    lm, h = manager()
    h.answer = {"c1"}
    await lm.enqueue("c1", INO, Mode.PR, Bits.UPDATE, timeout=1)
    async with lm.held(INO, Mode.EX, Bits.UPDATE, timeout=1):
        assert h.callbacks and h.callbacks[0][0] == "c1"
        reader = asyncio.ensure_future(lm.enqueue("c2", INO, Mode.PR, Bits.UPDATE, timeout=2))
        await asyncio.sleep(0.05)
        assert not reader.done()  # the change is under way
    lk = await asyncio.wait_for(reader, 1)
    assert lk.state is State.GRANTED
    assert all(c != "@target" for c, _h, _by in h.callbacks)  # never called back itself
    lm.close()


async def test_the_evicted_clients_waiting_enqueue_fails() -> None:
    lm, _h = manager()
    await lm.enqueue("c1", ("obj", 1), Mode.PW, Extent(0, 9), timeout=1)
    waiting = asyncio.ensure_future(lm.enqueue("c2", ("obj", 1), Mode.PW, Extent(0, 9),
                                               timeout=5))
    await asyncio.sleep(0.01)
    lm.client_gone("c2")
    with pytest.raises(Evicted):
        await waiting
    lm.close()


async def test_a_resource_is_busy_for_the_bits_its_locks_hold() -> None:
    lm, _h = manager()
    assert not lm.busy(("ino", 5))
    await lm.enqueue("a", ("ino", 5), Mode.PR, Bits.LOOKUP, timeout=1)
    assert lm.busy(("ino", 5)) and lm.busy(("ino", 5), Bits.LOOKUP)
    assert not lm.busy(("ino", 5), Bits.UPDATE)  # a create in it calls nothing back
    await lm.enqueue("b", ("ino", 5), Mode.PR, Bits.UPDATE | Bits.LOOKUP, timeout=1)
    assert lm.busy(("ino", 5), Bits.UPDATE)


async def test_a_revoke_for_a_clients_request_names_it_in_its_callbacks() -> None:
    """The target's own lock taken for a client's change says whose change it is
    (`cause_of`: the node tells a holder its callback is for its own request), until the
    revoke is over."""
    lm, h = manager()
    h.answer = {"c1", "c2"}
    causes: list[tuple[str, str | None]] = []
    send = h.send

    def noting(lock: Lock, by: Lock) -> None:
        causes.append((lock.client, lm.cause_of(by.handle)))
        send(lock, by)

    lm.send_callback = noting
    for client in ("c1", "c2"):
        await lm.enqueue(client, INO, Mode.PR, Bits.UPDATE, timeout=1)
    await asyncio.wait_for(lm.revoke([INO], Bits.UPDATE, timeout=1, cause="c1"), 2)
    assert sorted(causes) == [("c1", "c1"), ("c2", "c1")]
    by = h.callbacks[0][2]
    assert lm.cause_of(by) is None  # the revoke is over: its lock is gone
    await lm.enqueue("c1", INO, Mode.PR, Bits.UPDATE, timeout=1)
    await asyncio.wait_for(lm.revoke([INO], Bits.UPDATE, timeout=1), 2)
    assert causes[-1] == ("c1", None)  # a change of the target's own (an eviction's)
    lm.close()
