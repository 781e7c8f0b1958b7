"""A directory's lock carried through this client's own create, unlink and rmdir
(client/md_carry.py, node/dir_carry.py): sequences a review of 5c0a176 found in which the
client kept serving a name, an absence or a listing of a directory that an acknowledged
change had made stale; each failed then.

The first three run the real MDT and node/locks.py (NodeLocks, LockManager) in process,
with client/md_calls.py's make_call on a MetadataLocks in front of them: requests go
straight to NodeLocks.serve, callbacks come back through the loop."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from shoal.client.md_calls import make_call
from shoal.client.md_locks import MetadataLocks
from shoal.errors import ShoalError
from shoal.node.locks import NodeLocks
from shoal.protocol import messages as m
from shoal.protocol.ldlm import CANCEL_OP
from shoal.protocol.messages import ROOT_INO
from shoal.target.mdt import MDT
from tests.unit.mdt_client import open_mdt
from tests.unit.test_md_locks import Server
from tests.unit.test_md_locks import attrs as file_attrs


class Clock:
    """time.time() for the MDT's namespace operations (target/mdt_ops.py)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


class Imp:
    """An MDT import as md_calls sees one (`md_locks`, `call`), on an in-process MDT."""

    def __init__(self, mdt: MDT, nl: NodeLocks, uuid: str,
                 imps: dict[str, Imp]) -> None:
        self.mdt, self.nl, self.uuid = mdt, nl, uuid
        self.xid = 0
        self.md_locks = MetadataLocks(self._cancel)
        # run once between a request's change and the rest of its reply (its locks)
        self.between: Any = None
        imps[uuid] = self

    async def _cancel(self, handles: list[int]) -> None:
        await self.call(CANCEL_OP, {"handles": handles})

    async def call(self, op: str, args: dict[str, Any]) -> m.Reply:
        self.xid += 1
        req = m.Request(self.xid, op, self.mdt.name, args)
        r = self.nl.serve(self.uuid, self.mdt, req, lambda: self.mdt.handle(self.uuid, req)[0])
        if self.between is not None:
            hook, self.between = self.between, None
            await hook()
        if not isinstance(r, m.Reply):
            r = await r
        if r.status is not None:
            exc = ShoalError(r.message or "", errno_name=r.status)
            exc.reply_data = dict(r.data or {})
            raise exc
        return r


@pytest.fixture
async def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
            ) -> tuple[MDT, NodeLocks, dict[str, Imp], Clock]:
    clock = Clock(1_000_000_000.0)
    monkeypatch.setattr("shoal.target.mdt_ops.time", clock)
    mdt = open_mdt(tmp_path / "mdt")
    imps: dict[str, Imp] = {}

    def send(client: str, notice: m.Notice) -> None:
        imp = imps.get(client)
        if imp is not None:  # delivered as a client reads it: on the loop, in order
            asyncio.get_running_loop().call_soon(imp.md_locks.called_back,
                                                 notice.data["handle"])

    nl = NodeLocks(send, lambda *a: None, callback_timeout=5.0)
    nl.attach(mdt)
    return mdt, nl, imps, clock


async def _held_dir(imp: Imp, ino: int) -> None:
    """The client holds directory `ino`'s UPDATE lock, with its attributes and listing."""
    md = imp.md_locks
    gen = md.generation
    md.learn(gen, (await imp.call("getattr", {"ino": ino, "lock": ["self"]})).data)
    data = (await imp.call("readdir", {"ino": ino, "cookie": 0, "count": 100})).data
    md.learn_listing(gen, ino, None, [(e[0], int(e[1]), e[2]) for e in data["entries"]],
                     md.attr_lock(ino))
    assert md.listing(ino) is not None


async def test_a_create_through_a_symlink_keeps_no_stale_absence(cluster: Any) -> None:
    """A create without O_EXCL of a name that is a symlink makes the link's target (as
    open(2) does; the library's create(path, exclusive=False)). Here the target is in the
    same directory: the directory changed only by this create, so parent_before matches and
    the client carries its listing with the change applied to the name it *asked* for:
    'l' now names the new file, and 'x', which the create made, stays known absent (the
    listing has no 'x'). Bug: the carry assumes the reply made `name`."""
    mdt, nl, imps, clock = cluster
    a = Imp(mdt, nl, "A", imps)
    d = (await a.call("mkdir", {"parent": ROOT_INO, "name": "d"})).data["ino"]
    link = (await a.call("symlink", {"parent": d, "name": "l", "target": "x"})).data["ino"]
    clock.now += 1.0
    await _held_dir(a, d)
    md = a.md_locks
    assert md.absent(d, "x")  # true now: the listing has only 'l'
    clock.now += 1.0
    made = await make_call(a, "create", {"parent": d, "name": "l", "exclusive": False})
    x = mdt.names(d, "x")
    assert x is not None and made["attr"]["ino"] == x and mdt.names(d, "l") == link
    assert not md.absent(d, "x"), "the file the create made is served as absent"
    assert md.listing(d) is None or sorted(md.listing(d)) == [("l", link, "l"), ("x", x, "f")]


