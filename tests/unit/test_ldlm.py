"""The lock rules (protocol/ldlm.py): compatibility, grant order, callbacks, evictions, extent
expansion, replay; and, for any sequence of events, the invariants a lock manager lives by."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.protocol.ldlm import (
    OBJECT_EOF,
    TRANSITIONS,
    Bits,
    CallBack,
    EvictHolder,
    Extent,
    Granted,
    LockProtocolError,
    LockSpace,
    Mode,
    State,
    compatible,
    conflicts,
)

INO = ("ino", 7)
OBJ = ("obj", 9)
ALL = Extent(0, OBJECT_EOF)


def granted(actions: list) -> list[int]:
    return [a.lock.handle for a in actions if isinstance(a, Granted)]


def called(actions: list) -> list[int]:
    return [a.lock.handle for a in actions if isinstance(a, CallBack)]


def test_the_compatibility_matrix_is_lustres_and_symmetric() -> None:
    rows = {"NL": "++++++", "CR": "+++++-", "CW": "+++---", "PR": "++-+--", "PW": "++----",
            "EX": "+-----"}
    order = [Mode.NL, Mode.CR, Mode.CW, Mode.PR, Mode.PW, Mode.EX]
    for a in order:
        assert "".join("+" if compatible(a, b) else "-" for b in order) == rows[a.value]
        for b in order:
            assert compatible(a, b) == compatible(b, a)


def test_inodebits_conflict_only_where_the_bits_meet() -> None:
    assert conflicts(Mode.EX, Bits.UPDATE, Mode.PR, Bits.UPDATE | Bits.LOOKUP)
    assert not conflicts(Mode.EX, Bits.UPDATE, Mode.PR, Bits.LOOKUP)
    assert not conflicts(Mode.PR, Bits.UPDATE, Mode.PR, Bits.UPDATE)


def test_readers_share_a_writer_calls_them_back_and_gets_the_lock_when_they_cancel() -> None:
    ls = LockSpace()
    a, act_a = ls.enqueue("c1", INO, Mode.PR, Bits.LOOKUP | Bits.UPDATE, 0.0)
    b, act_b = ls.enqueue("c2", INO, Mode.PR, Bits.UPDATE, 0.0)
    assert granted(act_a) == [a.handle] and granted(act_b) == [b.handle]
    w, act_w = ls.enqueue("c3", INO, Mode.EX, Bits.UPDATE, 1.0)
    assert w.state is State.WAITING and sorted(called(act_w)) == sorted([a.handle, b.handle])
    assert all(x.by is w for x in act_w if isinstance(x, CallBack))
    assert ls.cancel(a.handle, 1.1) == []  # b is still in the way
    assert granted(ls.cancel(b.handle, 1.2)) == [w.handle]
    assert w.state is State.GRANTED


def test_a_reader_after_a_waiting_writer_waits_behind_it() -> None:
    ls = LockSpace()
    r1, _ = ls.enqueue("c1", INO, Mode.PR, Bits.UPDATE, 0.0)
    w, _ = ls.enqueue("c2", INO, Mode.EX, Bits.UPDATE, 0.0)
    r2, act = ls.enqueue("c3", INO, Mode.PR, Bits.UPDATE, 0.0)
    assert r2.state is State.WAITING and act == []  # r1 was called back already
    assert granted(ls.cancel(r1.handle, 1.0)) == [w.handle]
    assert r2.state is State.WAITING
    assert granted(ls.cancel(w.handle, 2.0)) == [r2.handle]


def test_a_lock_that_meets_nothing_waiting_passes_the_queue() -> None:
    ls = LockSpace()
    ls.enqueue("c1", INO, Mode.PR, Bits.UPDATE, 0.0)
    ls.enqueue("c2", INO, Mode.EX, Bits.UPDATE, 0.0)
    other, act = ls.enqueue("c3", INO, Mode.PR, Bits.LOOKUP, 0.0)
    assert granted(act) == [other.handle]


def test_a_holder_that_does_not_cancel_in_time_is_evicted_and_its_locks_go() -> None:
    ls = LockSpace(callback_timeout=5.0)
    a, _ = ls.enqueue("dead", INO, Mode.PR, Bits.UPDATE, 0.0)
    also, _ = ls.enqueue("dead", OBJ, Mode.PW, Extent(0, 10), 0.0)
    w, _ = ls.enqueue("live", INO, Mode.EX, Bits.UPDATE, 10.0)
    assert ls.next_deadline() == 15.0
    assert ls.tick(14.9) == []
    [evict] = ls.tick(15.0)
    assert isinstance(evict, EvictHolder) and evict.client == "dead"
    assert granted(ls.client_gone("dead", 15.1)) == [w.handle]
    assert ls.held_by("dead") == [] and also.state is State.CANCELLED
    assert ls.next_deadline() is None


def test_a_lock_cancelled_after_its_callback_evicts_nobody() -> None:
    ls = LockSpace(callback_timeout=5.0)
    a, _ = ls.enqueue("c1", INO, Mode.PR, Bits.UPDATE, 0.0)
    ls.enqueue("c2", INO, Mode.EX, Bits.UPDATE, 0.0)
    ls.cancel(a.handle, 1.0)
    assert ls.tick(100.0) == []


def test_extents_expand_to_the_gaps_between_conflicting_locks() -> None:
    ls = LockSpace()
    first, _ = ls.enqueue("c1", OBJ, Mode.PW, Extent(0, 4095), 0.0)
    assert first.policy == ALL  # alone: the whole object
    ls.cancel(first.handle, 0.0)
    left, _ = ls.enqueue("c1", OBJ, Mode.PW, Extent(0, 4095), 0.0)
    ls.cancel(left.handle, 0.0)
    held, _ = ls.enqueue("c1", OBJ, Mode.PW, Extent(1000, 1999), 0.0)
    assert held.policy == ALL
    # a reader of another range calls the writer back, and gets the widest range that
    # stays clear of the writer's *asked* extent once the writer has cancelled
    r, act = ls.enqueue("c2", OBJ, Mode.PR, Extent(5000, 5999), 0.0)
    assert called(act) == [held.handle] and r.state is State.WAITING
    ls.cancel(held.handle, 1.0)
    assert r.policy == ALL
    w, _ = ls.enqueue("c3", OBJ, Mode.PW, Extent(0, 99), 2.0)
    ls.cancel(r.handle, 2.5)
    assert w.policy.contains(Extent(0, 99))
    readers = [ls.enqueue("c4", OBJ, Mode.PR, Extent(200, 299), 3.0)[0]]
    assert readers[0].state is State.WAITING  # w covers everything: called back


def test_a_waiting_writer_limits_a_later_readers_expansion() -> None:
    ls = LockSpace()
    r1, _ = ls.enqueue("c1", OBJ, Mode.PR, Extent(0, 99), 0.0)  # expanded to all
    w, _ = ls.enqueue("c2", OBJ, Mode.PW, Extent(1000, 1999), 0.0)
    ls.cancel(r1.handle, 1.0)  # w granted, expanded to all
    ls.cancel(w.handle, 1.5)
    ls.enqueue("c3", OBJ, Mode.PW, Extent(1000, 1999), 2.0)  # granted, all
    r2, _ = ls.enqueue("c1", OBJ, Mode.PR, Extent(0, 99), 2.0)
    assert r2.state is State.WAITING


def test_a_contended_resource_grants_only_what_was_asked() -> None:
    ls = LockSpace(contended=3)
    for i in range(3):
        ls.enqueue(f"c{i}", OBJ, Mode.PR, Extent(i * 10, i * 10 + 9), 0.0)
    lk, _ = ls.enqueue("c9", OBJ, Mode.PR, Extent(100, 109), 0.0)
    assert lk.policy == Extent(100, 109)


def test_replayed_locks_are_granted_as_they_were() -> None:
    ls = LockSpace(first_handle=1000)
    a = ls.replay("c1", OBJ, Mode.PW, Extent(0, 4095))
    b = ls.replay("c2", OBJ, Mode.PW, Extent(4096, 8191))
    assert a.state is b.state is State.GRANTED and a.handle >= 1000
    assert a.policy == Extent(0, 4095)  # not expanded
    w, act = ls.enqueue("c3", OBJ, Mode.PW, Extent(100, 200), 1.0)
    assert called(act) == [a.handle]


def test_bad_input_is_refused_before_anything_changes() -> None:
    ls = LockSpace()
    ls.enqueue("c1", INO, Mode.PR, Bits.UPDATE, 0.0)
    with pytest.raises(LockProtocolError, match="two kinds"):
        ls.enqueue("c1", INO, Mode.PR, Extent(0, 1), 0.0)
    assert len(ls.locks) == 1
    with pytest.raises(LockProtocolError, match="bad extent"):
        Extent(5, 4)
    assert ls.cancel(12345, 0.0) == []
    lk, _ = ls.enqueue("c1", ("ino", 8), Mode.PR, Bits.UPDATE, 0.0)
    with pytest.raises(LockProtocolError, match="grant in state granted"):
        from shoal.protocol.ldlm import Event
        lk.move(Event.GRANT)


def test_every_state_has_a_row_in_the_table() -> None:
    assert set(TRANSITIONS) == set(State)
    assert TRANSITIONS[State.CANCELLED] == {}


# -- any sequence of events keeps the invariants ----------------------------------------------
CLIENTS = ["c0", "c1", "c2"]
MODES = [Mode.PR, Mode.PW, Mode.EX, Mode.CR, Mode.CW]
step = st.one_of(
    st.tuples(st.just("bits"), st.sampled_from(CLIENTS), st.sampled_from(MODES),
              st.integers(1, 0x3F)),
    st.tuples(st.just("extent"), st.sampled_from(CLIENTS), st.sampled_from(MODES),
              st.integers(0, 50), st.integers(0, 50)),
    st.tuples(st.just("cancel"), st.integers(0, 40)),
    st.tuples(st.just("tick"), st.floats(0, 10)),
    st.tuples(st.just("gone"), st.sampled_from(CLIENTS)),
)


def check(ls: LockSpace) -> None:
    for res in (INO, OBJ):
        gr, waiting = ls.queue(res)
        for i, x in enumerate(gr):
            assert x.state in (State.GRANTED, State.CALLED_BACK)
            for y in gr[i + 1:]:
                assert not x.conflicts_with(y), (x, y)
        for i, w in enumerate(waiting):
            assert w.state is State.WAITING
            # nothing lost: a waiter is blocked by a holder or an earlier waiter
            assert any(w.conflicts_with(x) for x in (*gr, *waiting[:i])), w
            # every holder in its way has been asked to let go
            for g in gr:
                if w.conflicts_with(g):
                    assert g.state is State.CALLED_BACK, (w, g)
        for x in gr:
            if isinstance(x.asked, Extent):
                assert x.policy.contains(x.asked)


def check_actions(actions: list) -> None:
    for i, a in enumerate(actions):
        if isinstance(a, Granted):
            # granted, and perhaps called back at once by a waiter behind it: the grant
            # goes out first, then the callback
            assert a.lock.state in (State.GRANTED, State.CALLED_BACK)
            assert not any(isinstance(b, CallBack) and b.lock is a.lock for b in actions[:i])


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=40))
def test_any_sequence_keeps_the_invariants(steps: list) -> None:
    ls = LockSpace(callback_timeout=3.0)
    now = 0.0
    handles: list[int] = []
    for s in steps:
        now += 0.5
        if s[0] == "bits":
            lk, actions = ls.enqueue(s[1], INO, s[2], Bits(s[3]), now)
            handles.append(lk.handle)
        elif s[0] == "extent":
            lo, hi = sorted((s[3], s[4]))
            lk, actions = ls.enqueue(s[1], OBJ, s[2], Extent(lo * 100, hi * 100 + 99), now)
            handles.append(lk.handle)
        elif s[0] == "cancel":
            actions = ls.cancel(handles[s[1] % len(handles)], now) if handles else []
        elif s[0] == "tick":
            now += s[1]
            actions = []
            for ev in ls.tick(now):
                check_actions(ls.client_gone(ev.client, now))
        else:
            actions = ls.client_gone(s[1], now)
        check_actions(actions)
        check(ls)
