"""The status page's pure parts (cli/web.py): failovers found in the event log, phases to
scale, and the live part's tables. The page in a real browser is in
tests/scenarios/test_web.py."""

from __future__ import annotations

from typing import Any

from shoal.cli.web import failovers, live_html, timeline_svg


def ev(t: float, kind: str, target: str, node: str = "nid00063", **data: Any) -> dict:
    return {"time": t, "node": node, "kind": kind, "target": target, "detail": "",
            "data": data}


EVENTS = [
    ev(100.0, "detect", "scratch-OST0000", failover=False),  # a first start: no failover
    ev(100.1, "take", "scratch-OST0000"),
    ev(200.0, "detect", "scratch-OST0000", failover=True, last_owner="nid00062"),
    ev(200.3, "fenced", "scratch-OST0000"),
    ev(200.31, "take", "scratch-OST0000"),
    ev(200.8, "start", "scratch-OST0000"),
    ev(200.81, "ir_notify", "scratch-OST0000", node="nid00060"),
    ev(201.2, "recovered", "scratch-OST0000"),
    ev(300.0, "detect", "scratch-OST0002", failover=True, last_owner="nid00062"),
]


def test_failovers_are_found_with_their_phases() -> None:
    done, going = failovers(list(reversed(EVENTS)))  # any order in, oldest first out
    assert done["target"] == "scratch-OST0000" and done["from"] == "nid00062"
    assert done["to"] == "nid00063" and done["at"] == 200.0
    assert abs(done["phases"]["recovered"] - 1.2) < 1e-9
    assert list(done["phases"]) == ["detect", "fenced", "take", "start", "ir_notify",
                                    "recovered"]
    assert going["target"] == "scratch-OST0002" and "recovered" not in going["phases"]


def test_phases_are_drawn_to_scale() -> None:
    done = failovers(EVENTS)[0]
    svg = timeline_svg(done, px_per_s=100.0)
    assert 'cx="10"' in svg and 'cx="130"' in svg  # detect at 0, recovered at 1.2 s
    assert "recovered +1.20s" in svg


def test_the_live_part_names_owners_and_escapes() -> None:
    st = {"targets": [{"name": "scratch-OST0000", "state": "UP", "owner": "nid00063",
                       "backup": ["nid00062"], "epoch": 3, "since": 201.0,
                       "health": "healthy", "reason": "<b>lost</b>"}],
          "nodes": [{"name": "nid00062", "address": "127.0.0.62", "state": "dead",
                     "up_since": None, "metrics": None}],
          "events": EVENTS}
    page = live_html(st, 202.0)
    assert "<td>nid00063</td>" in page and "&lt;b&gt;lost&lt;/b&gt;" in page
    assert "nid00062 &rarr; nid00063" in page and "1.20 s" in page and "under way" in page
