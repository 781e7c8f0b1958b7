"""`shoal torture` (issue 18) on a local cluster: a short campaign whose every round must be
clean, and whose checker must find the lost write it is handed on purpose (`lose`)."""

from __future__ import annotations

import json
from pathlib import Path

from shoal.cluster.local import LocalCluster
from shoal.workload.torture import run_torture, summarize
from tests.helpers import shoal


def test_a_short_campaign_is_clean_and_finds_the_planted_loss(cl: LocalCluster,
                                                              tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    rounds = run_torture(cl.dir, faults=10, mix=["blip", "drop", "lose", "kill"], seed=7,
                         clients=0, history=history)
    assert [r.index for r in rounds] == list(range(1, 11))
    assert all(r.clean for r in rounds), [r for r in rounds if not r.clean]
    kinds = {r.kind for r in rounds}
    assert {"lose", "kill"} <= kinds, kinds  # the seed draws both
    for r in rounds:
        if r.kind == "lose":
            assert r.lost == r.planted == 1, r  # the checker saw the write it was robbed of
        else:
            assert r.lost == 0 and r.acked > 0, r
        if r.kind == "blip" or r.kind == "drop":
            assert r.false_failovers == 0 == r.failovers, r
    assert any(r.failovers for r in rounds if r.kind == "kill")
    lines = [json.loads(line) for line in history.read_text().splitlines()]
    assert lines[0]["campaign"]["seed"] == 7 and len(lines) == 11
    assert [ln["kind"] for ln in lines[1:]] == [r.kind for r in rounds]  # a replayable record
    rows = {row["fault"]: row for row in summarize(rounds)}
    assert rows["lose"]["planted_found"] == f"{rows['lose']['count']}/{rows['lose']['count']}"
    # the command: the same, as JSON; a fault it does not know is a usage error
    out = json.loads(shoal("torture", "--faults", "1", "--mix", "lose", "--clients", "0",
                           "--json", cluster_dir=cl.dir).stdout)
    assert out["clean"] is True and out["rounds"][0]["lost"] == 1
    bad = shoal("torture", "--mix", "lose,explode", cluster_dir=cl.dir, check=False)
    assert bad.returncode == 2 and "unknown fault explode" in bad.stderr
