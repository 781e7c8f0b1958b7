"""The client import's replay list (protocol/import_state.py): examples with a fake clock,
and a model with random drops, duplicates, delays and server deaths."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from shoal.protocol import import_state
from shoal.protocol.import_state import ImportState as S
from shoal.protocol.import_state import ImportStateError, ImportStateMachine
from shoal.protocol.messages import Request
from shoal.protocol.transno import make_transno
from tests.unit.import_state_helpers import NIDS, Clock, connect, req


# -- replay list -----------------------------------------------------------------------------
def test_replay_list_is_ordered_deduplicated_and_pruned():
    clock = Clock()
    sm = ImportStateMachine("T", NIDS, clock())
    connect(sm, clock(), epoch=1)
    t = [make_transno(1, i) for i in range(1, 6)]
    assert sm.record(req(13), transno=t[2], last_committed=0, nbytes=3)
    assert sm.record(req(11), transno=t[0], last_committed=0, nbytes=1)
    assert sm.record(req(12), transno=t[1], last_committed=0, nbytes=2)
    assert not sm.record(req(12), transno=t[1], last_committed=0, nbytes=2)  # duplicate
    assert [(e.transno, e.xid) for e in sm.replay] == [(t[0], 11), (t[1], 12), (t[2], 13)]
    assert sm.uncommitted_bytes == 6
    # a reply that says t[1] is committed drops the first two, and is not kept itself
    assert not sm.record(req(10), transno=t[0], last_committed=t[1])
    assert [e.xid for e in sm.replay] == [13] and sm.uncommitted_bytes == 3
    assert sm.observe_committed(t[0]) == 0  # last_committed never goes back
    assert sm.observe_committed(t[4]) == 3 and sm.replay == []


def test_replay_runs_in_order_once_per_recovery_and_restarts_with_the_next():
    clock = Clock()
    sm = ImportStateMachine("T", NIDS, clock())
    connect(sm, clock(), epoch=1)
    for xid, seq in ((1, 3), (2, 1), (3, 2), (4, 2)):
        sm.record(req(xid), transno=make_transno(1, seq), last_committed=0,
                  pre_versions=[seq])
    sm.disconnect(clock())
    assert connect(sm, clock(), epoch=2, recovering=True) is S.REPLAY
    first = sm.next_replay()
    assert first is not None and (first.xid, first.pre_versions) == (2, [1])
    sm.replayed(first)
    with pytest.raises(ImportStateError):
        sm.replayed(first)  # twice in one recovery
    second = sm.next_replay()
    assert second is not None and second.xid == 3
    sm.replayed(second)
    assert sm.last_replayed == make_transno(1, 2)
    # the new server dies mid-replay: the next recovery starts again from the front
    sm.disconnect(clock())
    assert connect(sm, clock(), epoch=3, recovering=True) is S.REPLAY
    order = []
    while (e := sm.next_replay()) is not None:
        sm.replayed(e)
        order.append(e.xid)
    assert order == [2, 3, 4, 1]
    assert sm.replays_sent == 6 and sm.recoveries == 2


def test_a_window_of_replays_is_offered_in_order_after_the_last_sent_and_the_last_done():
    clock = Clock()
    sm = ImportStateMachine("T", NIDS, clock())
    connect(sm, clock(), epoch=1)
    for xid in range(1, 8):
        sm.record(req(xid), transno=make_transno(1, 8 - xid), last_committed=0)
    assert sm.next_replays(3) == []  # not replaying
    sm.disconnect(clock())
    assert connect(sm, clock(), epoch=2, recovering=True) is S.REPLAY
    window = sm.next_replays(3)
    assert [e.xid for e in window] == [7, 6, 5]
    sent = (window[-1].transno, window[-1].xid)
    assert [e.xid for e in sm.next_replays(3, after=sent)] == [4, 3, 2]
    sm.replayed(window[0])
    # nothing sent beyond the cursor: the window starts after the last one replayed
    assert [e.xid for e in sm.next_replays(2)] == [6, 5]
    # a commit a reply reported drops entries, some of them in flight, some not yet sent
    sm.observe_committed(make_transno(1, 5))
    assert [e.xid for e in sm.next_replays(9, after=sent)] == [2, 1]
    assert sm.next_replays(0) == []


def test_next_replay_outside_replay_is_none_and_replayed_refused():
    clock = Clock()
    sm = ImportStateMachine("T", NIDS, clock())
    connect(sm, clock(), epoch=1)
    sm.record(req(1), transno=make_transno(1, 1), last_committed=0)
    assert sm.next_replay() is None
    with pytest.raises(ImportStateError):
        sm.replayed(sm.replay[0])


def test_resend_bookkeeping():
    clock = Clock()
    sm = ImportStateMachine("T", NIDS, clock())
    connect(sm, clock())
    sm.sent(1)
    sm.sent(2)
    sm.finished(1)
    sm.disconnect(clock())
    assert not sm.must_resend(1) and sm.must_resend(2)
    sm.lost(3)
    assert sm.resend == {2, 3}
    sm.record(req(2), transno=0, last_committed=0)
    sm.finished(3)
    assert sm.resend == set()


# -- a model: random drops, duplicates, delays, server deaths --------------------------------
class ReplayModel(RuleBasedStateMachine):
    """One client, one target whose server may die and lose what it had not committed.

    Checks invariant 1 through the state machine: whatever was acknowledged and not yet
    committed stays on the list, in order; each recovery replays each entry at most once,
    in order; and once the import is FULL on the live server again, that server holds every
    acknowledged transaction the client was not told it lost (eviction: EIO)."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.sm = ImportStateMachine("T", NIDS[:2], self.now)
        self.epoch, self.seq = 1, 0
        self.durable: set[int] = set()
        self.volatile: set[int] = set()
        self.committed = 0
        self.up, self.recovering, self.forgot_us = True, False, False
        self.conn_epoch = 0  # the server life the import last connected to
        self.acked: dict[int, int] = {}  # xid -> transno the client was given
        self.pending: dict[int, int] = {}  # xid -> transno of requests whose reply was lost
        self.xid = 0
        self.replayed: list[tuple[int, int]] = []

    def tick(self) -> float:
        self.now += 0.5
        return self.now

    @property
    def reachable(self) -> bool:
        """The server the import talks to is the live one (else: timeout or lost socket)."""
        return self.up and self.conn_epoch == self.epoch

    def execute(self, transno: int | None = None) -> int:
        if transno is None:
            self.seq += 1
            transno = make_transno(self.epoch, self.seq)
        if transno not in self.durable:
            self.volatile.add(transno)
        return transno

    def reply(self, xid: int, transno: int, duplicate: bool = False) -> None:
        self.sm.record(Request(xid, "op", "T"), transno=transno,
                       last_committed=self.committed, nbytes=xid % 7)
        self.acked[xid] = transno
        if duplicate:
            assert not self.sm.record(Request(xid, "op", "T"), transno=transno,
                                      last_committed=self.committed, nbytes=xid % 7)

    @precondition(lambda self: self.sm.state in (S.NEW, S.DISCONN, S.EVICTED))
    @rule()
    def connect(self) -> None:
        self.sm.connect_start(self.tick())
        if not self.up:
            self.sm.connect_failed(self.tick())
            return
        if self.forgot_us:  # the window closed without us: ESHUTDOWN
            self.forgot_us = False
            for e in self.sm.evicted(self.tick()):
                self.acked.pop(e.xid, None)  # the application is told: EIO
            self.pending.clear()
            return
        self.conn_epoch = self.epoch
        self.sm.connected(self.tick(), epoch=self.epoch, last_committed=self.committed,
                          recovering=self.recovering)
        self.replayed = []

    @precondition(lambda self: self.sm.state in import_state.CONNECTED_STATES
                  and not self.reachable)
    @rule()
    def lose_connection(self) -> None:
        """A timeout, a lost socket or an IR notice shows the server is gone or moved."""
        self.sm.disconnect(self.tick())

    @precondition(lambda self: self.sm.state is S.REPLAY and self.reachable)
    @rule(interrupt=st.sampled_from(["no", "no", "no", "blink", "death"]))
    def replay_step(self, interrupt: str) -> None:
        entry = self.sm.next_replay()
        if entry is None:
            self.sm.replay_done(self.tick())
            self.sm.locks_done(self.tick())
            self.sm.recovery_done(self.tick())
            self.recovering = False
            return
        key = (entry.transno, entry.xid)
        assert key not in self.replayed, "replayed twice in one recovery"
        assert not self.replayed or key > self.replayed[-1], "replayed out of order"
        if interrupt == "death":
            self.server_dies()
        if interrupt != "no":
            self.sm.disconnect(self.tick())
            return
        self.execute(entry.transno)
        self.sm.replayed(entry)
        self.replayed.append(key)
        self.sm.observe_committed(self.committed)

    @precondition(lambda self: self.sm.state is S.RECOVER and self.reachable)
    @rule()
    def finish_resends(self) -> None:
        for xid, transno in sorted(self.pending.items()):
            # the server reconstructs a reply it still has, else does the work again
            have = transno in self.durable or transno in self.volatile
            self.reply(xid, transno if have else self.execute())
        self.pending.clear()
        self.sm.resend_done(self.tick())

    @precondition(lambda self: self.sm.state is S.FULL)
    @rule(fate=st.sampled_from(["ok", "ok", "ok", "drop", "dup"]))
    def request(self, fate: str) -> None:
        self.xid += 1
        self.sm.sent(self.xid)
        if not self.reachable:
            self.pending[self.xid] = 0
            self.sm.disconnect(self.tick())
            return
        transno = self.execute()
        if fate == "drop":
            self.pending[self.xid] = transno
            self.sm.disconnect(self.tick())  # its timeout makes the import reconnect
        else:
            self.reply(self.xid, transno, duplicate=fate == "dup")

    @precondition(lambda self: self.up and self.volatile)
    @rule(k=st.integers(1, 5))
    def commit(self, k: int) -> None:
        """Group commit of the k oldest changes (commits go in transno order)."""
        batch = sorted(self.volatile)[:k]
        self.durable.update(batch)
        self.volatile.difference_update(batch)
        self.committed = max(self.committed, batch[-1])

    @precondition(lambda self: self.reachable and self.sm.state is S.FULL)
    @rule()
    def ping(self) -> None:
        self.sm.observe_committed(self.committed)

    @precondition(lambda self: self.up)
    @rule()
    def server_dies(self) -> None:
        self.up = False
        self.volatile.clear()

    @precondition(lambda self: not self.up)
    @rule()
    def server_restarts(self) -> None:
        self.up, self.recovering = True, True
        self.epoch, self.seq = self.epoch + 1, 0

    @precondition(lambda self: self.up and self.recovering and not (
        self.conn_epoch == self.epoch
        and self.sm.state in (S.REPLAY, S.REPLAY_LOCKS, S.REPLAY_WAIT, S.RECOVER)))
    @rule()
    def window_expires(self) -> None:
        self.recovering, self.forgot_us = False, True

    @rule(dt=st.floats(0, 100))
    def delay(self, dt: float) -> None:
        self.now += dt

    @invariant()
    def list_is_sorted_unique_and_accounted(self) -> None:
        keys = [(e.transno, e.xid) for e in self.sm.replay]
        assert keys == sorted(set(keys))
        assert all(e.transno > self.sm.last_committed for e in self.sm.replay)
        assert self.sm.uncommitted_bytes == sum(e.nbytes for e in self.sm.replay)
        assert self.sm.last_committed <= self.committed

    @invariant()
    def acknowledged_and_uncommitted_is_kept(self) -> None:
        held = {e.xid for e in self.sm.replay}
        for xid, transno in self.acked.items():
            if transno > self.sm.last_committed:
                assert xid in held, f"xid {xid} ({transno:#x}) was acknowledged and dropped"

    @invariant()
    def nothing_acknowledged_is_lost_once_full(self) -> None:
        if self.sm.state is S.FULL and self.reachable:
            have = self.durable | self.volatile
            lost = {x: t for x, t in self.acked.items() if t not in have}
            assert not lost, f"acknowledged and lost: {lost}"


ReplayModel.TestCase.settings = settings(max_examples=200, stateful_step_count=80)
TestReplayModel = ReplayModel.TestCase


@given(st.lists(st.tuples(st.integers(1, 3), st.integers(1, 40), st.integers(0, 9)),
                max_size=30), st.integers(0, 4))
def test_record_in_any_order_gives_the_same_sorted_list(replies, committed_epoch):
    sm = ImportStateMachine("T", NIDS, 0.0)
    connect(sm, 1.0)
    for epoch, seq, xid in replies:
        sm.record(req(xid), transno=make_transno(epoch, seq), last_committed=0)
    lc = make_transno(committed_epoch, 20)
    sm.observe_committed(lc)
    expect = sorted({(make_transno(e, s), x) for e, s, x in replies
                     if make_transno(e, s) > lc})
    assert [(e.transno, e.xid) for e in sm.replay] == expect
