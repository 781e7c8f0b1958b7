"""Which lock a read was served under (client/data_locks.py `learn`, `still_under`): what a
mount keeps of a read, a small file's read sent with its open above all
(mount/early_read.py), is kept only under that very lock, still held. A lock that came
after the read was served does not make its bytes current."""

from __future__ import annotations

import asyncio
from typing import Any

from shoal.client.data_locks import DataLocks
from shoal.protocol.ldlm import ENQUEUE_OP, OBJECT_EOF, Mode


def _locks(sent: list[tuple[str, dict[str, Any]]]) -> DataLocks:
    async def call(op: str, args: dict[str, Any]) -> dict[str, Any]:
        sent.append((op, args))
        if op == ENQUEUE_OP:  # the OST grants a writer's PW on the whole object
            return {"handle": 22, "mode": args["mode"], "start": 0, "end": OBJECT_EOF}
        return {}

    async def release(mode: Mode, data: Any) -> None:
        pass

    return DataLocks(call, release)


async def test_a_read_whose_grant_was_called_back_first_is_under_no_lock() -> None:
    """The sequence the review found: a read asks for PR with it and is granted L1; a writer
    of this very mount asks for PW, which the OST grants after calling L1 back, and that
    callback overtakes the read's reply. The read's bytes are from before the write, and
    the PW held now serves reads: it must not pass for the read's lock."""
    sent: list[tuple[str, dict[str, Any]]] = []
    dl = _locks(sent)
    assert dl.ask_with_read(7)
    dl.called_back(11)  # L1's callback, before its grant is known here
    assert await dl.hold(7, Mode.PW) == 22  # the writer's lock
    under = dl.learn(7, [11, "PR", 0, OBJECT_EOF], "f")  # the read's reply, at last
    await asyncio.sleep(0)
    assert under is None  # given back at once
    assert ("ldlm_cancel", {"handles": [11]}) in sent
    assert dl.holds(7, Mode.PR)  # what made such a read look current before
    assert not dl.still_under(7, under)
    assert dl.still_under(7, 22)  # a read served under the PW itself would be
    await dl.close()


async def test_a_read_is_current_while_its_own_lock_is_held() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    dl = _locks(sent)
    assert dl.ask_with_read(5)
    under = dl.learn(5, [31, "PR", 0, OBJECT_EOF], "f")
    assert under == 31 and dl.still_under(5, 31)
    assert not dl.still_under(5, None)  # served under no lock of ours
    dl.called_back(31)  # being called back: what it covered goes
    assert not dl.still_under(5, 31)
    for _ in range(3):
        await asyncio.sleep(0)
    assert not dl.still_under(5, 31)
    # a failover renames a replayed lock: a read served under the old handle is not kept
    assert dl.ask_with_read(6)
    assert dl.learn(6, [41, "PR", 0, OBJECT_EOF], "g") == 41
    dl.suspend()
    assert not dl.still_under(6, 41)  # nothing is served under a lock while suspended
    dl.replayed([[41, 541]])
    assert dl.still_under(6, 541) and not dl.still_under(6, 41)
    await dl.close()
