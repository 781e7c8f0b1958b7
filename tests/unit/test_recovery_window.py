"""protocol/recovery.py with a fake clock: the window, replay order, evictions, status."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.errors import Busy, Evicted
from shoal.protocol.recovery import (
    Accept,
    Action,
    ClientState,
    Complete,
    Evict,
    Execute,
    Reconstruct,
    RecoveryProtocolError,
    Refuse,
    ServerRecovery,
    Window,
    describe_transitions,
    soft_window,
)
from shoal.protocol.transno import make_transno

LC = make_transno(3, 10)  # last_committed at restart: epoch 3, seq 10
T = [LC + i for i in range(20)]  # T[1] is the first transno to replay


def machine(*clients: str, soft: float = 10.0, hard: float = 30.0, ir: bool = False,
            lc: int = LC) -> ServerRecovery:
    return ServerRecovery("fs-MDT0000", dict.fromkeys(clients, lc), lc, 100.0,
                          wall_start=1_700_000_000.0, soft=soft, hard=hard, ir=ir)


def run(r: ServerRecovery, actions: list[Action], fail: set[int] = frozenset(),
        log: list[Action] | None = None) -> list[Action]:
    """Carry out actions as the driver does: every Execute is run and reported at once."""
    out: list[Action] = []
    work = list(actions)
    while work:
        a = work.pop(0)
        out.append(a)
        if isinstance(a, Execute):
            work += r.replay_finished(a.client, a.transno, ok=a.transno not in fail,
                                      reason="EOVERFLOW")
    if log is not None:
        log += out
    return out


def executed(actions: list[Action]) -> list[int]:
    return [a.transno for a in actions if isinstance(a, Execute)]


def test_no_known_clients_is_complete_at_once_and_inactive() -> None:
    r = machine()
    assert r.window is Window.COMPLETE and not r.recovering
    assert r.status_text(100.0) == "status: INACTIVE"
    assert r.client_connected("new", 100.0) == [Accept("new", False, False)]


def test_unknown_client_is_refused_with_lustres_message() -> None:
    r = machine("a", "b")
    assert r.client_connected("a", 101.0) == [Accept("a", True, False)]
    [refuse] = r.client_connected("stranger", 102.0)
    assert isinstance(refuse, Refuse) and refuse.error is Busy
    # a's reconnect keeps the soft deadline >= 101 + 5; it is 110 anyway: 8 s left at 102
    assert refuse.message == (
        "fs-MDT0000: Denying connection for new client stranger, waiting for 2 known clients "
        "(0 recovered, 1 in progress, and 0 evicted) to recover in 0:08; "
        "fs-MDT0000 is in recovery, try again later")


def test_replays_run_in_transno_order_across_clients() -> None:
    r = machine("a", "b")
    log: list[Action] = []
    run(r, r.client_connected("a", 100.0), log=log)
    run(r, r.client_connected("b", 100.0), log=log)
    run(r, r.replay_received("a", T[1]), log=log)  # the next one: runs at once
    assert executed(log) == [T[1]]
    run(r, r.replay_received("a", T[3]), log=log)  # b may still send T[2]: waits
    assert executed(log) == [T[1]]
    run(r, r.replay_received("b", T[2]), log=log)
    assert executed(log) == [T[1], T[2], T[3]]
    assert not any(a.gap for a in log if isinstance(a, Execute))
    run(r, r.replay_done("a"), log=log)
    assert r.recovering
    out = run(r, r.replay_done("b"), log=log)
    assert out == [Complete(False, 0, 3)]
    assert r.window is Window.COMPLETE


def test_a_gap_is_skipped_once_every_replaying_client_has_shown_its_next() -> None:
    r = machine("a", "b")
    log: list[Action] = []
    for c in "ab":
        run(r, r.client_connected(c, 100.0))
    run(r, r.replay_received("a", T[1]), log=log)
    run(r, r.replay_received("a", T[5]), log=log)  # T[2..4]: lost replies
    assert executed(log) == [T[1]]
    run(r, r.replay_received("b", T[3]), log=log)
    assert executed(log) == [T[1], T[3]]  # b may still have T[4]
    run(r, r.replay_done("b"), log=log)
    assert executed(log) == [T[1], T[3], T[5]]
    gaps = [a.gap for a in log if isinstance(a, Execute)]
    assert gaps == [False, True, True]
    run(r, r.replay_done("a"))
    text = r.status_text(103.0)
    assert "VBR: ENABLED" in text and f"last_transno: {T[5]}" in text


def test_a_client_with_nothing_queued_holds_the_queue_until_replay_done() -> None:
    r = machine("a", "b")
    for c in "ab":
        run(r, r.client_connected(c, 100.0))
    assert executed(run(r, r.replay_received("a", T[2]))) == []
    # b's own request T[1] had no reply (a resend, held until the end): b says done
    assert executed(run(r, r.replay_done("b"))) == [T[2]]


def test_client_that_never_connects_blocks_gaps_until_soft_expiry() -> None:
    r = machine("a", "gone")
    run(r, r.client_connected("a", 100.0))
    run(r, r.replay_received("a", T[2]))
    run(r, r.replay_done("a"))
    assert run(r, r.tick(109.9)) == []
    out = run(r, r.tick(110.0))
    assert [type(a) for a in out] == [Evict, Execute, Complete]
    assert out[0] == Evict("gone", out[0].reason, "expired") and "soft" in out[0].reason
    assert executed(out) == [T[2]]
    assert r.state_of("gone") is ClientState.EVICTED
    assert r.status_text(111.0).splitlines()[3] == "completed_clients: 1/2"


def test_soft_expiry_leaves_connected_clients_hard_expiry_evicts_them() -> None:
    r = machine("a", "b")
    run(r, r.client_connected("a", 100.0))
    run(r, r.client_connected("b", 100.0))
    run(r, r.replay_received("a", T[1]))
    run(r, r.replay_done("a"))
    assert run(r, r.tick(110.0)) == []  # b is connected: it may finish
    assert r.next_deadline() == 130.0
    out = run(r, r.tick(130.0))
    assert out == [Evict("b", out[0].reason, "expired"), Complete(True, 1, 1)]
    assert "hard" in out[0].reason
    assert r.state_of("a") is ClientState.DONE


def test_reconnects_push_the_soft_deadline_but_never_past_hard() -> None:
    r = machine("a", "b", "c", soft=10.0, hard=30.0)
    run(r, r.client_connected("a", 101.0))
    assert r.next_deadline() == 110.0
    run(r, r.client_connected("a", 107.0))
    assert r.next_deadline() == 112.0
    run(r, r.client_connected("b", 108.0))
    assert r.next_deadline() == 113.0
    run(r, r.client_connected("b", 127.0))
    assert r.next_deadline() == 130.0  # the hard deadline caps it


def test_vbr_failure_evicts_only_that_client() -> None:
    r = machine("a", "b", "c")
    for c in "abc":
        run(r, r.client_connected(c, 100.0))
    run(r, r.replay_received("a", T[1]))
    run(r, r.replay_received("c", T[4]))
    out = run(r, r.replay_received("b", T[2]), fail={T[2]})
    assert out == [Execute("b", T[2], False), Evict("b", "EOVERFLOW", "vbr")]
    assert r.state_of("b") is ClientState.EVICTED
    assert r.state_of("a") is ClientState.REPLAYING and r.state_of("c") is ClientState.REPLAYING
    # b's next replay is refused as its export is gone; a and c carry on
    with pytest.raises(RecoveryProtocolError):
        r.replay_received("b", T[3])
    out = run(r, r.replay_done("a"))
    assert executed(out) == [T[4]]
    out = run(r, r.replay_done("c"))
    assert out == [Complete(False, 1, 3)]


def test_eviction_drops_the_clients_queued_replays() -> None:
    r = machine("a", "b")
    for c in "ab":
        run(r, r.client_connected(c, 100.0))
    run(r, r.replay_received("a", T[3]))
    run(r, r.replay_received("a", T[5]))
    out = run(r, r.evict("a", "a replay it cannot answer"))
    assert out == [Evict("a", "a replay it cannot answer", "invalid")]
    assert r.status(100.0).queued == 0
    out = run(r, r.replay_done("b"))
    assert executed(out) == [] and isinstance(out[-1], Complete)


def test_abort_evicts_the_unfinished_and_closes() -> None:
    r = machine("a", "b", "c")
    run(r, r.client_connected("a", 100.0))
    run(r, r.client_connected("b", 100.0))
    run(r, r.replay_done("a"))
    out = run(r, r.abort(101.0))
    assert {a.client for a in out if isinstance(a, Evict)} == {"b", "c"}
    assert all(a.cause == "aborted" for a in out if isinstance(a, Evict))
    assert out[-1] == Complete(True, 2, 0)
    assert r.abort(102.0) == [] and r.tick(500.0) == []


def test_evicted_client_reconnects_only_as_a_new_one() -> None:
    r = machine("a", "b")
    run(r, r.client_connected("a", 100.0))
    run(r, r.client_dead("b"))
    [refuse] = r.client_connected("b", 101.0)
    assert isinstance(refuse, Refuse) and refuse.error is Evicted
    [refuse] = r.client_connected("b", 101.0, initial=True)
    assert refuse.error is Busy  # a new client, and the target is still recovering
    run(r, r.replay_done("a"))
    assert not r.recovering
    [refuse] = r.client_connected("b", 102.0)
    assert refuse.error is Evicted
    assert r.client_connected("b", 102.0, initial=True) == [Accept("b", False, True)]
    assert r.client_connected("b", 103.0) == [Accept("b", False, False)]


def test_known_client_connecting_as_new_gives_up_its_old_export() -> None:
    r = machine("a", "b")
    run(r, r.client_connected("a", 100.0))
    out = r.client_connected("b", 100.5, initial=True)
    assert isinstance(out[0], Evict) and out[0].cause == "new_export"
    assert isinstance(out[1], Refuse) and out[1].error is Busy


def test_resent_and_committed_replays_are_answered_not_ordered() -> None:
    r = machine("a", "b")
    for c in "ab":
        run(r, r.client_connected(c, 100.0))
    assert r.replay_received("a", LC - 3) == [Reconstruct("a", LC - 3)]
    run(r, r.replay_received("a", T[1]))
    assert r.replay_received("a", T[1]) == [Reconstruct("a", T[1])]  # its reply was lost
    assert r.replayed == 1


def test_a_replay_the_horizon_passed_evicts_its_sender() -> None:
    r = machine("a", "b")
    for c in "ab":
        run(r, r.client_connected(c, 100.0))
    run(r, r.replay_received("a", T[3]))
    run(r, r.replay_received("b", T[4]))
    run(r, r.replay_done("a"))  # T[4] runs across the gap, then b sends a lower one
    out = run(r, r.replay_received("b", T[2]))
    assert out == [Evict("b", out[0].reason, "invalid"), Complete(False, 1, 2)]
    assert "horizon" in out[0].reason


def test_events_without_an_entry_raise_and_change_nothing() -> None:
    r = machine("a", "b")
    with pytest.raises(RecoveryProtocolError):
        r.replay_received("a", T[1])  # not connected
    with pytest.raises(RecoveryProtocolError):
        r.replay_done("stranger")
    run(r, r.client_connected("a", 100.0))
    with pytest.raises(RecoveryProtocolError):
        r.replay_received("a", 0)
    run(r, r.replay_received("a", T[2]))
    with pytest.raises(RecoveryProtocolError):
        r.replay_received("a", T[2])  # already queued: the driver answers both from one run
    with pytest.raises(RecoveryProtocolError):
        r.replay_finished("a", T[2], ok=True)  # not released
    run(r, r.replay_done("a"))
    with pytest.raises(RecoveryProtocolError):
        r.replay_received("a", T[5])  # DONE: no new replays
    assert r.status(100.0).queued == 1 and r.state_of("a") is ClientState.DONE
    run(r, r.abort(101.0))
    with pytest.raises(RecoveryProtocolError):
        r.replay_done("a")


def test_epoch_boundary_is_not_counted_as_a_gap() -> None:
    lc = make_transno(2, 7)
    r = machine("a", "b", lc=lc)
    for c in "ab":
        run(r, r.client_connected(c, 100.0))
    run(r, r.replay_received("a", make_transno(3, 1)))
    out = run(r, r.replay_received("b", make_transno(3, 2)))
    assert executed(out) == [make_transno(3, 1), make_transno(3, 2)]
    assert r.vbr is False and r.gaps == 0


def test_status_text_while_recovering_and_when_complete() -> None:
    r = machine("a", "b", "c")
    run(r, r.client_connected("a", 101.0))
    run(r, r.client_connected("b", 101.0))
    run(r, r.replay_received("a", T[1]))
    run(r, r.replay_received("a", T[3]))
    run(r, r.replay_done("b"))
    assert r.status_text(104.2) == "\n".join([
        "status: RECOVERING",
        "recovery_start: 1700000000",
        "time_remaining: 5",
        "connected_clients: 2/3",
        "req_replay_clients: 1",
        "lock_repay_clients: 0",
        "completed_clients: 1",
        "evicted_clients: 0",
        "replayed_requests: 1",
        "queued_requests: 1",
        f"next_transno: {T[2]}",
    ])
    run(r, r.client_dead("c"))
    run(r, r.replay_done("a"))
    r.finish_time(107.9)
    assert r.status_text(200.0) == "\n".join([
        "status: COMPLETE",
        "recovery_start: 1700000000",
        "recovery_duration: 7",
        "completed_clients: 2/3",
        "replayed_requests: 2",
        f"last_transno: {T[3]}",
        "VBR: ENABLED",
        "IR: DISABLED",
    ])


def test_ir_shrinks_the_soft_window_as_lustre_does() -> None:
    assert soft_window(10.0, ir=False) == 10.0
    assert soft_window(10.0, ir=True) == 5.0
    assert soft_window(3.0, ir=True) == 2.0  # the floor
    assert soft_window(1.0, ir=True) == 1.0  # never longer than asked
    r = ServerRecovery("t", {"a": 0}, 0, 0.0, ir=True)
    assert r.next_deadline() == 5.0 and r.hard_deadline == 30.0
    assert "IR: ENABLED" in run_to_end(r)


def run_to_end(r: ServerRecovery) -> str:
    run(r, r.tick(r.hard_deadline))
    return r.status_text(r.hard_deadline)


def test_transition_table_is_printable() -> None:
    text = describe_transitions()
    assert "AWAITED    --connect--> REPLAYING" in text
    assert "REPLAYING  --replay_failed--> EVICTED" in text


# -- random interleavings -----------------------------------------------------------------
@dataclass
class Sim:
    uuid: str
    replays: list[int]
    fails: set[int]
    pos: int = 0  # next replay to send
    sent: int | None = None  # a replay sent and not yet answered
    connected: bool = False
    done: bool = False
    evicted: bool = False
    answered: set[int] = field(default_factory=set)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_interleavings_keep_the_rules(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 4), label="clients")
    total = data.draw(st.integers(0, 14), label="transactions")
    owner = data.draw(st.lists(st.integers(-1, n - 1), min_size=total, max_size=total))
    sims = [Sim(f"c{i}", [T[1] + k for k, o in enumerate(owner) if o == i], set())
            for i in range(n)]
    for s in sims:
        s.fails = {t for t in s.replays if data.draw(st.integers(0, 9)) == 0}
    r = ServerRecovery("t", {s.uuid: LC for s in sims}, LC, 0.0, soft=5.0, hard=15.0, ir=False)
    by_uuid = {s.uuid: s for s in sims}
    now = 0.0
    ran: list[int] = []
    completes = 0

    def apply(actions: list[Action]) -> None:
        nonlocal completes
        work = list(actions)
        while work:
            a = work.pop(0)
            if isinstance(a, Execute):
                s = by_uuid[a.client]
                assert not s.evicted, "a replay of an evicted client ran"
                assert not ran or a.transno > ran[-1], f"order broken: {ran} then {a.transno}"
                ran.append(a.transno)
                s.answered.add(a.transno)
                ok = a.transno not in s.fails
                more = r.replay_finished(a.client, a.transno, ok=ok, reason="EOVERFLOW")
                if not ok:
                    evicts = [e for e in more if isinstance(e, Evict)]
                    assert [e.client for e in evicts] == [a.client], "VBR evicts one client"
                work += more
            elif isinstance(a, Reconstruct):
                by_uuid[a.client].answered.add(a.transno)
            elif isinstance(a, Evict):
                by_uuid[a.client].evicted = True
            elif isinstance(a, Complete):
                completes += 1
                assert r.window is Window.COMPLETE

    steps = data.draw(st.lists(st.tuples(st.sampled_from(
        ["connect", "send", "send", "send", "done", "resend", "dead", "tick", "abort",
         "stranger"]), st.integers(0, n - 1), st.floats(0.0, 4.0)), max_size=60))
    for kind, i, dt in steps:
        s = sims[i]
        if kind == "tick":
            now += dt
            apply(r.tick(now))
        elif kind == "abort" and dt < 0.2:
            apply(r.abort(now))
        elif kind == "dead" and dt < 1.0:
            apply(r.client_dead(s.uuid))
        elif kind == "stranger":
            out = r.client_connected("stranger", now)
            assert isinstance(out[0], Refuse if r.recovering else Accept)
        elif s.evicted:
            continue  # the driver answers an evicted client itself (ESHUTDOWN)
        elif kind == "connect":
            out = r.client_connected(s.uuid, now)
            acc = [a for a in out if isinstance(a, (Accept, Refuse))]
            assert len(acc) == 1 and isinstance(acc[0], Accept)
            s.connected = True
            apply([a for a in out if not isinstance(a, Accept)])
        elif not s.connected or not r.recovering:
            continue
        elif kind == "send" and not s.done:
            if s.sent is not None and s.sent in s.answered:
                s.pos += 1
                s.sent = None
            if s.sent is None and s.pos < len(s.replays):
                s.sent = s.replays[s.pos]
                apply(r.replay_received(s.uuid, s.sent))
        elif kind == "resend" and s.pos > 0 and not s.done:
            prev = s.replays[s.pos - 1]
            out = r.replay_received(s.uuid, prev)
            assert out == [Reconstruct(s.uuid, prev)]
        elif kind == "done" and s.sent is None and s.pos == len(s.replays) and not s.done:
            s.done = True
            apply(r.replay_done(s.uuid))

    assert len(ran) == len(set(ran)), "a replay ran twice"
    assert completes == (0 if r.recovering else 1)
    apply(r.tick(now + 15.0))  # whatever happened, the hard deadline ends the window
    assert r.window is Window.COMPLETE and completes == 1
    assert r.next_deadline() is None
    # every client that saw all its replays run and said done kept its export
    for s in sims:
        if s.done and not s.evicted:
            assert r.state_of(s.uuid) is ClientState.DONE


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_cooperating_clients_finish_without_timers_and_run_everything(
        data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 5))
    total = data.draw(st.integers(0, 20))
    owner = data.draw(st.lists(st.integers(0, n - 1), min_size=total, max_size=total))
    lists = {f"c{i}": [T[1] + k for k, o in enumerate(owner) if o == i] for i in range(n)}
    r = ServerRecovery("t", dict.fromkeys(lists, LC), LC, 0.0)
    log: list[Action] = []
    pos = dict.fromkeys(lists, 0)
    waiting: dict[str, int | None] = dict.fromkeys(lists, None)
    for u in data.draw(st.permutations(list(lists))):
        run(r, r.client_connected(u, 0.0), log=log)
    active = set(lists)
    while active:
        u = data.draw(st.sampled_from(sorted(active)))
        done = set(executed(log))
        if waiting[u] is not None and waiting[u] in done:
            pos[u] += 1
            waiting[u] = None
        if waiting[u] is not None:
            # blocked: some other client must move; if every one is blocked, the rule
            # must have released something, so this cannot loop forever
            assert any(waiting[v] is None or waiting[v] in done for v in active)
            continue
        if pos[u] < len(lists[u]):
            waiting[u] = lists[u][pos[u]]
            run(r, r.replay_received(u, waiting[u]), log=log)
        else:
            run(r, r.replay_done(u), log=log)
            active.discard(u)
    assert executed(log) == sorted(t for ts in lists.values() for t in ts)
    assert r.window is Window.COMPLETE and isinstance(log[-1], Complete)
    assert not any(isinstance(a, Evict) for a in log)
