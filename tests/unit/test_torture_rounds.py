"""How a torture round is judged (workload/torture.py close_round, summarize): a failover
where none was due is false, and a fault that struck a node serving targets and moved none
is a missed failover (the rig's partition rounds healed the cut at once and so tested
nothing, and nobody noticed). Both make the round unclean."""

from __future__ import annotations

import json
from pathlib import Path

from shoal.workload.torture import Round, close_round, summarize


def judged(failovers: int, expected: bool, due: bool) -> Round:
    r = Round(1, "partition", "nid00062", 0.0, acked=10)
    close_round(r, failovers, expected, None, None, due=due)
    return r


def test_a_failover_where_none_was_expected_is_false() -> None:
    r = judged(2, expected=False, due=False)
    assert r.false_failovers == 2 and not r.clean


def test_a_struck_server_whose_targets_never_moved_is_a_missed_failover() -> None:
    r = judged(0, expected=True, due=True)
    assert r.missed_failovers == 1 and not r.clean
    assert judged(2, expected=True, due=True).clean
    # a host that served nothing when struck had nothing to move
    assert judged(0, expected=True, due=False).clean


def test_the_summary_and_the_history_count_missed_failovers(tmp_path: Path) -> None:
    history = tmp_path / "h.jsonl"
    r = Round(1, "partition", "nid00062", 0.0, acked=10)
    close_round(r, 0, True, history, None, due=True)
    assert json.loads(history.read_text())["missed_failovers"] == 1
    assert summarize([r, judged(1, True, True)])[0]["missed_failovers"] == 1


def _st(boot: str, token: int) -> dict[str, object]:
    return {"nodes": [{"name": "nid00062", "boot_id": boot},
                      {"name": "nid00063", "boot_id": "b63"}],
            "targets": [{"name": "scratch-OST0000", "owner": "nid00062", "token": token},
                        {"name": "scratch-OST0001", "owner": "nid00063", "token": 7}]}


def test_a_target_still_held_by_a_restarted_nodes_old_instance_has_not_settled() -> None:
    """A host powered back at once runs a new daemon while its old one's owner key lives
    until its lease runs out: the rig torture's settle had taken that for UP, and the
    takeover (or fence) that followed struck the next round."""
    from shoal.workload.torture_rig import _stale

    before = _st("old", 5)
    assert _stale(before, _st("new", 5)) == [("scratch-OST0000", "nid00062")]
    assert _stale(before, _st("new", 9)) == []  # its new instance took it again
    assert _stale(before, _st("old", 5)) == []  # the same instance: nothing restarted
    assert _stale(None, _st("new", 5)) == []


def test_a_target_is_settled_only_when_its_owner_says_it_serves_it() -> None:
    """The store's owner keys and node keys of a host powered off and back outlive it until
    their leases run out: the settle after a fault asks the nodes themselves, and every
    node must answer."""
    from shoal.workload.torture_rig import not_settled

    st = {"targets": [{"name": "OST0", "owner": "n62"}, {"name": "OST1", "owner": "n63"},
                      {"name": "OST2", "owner": ""}]}
    assert not_settled(st, {"n62": [], "n63": ["OST0", "OST1"]}) == [
        "OST0 not served by its owner n62", "OST2 not served by its owner (none)"]
    assert not_settled(st, {"n62": ["OST0", "OST1"], "n63": ["OST1"], "n64": None}) == [
        "OST2 not served by its owner (none)", "node n64 does not answer"]
    st["targets"].pop()
    assert not_settled(st, {"n62": ["OST0"], "n63": ["OST1"]}) == []