async def test_another_clients_create_in_the_same_clock_tick_is_not_missed(
        cluster: Any) -> None:
    """(ctime, nlink) is the only witness that nothing but the own create changed the
    directory between the change and the grant of its lock back. A file created by another
    client in the same time.time() value (a coarse clock: a VM on the jiffies clocksource,
    or a clock stepped back by NTP) leaves both as the own create left them, and the client
    keeps 'b' absent although B's create of it was acknowledged before A's reply came."""
    mdt, nl, imps, clock = cluster
    a, b = Imp(mdt, nl, "A", imps), Imp(mdt, nl, "B", imps)
    d = (await a.call("mkdir", {"parent": ROOT_INO, "name": "d"})).data["ino"]
    clock.now += 1.0
    await _held_dir(a, d)
    md = a.md_locks
    assert md.absent(d, "b")
    clock.now += 1.0  # A's create and B's come in one tick

    async def b_creates() -> None:
        await b.call("create", {"parent": d, "name": "b"})  # acknowledged here

    a.between = b_creates
    await make_call(a, "create", {"parent": d, "name": "a"})
    assert mdt.names(d, "b") is not None
    assert not md.absent(d, "b"), "B's acknowledged file is served as absent"


async def test_a_new_directory_is_not_known_empty_after_another_clients_create_in_it(
        cluster: Any) -> None:
    """make_call's 'known empty' listing of a new directory compares its ctime at the
    creation with its ctime under the lock, and nothing else: another client's create in it
    in the same tick (before the intent's lock is granted) passes unseen."""
    mdt, nl, imps, clock = cluster
    a, b = Imp(mdt, nl, "A", imps), Imp(mdt, nl, "B", imps)
    clock.now += 1.0

    async def b_creates_inside() -> None:
        new = mdt.names(ROOT_INO, "n")
        assert new is not None
        await b.call("create", {"parent": new, "name": "f"})

    a.between = b_creates_inside
    made = await make_call(a, "mkdir", {"parent": ROOT_INO, "name": "n"})
    md = a.md_locks
    assert mdt.names(made["ino"], "f") is not None
    assert not md.absent(made["ino"], "f"), "B's acknowledged file is served as absent"


# -- pure unit tests against MetadataLocks / DirCarry --------------------------------------
def attrs(ino: int, **kw: object) -> dict[str, object]:
    return file_attrs(ino, mode=0o040755, type="d", **kw)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_attributes_read_after_the_names_do_not_vouch_for_them() -> None:
    """The directory's lock came with a lookup's ENOENT (no attributes). Another client then
    creates 'b' (ctime 6.0); the MDT runs its callback of lock 400 a loop turn or two later
    (NodeLocks returns the revoke as a coroutine; LockManager.revoke enqueues through
    gather), and a getattr served in between answers the new attributes, which `learn`
    keeps under lock 400, next to the absence of 'b' read before the change. If this
    client's create of 'a' reaches the MDT before the revoke's enqueue runs, its early cancel
    removes lock 400 and no callback is ever sent; the MDT's `before` (6.0, 2) matches the
    kept attributes and the absence of 'b' is carried on under the new lock."""
    md = MetadataLocks(Server().cancel)
    gen = md.generation
    md.learn_absent(gen, 2, "b", 400)  # lookup of 'b': ENOENT under lock 400, at ctime 5.0
    md.learn(gen, attrs(2, ctime=6.0, nlink=2))  # getattr answered after B's create of 'b'
    assert md.absent(2, "b")
    prior = md.carry.detach(2)
    reply = {"parent_lock": 401, "parent_before": [6.0, 2],
             "parent_attr": attrs(2, ctime=7.0, nlink=2)}
    md.carry.learn(gen, 2, reply, prior, "a", {"ino": 9, "type": "f"})
    assert not md.absent(2, "b"), "an absence older than the kept attributes was carried on"


async def test_a_parent_lock_that_is_not_kept_is_given_back() -> None:
    """A change's reply that comes after a reset (its request resent on the new connection,
    served after the server dropped this client's locks) brings a parent lock the client
    ignores: nothing gives it back, and the MDT holds it until some other client's change
    in the directory calls it back (a callback and a cancel round trip that change waits
    for). Minor: md.learn does the same with an intent's locks."""
    srv = Server()
    md = MetadataLocks(srv.cancel)
    gen = md.generation
    md.reset()
    reply = {"parent_lock": 401, "parent_before": [5.0, 2],
             "parent_attr": attrs(2, ctime=6.0, nlink=2)}
    md.carry.learn(gen, 2, reply, None, "a", {"ino": 9, "type": "f"})
    await settle()
    assert 401 in srv.cancelled
