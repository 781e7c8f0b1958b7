"""The failover agent's pure rules (agent/policy.py): who takes a target that has no owner,
whether an automatic failover is allowed, and whether taking it is a failover at all.

Every agent evaluates these rules on the same store contents, so they must give every agent the
same answer: the hypothesis properties at the end pin that, and that the taker is always a
live node of the target's failover list.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from shoal.agent.policy import auto_failover_allowed, needs_failover, preferred_taker
from shoal.agent.records import STATES, StateRecord

GRACE = 4.0
LONG = 100.0  # booted long ago: past the boot grace
JUST = 0.5  # just started: within the boot grace
PAIR = ["oss0", "oss1"]
TRIO = ["a", "b", "c"]


def taker(nodes: list[str], alive: set[str], state: StateRecord | None, *,
          booted_for: float = LONG) -> str | None:
    return preferred_taker(nodes, alive, state, booted_for=booted_for, boot_grace=GRACE).taker


def st_rec(state: str, node: str, *, clean: bool = False, to: str = "") -> StateRecord:
    return StateRecord(state, node, since=1000.0, clean=clean, to=to)


# -- first start: no state record yet ------------------------------------------------------

def test_first_start_on_the_primary_when_it_is_alive() -> None:
    d = preferred_taker(PAIR, {"oss0", "oss1"}, None, booted_for=JUST, boot_grace=GRACE)
    assert d.taker == "oss0"
    assert "primary" in d.why
    # the primary alone, just started: no need to wait for anybody
    assert taker(PAIR, {"oss0"}, None, booted_for=0.0) == "oss0"


def test_first_start_backup_waits_for_the_primary_within_the_boot_grace() -> None:
    d = preferred_taker(PAIR, {"oss1"}, None, booted_for=JUST, boot_grace=GRACE)
    assert d.taker is None
    assert "oss0" in d.why  # says whom it waits for
    # just before the grace ends: still waiting
    assert taker(PAIR, {"oss1"}, None, booted_for=GRACE - 0.01) is None


def test_first_start_backup_takes_it_after_the_boot_grace() -> None:
    assert taker(PAIR, {"oss1"}, None, booted_for=GRACE) == "oss1"
    assert taker(PAIR, {"oss1"}, None, booted_for=LONG) == "oss1"
    # three nodes, primary absent: the first live backup in failover order
    assert taker(TRIO, {"b", "c"}, None) == "b"
    assert taker(TRIO, {"c"}, None) == "c"
    assert taker(TRIO, {"c", "b"}, None) == "b"  # order comes from `nodes`, not from `alive`


# -- after the whole cluster was stopped -----------------------------------------------------

def test_after_stopped_the_primary_takes_it_back_even_from_its_last_owner() -> None:
    # oss1 served it when the cluster went down: the restart puts it back on the primary
    stopped = st_rec("STOPPED", "oss1", clean=True)
    assert taker(PAIR, {"oss0", "oss1"}, stopped, booted_for=JUST) == "oss0"
    assert taker(PAIR, {"oss0", "oss1"}, stopped) == "oss0"


def test_after_stopped_the_backup_waits_for_the_primary_then_takes_it() -> None:
    stopped = st_rec("STOPPED", "oss0", clean=True)
    assert taker(PAIR, {"oss1"}, stopped, booted_for=JUST) is None
    assert taker(PAIR, {"oss1"}, stopped, booted_for=LONG) == "oss1"


# -- after a crash: the previous owner goes last (warm boot does not steal) ----------------

@pytest.mark.parametrize("state", ["UP", "RECOVERING", "FAILING_OVER", "DOWN"])
def test_after_a_crash_the_backup_takes_it(state: str) -> None:
    assert taker(PAIR, {"oss1"}, st_rec(state, "oss0")) == "oss1"


def test_warm_boot_the_restarted_primary_does_not_steal_its_target_back() -> None:
    crashed = st_rec("UP", "oss0")
    # the primary has rebooted and is alive again next to the backup: the backup takes it,
    # whichever of the two computes it, however long either has been up
    for booted_for in (0.0, JUST, LONG):
        assert taker(PAIR, {"oss0", "oss1"}, crashed, booted_for=booted_for) == "oss1"


def test_warm_boot_the_restarted_backup_does_not_steal_either() -> None:
    crashed = st_rec("UP", "oss1")  # oss1 served it (after a failover) and crashed
    for booted_for in (0.0, LONG):
        assert taker(PAIR, {"oss0", "oss1"}, crashed, booted_for=booted_for) == "oss0"


def test_the_previous_owner_takes_it_again_when_it_is_the_only_live_node() -> None:
    d = preferred_taker(PAIR, {"oss0"}, st_rec("UP", "oss0"), booted_for=LONG,
                        boot_grace=GRACE)
    assert d.taker == "oss0"
    assert "oss0" in d.why


def test_after_a_crash_three_nodes_follow_failover_order_with_the_owner_last() -> None:
    assert taker(TRIO, {"a", "b", "c"}, st_rec("UP", "a")) == "b"
    assert taker(TRIO, {"a", "b", "c"}, st_rec("UP", "b")) == "a"
    assert taker(TRIO, {"a", "c"}, st_rec("UP", "a")) == "c"
    assert taker(TRIO, {"b", "c"}, st_rec("UP", "a")) == "b"
    assert taker(TRIO, {"c"}, st_rec("UP", "b")) == "c"


def test_after_a_crash_a_just_started_backup_waits_for_the_primary() -> None:
    # the backup itself has just booted (the whole pair may be coming back): wait for oss0
    crashed = st_rec("UP", "oss1")
    assert taker(PAIR, {"oss1"}, crashed, booted_for=JUST) is None
    assert taker(PAIR, {"oss1"}, crashed, booted_for=LONG) == "oss1"


def test_after_a_crash_a_just_started_primary_waits_for_the_last_owner() -> None:
    # The whole cluster starts again (after a power cut, or `rig down` and `up`): oss1 had
    # served it and did not let go. The primary, up first, must not fence oss1 while it
    # boots (a power fence cannot tell a booting node from a dead one): it waits the grace.
    crashed = st_rec("UP", "oss1")
    d = preferred_taker(PAIR, {"oss0"}, crashed, booted_for=JUST, boot_grace=GRACE)
    assert d.taker is None and "oss1" in d.why
    assert taker(PAIR, {"oss0"}, crashed, booted_for=LONG) == "oss0"
    # a clean release leaves nobody to wait for
    released = st_rec("FAILING_OVER", "oss1", clean=True)
    assert taker(PAIR, {"oss0"}, released, booted_for=JUST) == "oss0"


def test_a_clean_release_without_a_handover_moves_it_off_the_releasing_node() -> None:
    # e.g. released because unhealthy: the releasing node is still alive but goes last
    released = st_rec("DOWN", "oss0", clean=True)
    assert taker(PAIR, {"oss0", "oss1"}, released) == "oss1"


# -- handover (`shoal failover|failback`) -------------------------------------------------

def test_handover_goes_to_the_named_node() -> None:
    d = preferred_taker(TRIO, {"a", "b", "c"}, st_rec("DOWN", "a", clean=True, to="c"),
                        booted_for=LONG, boot_grace=GRACE)
    assert d.taker == "c"  # not b, which failover order would pick
    assert "handover" in d.why
    # a failback to the primary, even though it is the "restarted" one
    assert taker(PAIR, {"oss0", "oss1"}, st_rec("DOWN", "oss1", clean=True, to="oss0")) \
        == "oss0"


def test_handover_is_not_delayed_by_the_boot_grace() -> None:
    handover = st_rec("DOWN", "oss0", clean=True, to="oss1")
    assert taker(PAIR, {"oss1"}, handover, booted_for=0.0) == "oss1"


def test_handover_to_a_dead_node_falls_back_to_failover_order() -> None:
    handover = st_rec("DOWN", "a", clean=True, to="c")
    assert taker(TRIO, {"a", "b"}, handover) == "b"
    assert taker(TRIO, {"a"}, handover) == "a"


def test_an_unclean_state_with_a_to_is_not_a_handover() -> None:
    # FAILING_OVER records `to` = who is taking it; if that node died, it is not its target
    failing = st_rec("FAILING_OVER", "a", to="c")
    assert taker(TRIO, {"b", "c"}, failing) == "b"


def test_handover_to_a_node_outside_the_failover_list_is_ignored() -> None:
    # `alive` is "the nodes with a heartbeat"; a handover record naming a node that cannot
    # reach this target's device (hand-edited, or another target's pair) must not be obeyed
    handover = st_rec("DOWN", "oss0", clean=True, to="mds0")
    assert taker(PAIR, {"oss0", "oss1", "mds0"}, handover) in PAIR


# -- nobody alive ------------------------------------------------------------------------

@pytest.mark.parametrize("state", [None, st_rec("UP", "oss0"), st_rec("STOPPED", "oss0", clean=True),
                                   st_rec("DOWN", "oss0", clean=True, to="oss1")])
def test_no_live_node_means_no_taker(state: StateRecord | None) -> None:
    for alive in (set(), {"mds0", "mds1"}):
        d = preferred_taker(PAIR, alive, state, booted_for=LONG, boot_grace=GRACE)
        assert d.taker is None
        assert "alive" in d.why


# -- auto_failover_allowed -----------------------------------------------------------------

def allowed(*, fs_default: bool = True, target_setting: str | None = None,
            node_settings: dict[str, str | None] | None = None,
            admin_state: str = "enabled") -> str | None:
    return auto_failover_allowed("scratch-OST0000", fs_default=fs_default,
                                 target_setting=target_setting,
                                 node_settings=node_settings or {"oss0": None, "oss1": None},
                                 admin_state=admin_state)


def test_auto_failover_allowed_by_default() -> None:
    assert allowed() is None
    assert allowed(node_settings={"oss0": "enabled", "oss1": None}) is None
    assert allowed(node_settings={}) is None


def test_auto_failover_fs_default_off() -> None:
    why = allowed(fs_default=False)
    assert why is not None and "scratch-OST0000" in why


def test_auto_failover_target_setting_overrides_the_fs_default() -> None:
    assert allowed(fs_default=False, target_setting="enabled") is None
    why = allowed(fs_default=True, target_setting="disabled")
    assert why is not None and "scratch-OST0000" in why


@pytest.mark.parametrize("node", ["oss0", "oss1"])
def test_auto_failover_disabled_on_either_node(node: str) -> None:
    settings: dict[str, str | None] = {"oss0": None, "oss1": None, node: "disabled"}
    why = allowed(node_settings=settings)
    assert why is not None and node in why
    # a node switched off wins over a target switched on
    assert allowed(target_setting="enabled", node_settings=settings) is not None


@pytest.mark.parametrize("admin", ["stopped", "disabled", "maintenance"])
def test_auto_failover_needs_the_admin_state_enabled(admin: str) -> None:
    why = allowed(target_setting="enabled", admin_state=admin)
    assert why is not None and admin in why


# -- needs_failover ----------------------------------------------------------------------

def test_needs_failover() -> None:
    assert needs_failover(None, "oss1") is False  # first start
    assert needs_failover(st_rec("DOWN", "oss0", clean=True, to="oss1"), "oss1") is False
    assert needs_failover(st_rec("STOPPED", "oss0", clean=True), "oss1") is False
    assert needs_failover(st_rec("UP", "oss0"), "oss0") is False  # same node restarted
    assert needs_failover(st_rec("UP", "oss0"), "oss1") is True  # the owner died
    assert needs_failover(st_rec("FAILING_OVER", "oss0", to="oss1"), "oss1") is True


# -- properties --------------------------------------------------------------------------

UNIVERSE = ["n0", "n1", "n2", "n3", "n4", "x9"]  # x9 is never in a failover list
node_lists = st.lists(st.sampled_from(UNIVERSE[:5]), min_size=1, max_size=4, unique=True)
records = st.none() | st.builds(
    StateRecord,
    state=st.sampled_from(STATES),
    node=st.sampled_from(UNIVERSE),
    since=st.floats(0, 1e9),
    clean=st.booleans(),
    to=st.sampled_from(["", *UNIVERSE]),
)
boot_times = st.floats(0.0, 3 * GRACE)


@given(nodes=node_lists, data=st.data(), state=records, b1=boot_times, b2=boot_times)
def test_property_taker_is_a_live_failover_node_and_agents_agree(
        nodes: list[str], data: st.DataObject, state: StateRecord | None,
        b1: float, b2: float) -> None:
    # what the agent passes: the nodes of the target's pair that have a heartbeat
    alive_list = data.draw(st.lists(st.sampled_from(nodes), unique=True))
    alive = set(alive_list)
    d1 = preferred_taker(nodes, alive, state, booted_for=b1, boot_grace=GRACE)
    if d1.taker is not None:
        assert d1.taker in alive and d1.taker in nodes
    # a function of its inputs: same answer again, and with the alive set built in another order
    again = preferred_taker(list(nodes), set(reversed(alive_list)), state,
                            booted_for=b1, boot_grace=GRACE)
    assert again == d1
    # booted_for only ever delays: two agents never name two different takers
    d2 = preferred_taker(nodes, alive, state, booted_for=b2, boot_grace=GRACE)
    if d1.taker is not None and d2.taker is not None:
        assert d1.taker == d2.taker
    # past the grace somebody always takes it if anybody is alive
    late = preferred_taker(nodes, alive, state, booted_for=GRACE, boot_grace=GRACE)
    assert (late.taker is None) == (not alive)
    # warm boot: after a crash the restarted previous owner never takes it from a live peer
    if (state is not None and state.state != "STOPPED" and not (state.clean and state.to in alive)
            and state.node in alive and len(alive) > 1):
        assert d1.taker != state.node


@given(nodes=node_lists, alive=st.sets(st.sampled_from(UNIVERSE)), state=records,
       booted_for=boot_times)
@example(nodes=["n0", "n1"], alive={"n0", "x9"}, state=StateRecord("DOWN", "n0", 0.0, clean=True,
                                                                       to="x9"), booted_for=LONG)
def test_property_taker_in_failover_list_for_any_alive_set(
        nodes: list[str], alive: set[str], state: StateRecord | None, booted_for: float) -> None:
    d = preferred_taker(nodes, alive, state, booted_for=booted_for, boot_grace=GRACE)
    if d.taker is not None:
        assert d.taker in alive and d.taker in nodes
