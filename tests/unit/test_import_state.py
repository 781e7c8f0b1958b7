"""The client import state machine (protocol/import_state.py), driven with a fake clock."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from shoal.protocol import import_state
from shoal.protocol.import_state import (
    HISTORY_LEN,
    TRANSITIONS,
    Event,
    ImportStateError,
    ImportStateMachine,
)
from shoal.protocol.import_state import ImportState as S
from shoal.protocol.messages import Request
from shoal.protocol.transno import make_transno

E = Event
NIDS = ["10.0.0.1:988", "10.0.0.2:988", "10.0.0.3:988"]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self, dt: float = 1.0) -> float:
        self.t += dt
        return self.t


def req(xid: int, op: str = "mkdir") -> Request:
    return Request(xid, op, "T", {"path": f"/{xid}"})


def connect(sm: ImportStateMachine, now: float, *, epoch: int = 7, recovering: bool = False,
            last_committed: int = 0) -> S:
    sm.connect_start(now)
    return sm.connected(now, epoch=epoch, last_committed=last_committed, recovering=recovering)


# -- every transition in the table, through the public methods -----------------------------
def drive(state: S, clock: Clock, *, reconnecting: bool = False) -> ImportStateMachine:
    """A machine in `state`, reached through legal events only."""
    sm = ImportStateMachine("T", NIDS, clock())
    if state is S.NEW:
        return sm
    if state is S.CLOSED:
        sm.close(clock())
        return sm
    if state is S.CONNECTING:
        if reconnecting:
            connect(sm, clock())
            sm.disconnect(clock())
        sm.connect_start(clock())
        return sm
    if state in (S.REPLAY, S.REPLAY_LOCKS, S.REPLAY_WAIT):
        connect(sm, clock(), recovering=True)
        if state is not S.REPLAY:
            sm.replay_done(clock())
        if state is S.REPLAY_WAIT:
            sm.locks_done(clock())
        return sm
    connect(sm, clock())
    if state is S.DISCONN:
        sm.disconnect(clock())
    elif state is S.RECOVER:
        sm.disconnect(clock())
        connect(sm, clock())  # same epoch, not recovering: a network blink
    elif state is S.EVICTED:
        sm.evicted(clock())
    elif state is S.IDLE:
        sm.idle(clock())
    assert sm.state is state
    return sm


CALLS: dict[Event, Callable[[ImportStateMachine, float], Any]] = {
    E.CONNECT_START: lambda sm, now: sm.connect_start(now),
    E.CONNECTED: lambda sm, now: sm.connected(now, epoch=7, last_committed=0, recovering=False),
    E.CONNECTED_RECONNECT: lambda sm, now: sm.connected(now, epoch=7, last_committed=0,
                                                        recovering=False),
    E.CONNECTED_RECOVERING: lambda sm, now: sm.connected(now, epoch=7, last_committed=0,
                                                         recovering=True),
    E.CONNECT_FAILED: lambda sm, now: sm.connect_failed(now),
    E.REPLAY_DONE: lambda sm, now: sm.replay_done(now),
    E.LOCKS_DONE: lambda sm, now: sm.locks_done(now),
    E.RECOVERY_DONE: lambda sm, now: sm.recovery_done(now),
    E.RESEND_DONE: lambda sm, now: sm.resend_done(now),
    E.DISCONNECT: lambda sm, now: sm.disconnect(now),
    E.EVICTED: lambda sm, now: sm.evicted(now),
    E.CLOSE: lambda sm, now: sm.close(now),
    E.IDLE: lambda sm, now: sm.idle(now),
}

LEGAL = [(s, e) for s, row in TRANSITIONS.items() for e in row]
ILLEGAL = [(s, e) for s in S for e in E if e not in TRANSITIONS[s]]


def test_table_covers_every_state_and_event():
    assert set(TRANSITIONS) == set(S)
    reached = {t for row in TRANSITIONS.values() for t in row.values()}
    assert reached == set(S) - {S.NEW}, "every state but NEW is reachable"
    assert set(CALLS) == set(E)
    assert len(LEGAL) == 37 and len(LEGAL) + len(ILLEGAL) == len(S) * len(E)
    assert TRANSITIONS[S.CLOSED] == {}, "CLOSED is final"


@pytest.mark.parametrize(("state", "event"), LEGAL, ids=lambda v: v.value)
def test_legal_transition(state: S, event: Event):
    clock = Clock()
    sm = drive(state, clock, reconnecting=event is E.CONNECTED_RECONNECT)
    before = len(sm.history)
    now = clock()
    CALLS[event](sm, now)
    assert sm.state is TRANSITIONS[state][event]
    assert sm.history[-1].state is sm.state and sm.history[-1].time == now
    assert len(sm.history) == min(before + 1, HISTORY_LEN)


@pytest.mark.parametrize(("state", "event"), ILLEGAL, ids=lambda v: v.value)
def test_illegal_transition_raises_and_changes_nothing(state: S, event: Event):
    clock = Clock()
    sm = drive(state, clock)
    history = list(sm.history)
    with pytest.raises(ImportStateError, match=state.value):
        CALLS[event](sm, clock())
    assert sm.state is state and list(sm.history) == history


def test_describe_transitions_is_the_table():
    lines = import_state.describe_transitions().splitlines()
    assert len(lines) == len(LEGAL)
    assert "REPLAY_WAIT --recovery_done--> RECOVER" in lines
    assert "FULL --disconnect--> DISCONN" in lines


# -- what a connect reply means ------------------------------------------------------------
def test_connect_reply_classification_and_flags():
    clock = Clock()
    sm = ImportStateMachine("T", NIDS, clock())
    assert sm.connect_args() == {"target": "T", "flags": ["initial"], "epoch": 0}
    assert connect(sm, clock(), epoch=5) is S.FULL
    assert sm.connect_flags == {"initial"}
    sm.disconnect(clock())
    assert sm.connect_args() == {"target": "T", "flags": ["reconnect"], "epoch": 5}
    # same server life, not recovering: only resend
    assert connect(sm, clock(), epoch=5) is S.RECOVER
    assert sm.connect_flags == {"reconnect"}
    sm.resend_done(clock())
    # a new epoch with nothing to replay: also only resend (the server decides eviction)
    sm.disconnect(clock())
    assert connect(sm, clock(), epoch=6) is S.RECOVER and sm.epoch == 6
    sm.resend_done(clock())
    # a new epoch with requests to replay: REPLAY even if the server says it is not recovering
    sm.record(req(1), transno=make_transno(6, 1), last_committed=0)
    sm.disconnect(clock())
    assert connect(sm, clock(), epoch=7) is S.REPLAY
    assert sm.recoveries == 1


def test_recovering_server_means_replay_even_with_an_empty_list():
    clock = Clock()
    sm = ImportStateMachine("T", NIDS, clock())
    assert connect(sm, clock(), recovering=True) is S.REPLAY
    assert sm.connect_flags == {"initial", "recovering"}
    assert sm.next_replay() is None


def test_eviction_drops_the_list_and_the_next_connect_is_initial():
    clock = Clock()
    sm = ImportStateMachine("T", NIDS, clock())
    connect(sm, clock(), epoch=3)
    sm.record(req(1), transno=make_transno(3, 1), last_committed=0, nbytes=10)
    sm.record(req(2), transno=make_transno(3, 2), last_committed=0, nbytes=20)
    sm.sent(3)
    dropped = sm.evicted(clock())
    assert [e.xid for e in dropped] == [1, 2]
    assert sm.replay == [] and sm.uncommitted_bytes == 0 and not sm.inflight
    assert sm.connect_args() == {"target": "T", "flags": ["initial"], "epoch": 0}
    assert sm.evictions == 1
    # a late reply for an evicted life is not kept
    sm.record(req(4), transno=make_transno(3, 4), last_committed=0)
    assert sm.replay == []
    assert connect(sm, clock(), epoch=3) is S.FULL


def test_history_is_bounded_and_timed_by_the_caller():
    clock = Clock()
    sm = ImportStateMachine("T", NIDS, clock())
    for _ in range(20):
        connect(sm, clock())
        sm.disconnect(clock())
    assert len(sm.history) == HISTORY_LEN
    times = [c.time for c in sm.history]
    assert times == sorted(times) and times[-1] == clock.t
    assert sm.history[-1].state is S.DISCONN


# -- failover NIDs ---------------------------------------------------------------------------
def test_round_robin_tries_untried_nids_first_then_least_recent():
    clock = Clock()
    sm = ImportStateMachine("T", NIDS, clock())
    assert sm.connect_start(clock()) == NIDS[0]
    assert sm.connect_failed(clock()) is True  # NIDS[1] never tried: go at once
    assert sm.connect_start(clock()) == NIDS[1]
    assert sm.connect_failed(clock()) is True
    assert sm.connect_start(clock()) == NIDS[2]
    assert sm.connect_failed(clock()) is False  # a whole round failed: back off
    assert sm.nid == NIDS[0]  # the least recently tried
    assert sm.connect_start(clock()) == NIDS[0]
    sm.connect_failed(clock())
    assert sm.nid == NIDS[1]
    sm.connect_start(clock())
    sm.connected(clock(), epoch=1, last_committed=0, recovering=False)
    # connected via NIDS[1]; when it fails, every other NID is fresh again, in list order
    assert sm.disconnect(clock()) is True and sm.nid == NIDS[0]
    sm.connect_start(clock())
    assert sm.connect_failed(clock()) is True and sm.nid == NIDS[2]
    sm.connect_start(clock())
    assert sm.connect_failed(clock()) is False and sm.nid == NIDS[1]
    assert sm.connect_attempts == 7


def test_round_robin_does_not_need_the_clock_to_move():
    sm = ImportStateMachine("T", NIDS[:2], 5.0)
    seen = []
    for _ in range(6):
        seen.append(sm.connect_start(5.0))
        sm.connect_failed(5.0)
    assert seen == [NIDS[0], NIDS[1]] * 3


def test_busy_keeps_the_same_nid_and_ir_moves_anywhere():
    clock = Clock()
    sm = ImportStateMachine("T", NIDS[:2], clock())
    sm.connect_start(clock())
    assert sm.connect_failed(clock(), retry_same=True) is False and sm.nid == NIDS[0]
    sm.move_to("10.0.0.9:988")
    assert sm.nid == "10.0.0.9:988" and sm.nids[-1] == "10.0.0.9:988"
    sm.move_to(NIDS[1])
    assert sm.nid == NIDS[1] and len(sm.nids) == 3


def test_disconnect_can_keep_the_nid():
    clock = Clock()
    sm = ImportStateMachine("T", NIDS, clock())
    connect(sm, clock())
    assert sm.disconnect(clock(), retry_same=True) is True and sm.nid == NIDS[0]
    connect(sm, clock())
    assert sm.disconnect(clock()) is True and sm.nid == NIDS[1]


def test_an_import_needs_a_nid():
    with pytest.raises(ImportStateError):
        ImportStateMachine("T", [], 0.0)


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


# -- protocol/ stays sans-I/O ----------------------------------------------------------------
@pytest.mark.parametrize("module", ["import_state.py", "adaptive.py"])
def test_module_imports_nothing_with_io(module: str):
    src = Path(import_state.__file__).with_name(module).read_text()
    names: list[str] = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    for name in names:
        top = name.split(".")[0]
        assert top not in {"time", "socket", "asyncio", "threading", "select", "os"}, name
        if top == "shoal":
            assert name.startswith("shoal.protocol") or name == "shoal.errors", name


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
