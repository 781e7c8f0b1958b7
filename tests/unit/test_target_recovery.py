"""TargetRecovery on real MDT and OST devices: a target crashes, restarts in a new epoch, and
its clients reconnect and replay through the window as the node will drive it."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from shoal.errors import Busy, Evicted
from shoal.protocol import messages as m
from shoal.protocol.recovery_timeouts import EARLY_PERIOD
from shoal.target.base import TargetService
from shoal.target.evictions import Eviction
from shoal.target.mdt import MDT
from shoal.target.ost import OST
from shoal.target.recovery import TargetRecovery

MDT_NAME = "scratch-MDT0000"


def mdt_at(device: Path) -> MDT:
    t = MDT(MDT_NAME, device, fs="scratch", ost_count=2, commit_interval=3600)
    t.open(create=True)
    return t


class Peer:
    """One client: does work before the crash, then replays it through the window."""

    def __init__(self, uuid: str) -> None:
        self.uuid = uuid
        self.xid = 0
        self.replays: list[tuple[m.Request, m.Reply]] = []
        self.extra: list[float] = []

    def request(self, op: str, args: dict[str, Any], target: str = MDT_NAME,
                bulk: bytes | None = None) -> m.Request:
        self.xid += 1
        return m.Request(self.xid, op, target, args, bulk=bulk)

    def do(self, svc: TargetService, op: str, bulk: bytes | None = None, **args: Any) -> m.Reply:
        req = self.request(op, args, svc.name, bulk)
        reply, _ = svc.handle(self.uuid, req)
        assert reply.status is None, f"{op}: {reply.status} {reply.message}"
        if reply.transno:
            self.replays.append((req, reply))
        return reply

    def committed(self, upto: int) -> None:
        self.replays = [(q, r) for q, r in self.replays if r.transno > upto]

    async def replay_all(self, rec: TargetRecovery) -> list[m.Reply]:
        out = []
        for req, reply in self.replays:
            again = dataclasses.replace(req, flags=m.FLAG_REPLAY, transno=reply.transno,
                                        pre_versions=list(reply.pre_versions))
            out.append(await rec.submit(self.uuid, again, early=self.extra.append))
        return out

    async def call(self, rec: TargetRecovery, op: str, **args: Any) -> m.Reply:
        return await rec.submit(self.uuid, self.request(op, args, rec.svc.name),
                                early=self.extra.append)

    async def done(self, rec: TargetRecovery) -> m.Reply:
        return await self.call(rec, "replay_done")


async def crash_and_restart(svc: TargetService, make: Any) -> TargetService:
    svc._close_db()  # the process died: whatever was not committed is gone
    new = make(svc.device)
    await new.start()
    return new


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_two_clients_replay_in_transno_order_and_held_requests_follow(
        tmp_path: Path) -> None:
    mdt = mdt_at(tmp_path / "mdt")
    a, b, c = Peer("a"), Peer("b"), Peer("c")
    for p in (a, b, c):
        p.do(mdt, "mkdir", path=f"/{p.uuid}0")  # a first change: the slot goes to disk
    lc = await mdt.commit()
    for p in (a, b, c):
        p.committed(lc)
    a.do(mdt, "mkdir", path="/d")
    b.do(mdt, "create", path="/d/f")  # needs a's /d: must not run before it
    a.do(mdt, "create", path="/d/g")
    b.do(mdt, "setattr", path="/d/f", mode=0o600)
    originals = sorted(r.transno for p in (a, b) for _, r in p.replays)
    mdt = await crash_and_restart(mdt, mdt_at)
    evictions: list[Eviction] = []
    rec = TargetRecovery(mdt, soft_timeout=5.0, hard_timeout=10.0, ir=False,
                         on_evict=evictions.append)
    try:
        assert rec.recovering and rec.status_text().startswith("status: RECOVERING")
        info = rec.connect("b", ["reconnect"])
        window_s = info.pop("window_s")  # what is left to the hard limit
        assert isinstance(window_s, float) and 9.0 < window_s <= 10.0
        assert info == {"epoch": mdt.epoch, "last_committed": lc, "recovering": True}
        replaying_b = asyncio.create_task(b.replay_all(rec))
        await settle()
        assert not replaying_b.done()
        assert b.extra == [EARLY_PERIOD]  # held: kept alive by early replies
        rec.connect("c", ["reconnect"])
        held_stat = asyncio.create_task(c.call(rec, "getattr", path="/d/f"))
        held_mkdir = asyncio.create_task(c.call(rec, "mkdir", path="/late"))
        await settle()
        assert [h.req.op for h in rec.held()] == ["getattr", "mkdir"]
        rec.connect("a", ["reconnect"])
        a_replies = await a.replay_all(rec)
        b_replies = await replaying_b
        assert all(r.status is None for r in a_replies + b_replies)
        assert sorted(r.transno for r in a_replies + b_replies) == originals
        assert not held_stat.done()  # nothing ordinary runs while the window is open
        done = [asyncio.create_task(p.done(rec)) for p in (a, b)]
        await settle()
        assert not any(t.done() for t in done)  # c has not finished
        assert (await c.done(rec)).data == {"recovering": False}
        assert [(await t).data for t in done] == [{"recovering": False}] * 2
        stat, new = await held_stat, await held_mkdir
        assert stat.status is None and stat.data["mode"] == 0o100600
        assert new.status is None and new.transno > originals[-1]
        assert new.transno >> 32 == mdt.epoch
        assert rec.status_text().splitlines()[3:5] == ["completed_clients: 3/3",
                                                       "replayed_requests: 4"]
        assert evictions == [] and not rec.recovering
        await asyncio.wait_for(rec.wait_complete(), 1)
    finally:
        rec.close()
        await mdt.stop()


async def test_new_and_unconnected_clients_during_recovery(tmp_path: Path) -> None:
    mdt = mdt_at(tmp_path / "mdt")
    a = Peer("a")
    a.do(mdt, "mkdir", path="/a")
    await mdt.commit()
    mdt = await crash_and_restart(mdt, mdt_at)
    rec = TargetRecovery(mdt, soft_timeout=5.0, hard_timeout=10.0, ir=False)
    try:
        with pytest.raises(Busy, match="Denying connection for new client stranger, waiting "
                                       r"for 1 known clients .* try again later"):
            rec.connect("stranger", ["initial"])
        r = await Peer("a").call(rec, "getattr", path="/")  # a has not reconnected yet
        assert r.status == "ENOTCONN"
        rec.connect("a", ["reconnect"])
        await a.done(rec)
        assert not rec.recovering
        assert rec.connect("stranger", ["initial"])["recovering"] is False
        s = Peer("stranger")
        req = s.request("mkdir", {"path": "/s"})
        assert not rec.wants("stranger", req)  # after the window: straight to the service
        assert (await rec.submit("stranger", req)).status is None
        assert (await s.done(rec)).data == {"recovering": False}
    finally:
        rec.close()
        await mdt.stop()


async def test_vbr_failure_evicts_that_client_alone(tmp_path: Path) -> None:
    mdt = mdt_at(tmp_path / "mdt")
    a, b, c = Peer("a"), Peer("b"), Peer("c")
    a.do(mdt, "create", path="/f")
    b.do(mdt, "mkdir", path="/b")
    c.do(mdt, "mkdir", path="/c")
    lc = await mdt.commit()
    for p in (a, b, c):
        p.committed(lc)
    a.do(mdt, "setattr", path="/f", mode=0o600)  # a dies: this is lost
    b.do(mdt, "setattr", path="/f", uid=7)  # depends on a's change
    c.do(mdt, "mkdir", path="/c/d")
    mdt = await crash_and_restart(mdt, mdt_at)
    evictions: list[Eviction] = []
    rec = TargetRecovery(mdt, soft_timeout=5.0, hard_timeout=10.0, ir=False,
                         on_evict=evictions.append)
    try:
        rec.client_dead("a")  # the MGS knows
        rec.connect("b", ["reconnect"])
        rec.connect("c", ["reconnect"])
        rb = asyncio.create_task(b.replay_all(rec))
        rc = asyncio.create_task(c.replay_all(rec))
        [failed], [fine] = await rb, await rc
        assert failed.status == "EOVERFLOW" and fine.status is None
        assert [(e.client, e.notify) for e in evictions] == [("a", False), ("b", True)]
        assert "EOVERFLOW" in evictions[1].reason
        assert (await b.call(rec, "getattr", path="/")).status == "ESHUTDOWN"
        assert (await b.done(rec)).status == "ESHUTDOWN"
        await c.done(rec)
        assert not rec.recovering
        text = rec.status_text()
        assert "completed_clients: 1/3" in text and "VBR: ENABLED" in text
        attr = (await c.call(rec, "getattr", path="/f")).data
        assert attr["uid"] == 0 and attr["mode"] == 0o100644  # neither change survived
        with pytest.raises(Evicted):
            rec.connect("b", ["reconnect"])
        assert rec.connect("b", ["initial"])["recovering"] is False
        assert (await b.call(rec, "getattr", path="/")).status is None
        assert sorted(mdt.known_clients) == ["c"]
        await mdt.commit()
    finally:
        rec.close()
        await mdt.stop()
    mdt = mdt_at(tmp_path / "mdt")
    assert sorted(mdt.boot_clients) == ["c"]  # the evicted slots are free on disk
    mdt._close_db()


async def test_soft_expiry_evicts_the_absent_and_serves_the_held(tmp_path: Path) -> None:
    mdt = mdt_at(tmp_path / "mdt")
    a, gone = Peer("a"), Peer("gone")
    a.do(mdt, "mkdir", path="/a")
    gone.do(mdt, "mkdir", path="/g")
    lc = await mdt.commit()
    a.committed(lc)
    a.do(mdt, "mkdir", path="/a/x")
    mdt = await crash_and_restart(mdt, mdt_at)
    evictions: list[Eviction] = []
    rec = TargetRecovery(mdt, soft_timeout=0.3, hard_timeout=5.0, ir=False,
                         on_evict=evictions.append)
    try:
        rec.connect("a", ["reconnect"])
        await a.replay_all(rec)
        held = asyncio.create_task(a.call(rec, "readdir", path="/a"))
        done = asyncio.create_task(a.done(rec))
        await asyncio.wait_for(rec.wait_complete(), 3)
        assert [(e.client, e.notify) for e in evictions] == [("gone", True)]
        assert "soft" in evictions[0].reason
        assert [e[0] for e in (await held).data["entries"]] == ["x"]
        assert (await done).data == {"recovering": False}
        assert "completed_clients: 1/2" in rec.status_text()
    finally:
        rec.close()
        await mdt.stop()


async def test_hard_expiry_evicts_a_stalled_client(tmp_path: Path) -> None:
    mdt = mdt_at(tmp_path / "mdt")
    a, b = Peer("a"), Peer("b")
    a.do(mdt, "mkdir", path="/a")
    b.do(mdt, "mkdir", path="/b")
    await mdt.commit()
    mdt = await crash_and_restart(mdt, mdt_at)
    rec = TargetRecovery(mdt, soft_timeout=0.2, hard_timeout=0.5, ir=False)
    try:
        rec.connect("a", ["reconnect"])
        rec.connect("b", ["reconnect"])
        held = asyncio.create_task(a.call(rec, "getattr", path="/"))  # a stalls: no done
        finished = asyncio.create_task(b.done(rec))
        await asyncio.sleep(0.3)
        assert rec.recovering  # soft expiry does not evict a connected client
        await asyncio.wait_for(rec.wait_complete(), 3)
        assert (await held).status == "ESHUTDOWN"
        assert (await finished).data == {"recovering": False}
        assert a.extra and 0.0 < a.extra[0] <= 1.5
        assert "completed_clients: 1/2" in rec.status_text()
    finally:
        rec.close()
        await mdt.stop()


async def test_abort_and_a_client_reconnecting_as_new(tmp_path: Path) -> None:
    mdt = mdt_at(tmp_path / "mdt")
    peers = [Peer(u) for u in "abc"]
    for p in peers:
        p.do(mdt, "mkdir", path=f"/{p.uuid}")
    await mdt.commit()
    mdt = await crash_and_restart(mdt, mdt_at)
    evictions: list[Eviction] = []
    rec = TargetRecovery(mdt, soft_timeout=5.0, hard_timeout=10.0, ir=False,
                         on_evict=evictions.append)
    a, b, c = peers
    try:
        with pytest.raises(Busy):
            rec.connect("c", ["initial"])  # c restarted: its old export is given up
        assert evictions == [Eviction("c", MDT_NAME, "reconnected as a new client", False,
                                     "new_export")]
        rec.connect("a", ["reconnect"])
        done = asyncio.create_task(a.done(rec))
        held = asyncio.create_task(a.call(rec, "mkdir", path="/after"))
        await settle()
        rec.abort()
        assert {e.client for e in evictions} == {"b", "c"}
        assert (await done).data == {"recovering": False}
        assert (await held).status is None
        assert sorted(mdt.known_clients) == ["a"]
    finally:
        rec.close()
        await mdt.stop()


async def test_no_known_clients_means_no_window(tmp_path: Path) -> None:
    mdt = mdt_at(tmp_path / "mdt")
    await mdt.start()
    rec = TargetRecovery(mdt)
    try:
        assert not rec.recovering and rec.status_text() == "status: INACTIVE"
        await asyncio.wait_for(rec.wait_complete(), 1)
        p = Peer("x")
        assert not rec.wants("x", p.request("mkdir", {"path": "/x"}))
        assert (await p.done(rec)).data == {"recovering": False}
    finally:
        rec.close()
        await mdt.stop()


async def test_replays_after_the_window(tmp_path: Path) -> None:
    mdt = mdt_at(tmp_path / "mdt")
    a = Peer("a")
    a.do(mdt, "mkdir", path="/a")
    await mdt.commit()
    mdt = await crash_and_restart(mdt, mdt_at)
    rec = TargetRecovery(mdt, soft_timeout=5.0, hard_timeout=10.0, ir=False)
    try:
        rec.connect("a", ["reconnect"])
        await a.done(rec)
        [again] = await a.replay_all(rec)  # committed and in a's slot: answered
        assert again.status is None
        a.replays = []
        a.do(mdt, "mkdir", path="/b")
        [cached] = await a.replay_all(rec)  # its reply data is there: answered
        assert cached.status is None
        lost = dataclasses.replace(a.request("mkdir", {"path": "/c"}), flags=m.FLAG_REPLAY,
                                   transno=mdt.last_transno + 5)
        assert rec.wants("a", lost)
        r = await rec.submit("a", lost)
        assert r.status == "ESHUTDOWN" and "without recovery" in r.message
        with pytest.raises(Evicted):
            rec.connect("a", ["reconnect"])
    finally:
        rec.close()
        await mdt.stop()


async def test_a_resent_replay_runs_once(tmp_path: Path) -> None:
    mdt = mdt_at(tmp_path / "mdt")
    a, b = Peer("a"), Peer("b")
    a.do(mdt, "mkdir", path="/a")
    b.do(mdt, "mkdir", path="/b")
    lc = await mdt.commit()
    a.committed(lc)
    b.committed(lc)
    b.do(mdt, "mkdir", path="/first")
    a.do(mdt, "mkdir", path="/second")
    mdt = await crash_and_restart(mdt, mdt_at)
    rec = TargetRecovery(mdt, soft_timeout=5.0, hard_timeout=10.0, ir=False)
    try:
        rec.connect("a", ["reconnect"])
        rec.connect("b", ["reconnect"])
        first = asyncio.create_task(a.replay_all(rec))
        second = asyncio.create_task(a.replay_all(rec))  # the connection blinked: resent
        await settle()
        assert not first.done() and not second.done()
        await b.replay_all(rec)
        [r1], [r2] = await first, await second
        assert r1 is r2 and r1.status is None
        assert mdt.stats["mkdir"] == 2  # b's and a's, once each
        [r3] = await a.replay_all(rec)  # once more, after it ran: reconstructed
        assert r3.status is None and mdt.stats["reconstructed"] == 1
    finally:
        rec.close()
        await mdt.stop()


async def test_ost_writes_replay_in_order_across_clients(tmp_path: Path) -> None:
    def ost_at(device: Path) -> OST:
        t = OST("scratch-OST0000", device, fs="scratch", commit_interval=3600)
        t.open(create=True)
        return t

    ost = ost_at(tmp_path / "ost")
    a, b = Peer("a"), Peer("b")
    for p in (a, b):
        p.do(ost, "punch", oid=100 + ord(p.uuid), size=0)
    lc = await ost.commit()
    a.committed(lc)
    b.committed(lc)

    def write(p: Peer, data: bytes) -> None:
        p.do(ost, "write", bulk=data, oid=1, offset=0)

    write(a, b"aaaa")
    write(b, b"bb")
    write(a, b"c")
    ost = await crash_and_restart(ost, ost_at)
    rec = TargetRecovery(ost, soft_timeout=5.0, hard_timeout=10.0, ir=False)
    try:
        rec.connect("b", ["reconnect"])
        rec.connect("a", ["reconnect"])
        rb = asyncio.create_task(b.replay_all(rec))
        await settle()
        ra = asyncio.create_task(a.replay_all(rec))
        assert all(r.status is None for r in await ra + await rb)
        dones = await asyncio.gather(a.done(rec), b.done(rec))
        assert [d.data for d in dones] == [{"recovering": False}] * 2
        assert "completed_clients: 2/2" in rec.status_text()
        r = await a.call(rec, "read", oid=1, offset=0, length=10)
        assert r.bulk == b"cbaa"
    finally:
        rec.close()
        await ost.stop()


async def test_close_answers_whatever_waits(tmp_path: Path) -> None:
    mdt = mdt_at(tmp_path / "mdt")
    a, b = Peer("a"), Peer("b")
    a.do(mdt, "mkdir", path="/a")
    b.do(mdt, "mkdir", path="/b")
    await mdt.commit()
    mdt = await crash_and_restart(mdt, mdt_at)
    rec = TargetRecovery(mdt, soft_timeout=5.0, hard_timeout=10.0, ir=False)
    rec.connect("a", ["reconnect"])
    held = asyncio.create_task(a.call(rec, "getattr", path="/"))
    done = asyncio.create_task(a.done(rec))
    await settle()
    rec.close()
    assert (await held).status == "ENOTCONN" and (await done).status == "ENOTCONN"
    await mdt.stop()


async def test_a_held_request_is_kept_alive_every_early_period_until_answered(
        tmp_path: Path) -> None:
    """replay-single 62: a held replay must not need a timeout as long as the window to
    survive its hold, so the target re-stretches it every EARLY_PERIOD, and stops once the
    answer went out (a lost answer is then the client's own timeout to notice)."""
    mdt = mdt_at(tmp_path / "mdt")
    a, b = Peer("a"), Peer("b")
    for p in (a, b):
        p.do(mdt, "mkdir", path=f"/{p.uuid}0")
    lc = await mdt.commit()
    for p in (a, b):
        p.committed(lc)
    a.do(mdt, "mkdir", path="/a1")
    b.do(mdt, "mkdir", path="/b1")  # held until a's replay (the lower transno) has run
    mdt = await crash_and_restart(mdt, mdt_at)
    rec = TargetRecovery(mdt, soft_timeout=5.0, hard_timeout=10.0, ir=False)
    try:
        rec.connect("a", ["reconnect"])
        rec.connect("b", ["reconnect"])
        held = asyncio.create_task(b.replay_all(rec))
        await asyncio.sleep(EARLY_PERIOD * 2.5)
        assert not held.done()
        assert b.extra == [EARLY_PERIOD] * 3  # at the hold, then every period
        assert all(r.status is None for r in await a.replay_all(rec))
        assert [r.status for r in await held] == [None]
        count = len(b.extra)
        await asyncio.sleep(EARLY_PERIOD * 1.5)
        assert len(b.extra) == count  # answered: no more stretching
    finally:
        rec.close()
        await mdt.stop()


async def test_a_client_that_disconnects_is_forgotten_and_not_waited_for(
        tmp_path: Path) -> None:
    mdt = mdt_at(tmp_path / "mdt")
    for uuid in ("leaver", "stayer"):
        await mdt.client_connected(uuid)
    Peer("stayer").do(mdt, "mkdir", path="/s")
    await mdt.commit()
    mdt = await crash_and_restart(mdt, mdt_at)
    evictions: list[Eviction] = []
    rec = TargetRecovery(mdt, soft_timeout=5.0, hard_timeout=10.0, ir=False,
                         on_evict=evictions.append)
    try:
        assert sorted(mdt.known_clients) == ["leaver", "stayer"]
        rec.disconnect("leaver")  # a client that closed during the window: not waited for
        rec.connect("stayer", ["reconnect"])
        await Peer("stayer").done(rec)
        assert not rec.recovering and mdt.known_clients == ["stayer"]
        rec.disconnect("stayer")  # after the window: its slot goes, nobody is told
        assert mdt.known_clients == [] and all(not e.notify for e in evictions)
        assert [e.cause for e in evictions] == ["disconnect", "disconnect"]
        # leaving is not being evicted: it may come back as a new client
        assert rec.connect("stayer", ["initial"])["recovering"] is False
        rec.disconnect("nobody")  # unknown: nothing to do
        await mdt.commit()
        await mdt.stop()
        mdt = mdt_at(tmp_path / "mdt")
        assert mdt.boot_clients == {}
    finally:
        rec.close()
        await mdt.stop()
