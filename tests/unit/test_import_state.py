"""The client import state machine (protocol/import_state.py), driven with a fake clock:
its transitions, connect replies, failover NIDs, and that protocol/ stays sans-I/O. The replay
list is in test_import_state_replay.py."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shoal.protocol import import_state
from shoal.protocol.import_state import (
    HISTORY_LEN,
    TRANSITIONS,
    Event,
    ImportStateError,
    ImportStateMachine,
)
from shoal.protocol.import_state import ImportState as S
from shoal.protocol.transno import make_transno
from tests.unit.import_state_helpers import NIDS, Clock, connect, req

E = Event


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


def test_a_server_with_no_record_of_a_client_that_connected_before_is_an_eviction():
    clock = Clock()
    sm = ImportStateMachine("T", NIDS, clock())
    assert not sm.forgotten(False)  # a first connect: nothing to have forgotten
    connect(sm, clock(), epoch=3)
    sm.record(req(1), transno=make_transno(3, 1), last_committed=0, nbytes=10)
    sm.disconnect(clock())
    sm.connect_start(clock())
    assert not sm.forgotten(True)
    assert not sm.forgotten(None)  # a server that does not say keeps the old meaning
    assert sm.forgotten(False)
    assert [e.xid for e in sm.evicted(clock())] == [1]
    assert not sm.forgotten(False)  # the connect after an eviction is an initial one


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
