"""agent/decide.py: the agent's next step about one target, from a snapshot and the time
(a fake clock: `now`, `wall` and `booted_for` are whatever the test says)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from shoal.agent.decide import (
    SICK_CHECKS,
    MarkDown,
    Reacquire,
    Release,
    Snapshot,
    Supersede,
    Take,
    Wait,
    decide,
)
from shoal.agent.records import HandoverRequest, OwnerRecord, StateRecord

A, B = "nid00062", "nid00063"  # the pair, A primary


def snap(**kw: object) -> Snapshot:
    base = Snapshot(
        target="scratch-OST0000", nodes=(A, B), me=B, boot_id="bbb", now=100.0, wall=1e9,
        booted_for=60.0, boot_grace=4.0, busy=False, hosted=False, owner=None, state=None,
        alive=frozenset({A, B}), primary_started_at=None, stopping=False, fs_down=False,
        admin_state="enabled", retry_at=0.0, store_ok=True, problem=None, sick=0,
        request=None, failback="off", failback_delay=30.0, auto_failover_blocked=None)
    return replace(base, **kw)  # type: ignore[arg-type]


def died(node: str = A) -> StateRecord:
    return StateRecord("UP", node, 0.0, epoch=3, boot_id="old")


def mine(node: str = B, boot_id: str = "bbb") -> OwnerRecord:
    return OwnerRecord(node, "x", boot_id, 7)


def test_the_backup_takes_a_dead_primarys_target() -> None:
    d = decide(snap(state=died(), alive=frozenset({B})))
    assert d.action == Take("last owner nid00062")


def test_nothing_while_a_step_runs_an_owner_exists_or_a_retry_is_due_later() -> None:
    assert isinstance(decide(snap(busy=True, state=died(), alive=frozenset({B}))).action, Wait)
    assert isinstance(decide(snap(owner=mine(A, "a1"))).action, Wait)
    assert isinstance(decide(snap(state=died(), alive=frozenset({B}), retry_at=100.5)).action, Wait)
    assert isinstance(decide(snap(state=died(), alive=frozenset({B}), now=100.5, retry_at=100.5)).action,
                      Take)


def test_a_starting_backup_waits_the_boot_grace_for_its_primary() -> None:
    """A node that has just started does not grab its partner's targets at once: the
    primary may be starting too (booted_for is the fake clock here)."""
    early = snap(state=None, alive=frozenset({B}), booted_for=1.0)
    assert decide(early).action == Wait(f"waiting 4s for the primary {A}")
    assert decide(replace(early, booted_for=4.0)).action == Take(f"primary {A} absent at boot")


def test_a_blocked_failover_marks_the_target_down_once() -> None:
    s = snap(state=died(), alive=frozenset({B}), auto_failover_blocked="disabled for it")
    assert decide(s).action == MarkDown(A, "disabled for it")
    down = StateRecord("DOWN", A, 0.0, reason="disabled for it")
    assert decide(replace(s, state=down)).action == Wait("disabled for it")
    # a clean handover is no failover: not blocked
    clean = StateRecord("FAILING_OVER", A, 0.0, clean=True, to=B)
    assert decide(replace(s, state=clean)).action == Take(f"handover to {B}")


def test_a_served_target_whose_owner_key_lapsed() -> None:
    s = snap(hosted=True, owner=None)
    assert decide(s).action == Reacquire()
    assert isinstance(decide(replace(s, store_ok=False)).action, Wait)  # failsafe
    assert isinstance(decide(replace(s, retry_at=101.0)).action, Wait)
    assert isinstance(decide(replace(s, stopping=True)).action, Wait)


def test_another_owner_or_another_incarnation_supersedes() -> None:
    assert decide(snap(hosted=True, owner=mine(A, "a1"))).action == \
        Supersede(f"{A} owns scratch-OST0000 now")
    assert isinstance(decide(snap(hosted=True, owner=mine(B, "older"))).action, Supersede)


def test_a_sick_service_is_let_go_after_consecutive_checks_if_someone_can_take_it() -> None:
    s = snap(hosted=True, owner=mine(), problem="device gone")
    sick = 0
    for _ in range(SICK_CHECKS - 1):
        d = decide(replace(s, sick=sick))
        assert isinstance(d.action, Wait)
        sick = d.sick
    d = decide(replace(s, sick=sick))
    assert d.action == Release("unhealthy: device gone", alert="device gone")
    alone = decide(replace(s, sick=sick, alive=frozenset({B})))
    assert isinstance(alone.action, Wait) and alone.sick == SICK_CHECKS
    assert decide(replace(s, sick=5, problem=None)).sick == 0  # healthy again: counted anew


def test_handover_request_and_file_system_down() -> None:
    s = snap(hosted=True, owner=mine())
    assert decide(replace(s, request=HandoverRequest(A, "admin", 0.0))).action == \
        Release("manual failover", to=A)
    assert decide(replace(s, request=HandoverRequest(B, "admin", 0.0))).action == \
        Wait("serving")
    assert decide(replace(s, fs_down=True)).action == \
        Release("file system stopped (shoal down)", final="STOPPED")


@pytest.mark.parametrize(("up_for", "moves"), [(29.0, False), (30.0, True)])
def test_automatic_failback_after_the_primary_has_been_up_long_enough(up_for: float,
                                                                      moves: bool) -> None:
    s = snap(hosted=True, owner=mine(), failback="auto", primary_started_at=1e9 - up_for)
    want = Release("automatic failback", to=A) if moves else Wait("serving")
    assert decide(s).action == want
    assert decide(replace(s, failback="off")).action == Wait("serving")
    assert decide(replace(s, me=A, owner=mine(A, "bbb"))).action == Wait("serving")
