"""Extent locks replayed after an OST failover: the server's rule (node/data_locks.replay,
on a real LockManager) and the holder's side (client/data_locks.DataLocks: suspend,
replayable, replayed). The whole path against a real cluster is in
tests/scenarios/test_data_locks_failover.py."""

from __future__ import annotations

import asyncio
from typing import Any

from shoal.client.data_locks import DataLocks
from shoal.ldlm.server import LockManager
from shoal.node.data_locks import replay, resource
from shoal.protocol import messages as m
from shoal.protocol.ldlm import OBJECT_EOF, REPLAY_OP, Lock, Mode


def _manager() -> tuple[LockManager, list[tuple[Lock, Lock]]]:
    called: list[tuple[Lock, Lock]] = []
    lm = LockManager("scratch-OST0000", send_callback=lambda lk, by: called.append((lk, by)),
                     evict=lambda client, reason: None, first_handle=(7 << 32) + 1)
    return lm, called


async def _no_rpc(op: str, args: dict[str, Any]) -> dict[str, Any]:
    raise AssertionError(f"no request expected here: {op} {args}")


def _replay(lm: LockManager, client: str, locks: Any, *, in_window: bool = True) -> m.Reply:
    return replay(lm, client, m.Request(1, REPLAY_OP, "scratch-OST0000", {"locks": locks}),
                  in_window=in_window)


async def test_the_window_grants_again_what_was_held_and_nothing_after_it() -> None:
    lm, called = _manager()
    got = _replay(lm, "a", [[101, 5, "PW"], [102, 6, "PR"], ["x", 7, "PW"], [103, -1, "PR"],
                            [104, 8, "EX"], [105, 9]]).data["granted"]
    assert [old for old, _new in got] == [101, 102]  # the malformed ones are skipped
    assert all(new > 7 << 32 for _old, new in got)
    held = {lk.handle: lk for lk in lm.space.locks.values()}
    assert held[got[0][1]].mode is Mode.PW and held[got[0][1]].resource == resource(5)
    # another client's PR on object 6 fits beside a's; its PW on object 5 does not
    b = _replay(lm, "b", [[201, 6, "PR"], [202, 5, "PW"]]).data["granted"]
    assert [old for old, _new in b] == [201]
    # a's replay sent again replaces its first (it conflicts with nothing of its own)
    again = _replay(lm, "a", [[101, 5, "PW"]]).data["granted"]
    assert [old for old, _new in again] == [101]
    assert sorted(lk.client for lk in lm.space.locks.values()) == ["a", "b"]
    assert called == []  # a replay calls nobody back
    # after the window: nothing
    assert _replay(lm, "c", [[301, 11, "PR"]], in_window=False).data["granted"] == []
    assert _replay(lm, "c", "not a list").status == "EINVAL"


async def test_the_holder_keeps_what_was_granted_again_and_drops_the_rest() -> None:
    released: list[tuple[Mode, Any]] = []

    async def release(mode: Mode, data: Any) -> None:
        released.append((mode, data))

    dl = DataLocks(_no_rpc, release)
    for oid, mode in ((1, Mode.PW), (2, Mode.PR)):
        assert dl.ask_with_read(oid)
        dl.learn(oid, [100 + oid, mode.name, 0, OBJECT_EOF], f"f{oid}")
    dl.suspend()
    assert dl.suspended and not dl.holds(1, Mode.PW)
    assert sorted(dl.replayable()) == [[101, 1, "PW"], [102, 2, "PR"]]
    # a user of object 1 waits for the replay's answer
    waiting = asyncio.ensure_future(dl.hold(1, Mode.PW))
    await asyncio.sleep(0)
    assert not waiting.done()
    dl.replayed([[101, 501], "junk", [999, 1]])
    assert await asyncio.wait_for(waiting, 1.0) == 501  # held again, under its new handle
    assert dl.holds(1, Mode.PW) and dl.handle_for(1, Mode.PW) == 501
    await asyncio.sleep(0)  # the release of the lock not granted runs in the background
    assert released == [(Mode.PR, "f2")]
    assert not dl.holds(2, Mode.PR)
    assert dl.stats["replayed"] == 1 and dl.stats["not_replayed"] == 1


async def test_a_reset_while_suspended_drops_everything_and_wakes_the_waiters() -> None:
    released: list[Any] = []

    async def release(mode: Mode, data: Any) -> None:
        released.append(data)

    dl = DataLocks(_no_rpc, release)
    assert dl.ask_with_read(3)
    dl.learn(3, [103, "PR", 0, OBJECT_EOF], "f3")
    dl.suspend()
    dl.reset()  # the import connected to a server that was not recovering after all
    await asyncio.sleep(0)
    assert released == ["f3"] and not dl.suspended and not dl.holds(3, Mode.PR)
    dl.replayed([[103, 1]])  # a late answer finds nothing to keep
    assert dl.stats["replayed"] == 0 and dl.replayable() == []


async def test_a_replay_sent_again_confirms_what_was_granted_window_or_not() -> None:
    lm, _called = _manager()
    first = dict(_replay(lm, "a", [[101, 5, "PW"], [102, 6, "PR"]]).data["granted"])
    # the client reconnected after its final ping and the window closed meanwhile: its
    # replay names the handles it was granted here, and they are confirmed
    again = _replay(lm, "a", [[first[101], 5, "PW"]], in_window=False).data["granted"]
    assert again == [[first[101], first[101]]]
    # the one it no longer names went (it keeps nothing under it)
    assert sorted(lk.handle for lk in lm.space.locks.values()) == [first[101]]
    # a handle it does not hold here, or of another object, is no lock after the window
    assert _replay(lm, "a", [[first[101], 7, "PW"]], in_window=False).data["granted"] == []
    assert lm.space.locks == {}


async def test_a_lock_being_called_back_is_replayed_and_its_release_renamed() -> None:
    released: list[Any] = []
    go_on = asyncio.Event()

    async def release(mode: Mode, data: Any) -> None:
        await go_on.wait()  # its writes are still landing
        released.append(data)

    cancels: list[Any] = []

    async def call(op: str, args: dict[str, Any]) -> dict[str, Any]:
        cancels.append((op, args))
        return {}

    dl = DataLocks(call, release)
    assert dl.ask_with_read(1)
    dl.learn(1, [101, "PW", 0, OBJECT_EOF], "f1")
    dl.called_back(101)  # the callback came; the OSS died while the writes landed
    await asyncio.sleep(0)
    dl.suspend()
    assert dl.replayable() == [[101, 1, "PW"]]
    dl.replayed([[101, 501]])
    go_on.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert released == ["f1"] and cancels == [("ldlm_cancel", {"handles": [501]})]
    assert not dl.holds(1, Mode.PW) and dl.replayable() == []
    await dl.close()
