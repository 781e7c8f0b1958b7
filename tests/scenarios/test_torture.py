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
    rounds = run_torture(cl.dir, faults=4, mix=["blip", "drop", "lose", "kill"], seed=44,
                         clients=0, history=history)
    assert [r.index for r in rounds] == list(range(1, 5))
    assert all(r.clean for r in rounds), [r for r in rounds if not r.clean]
    kinds = {r.kind for r in rounds}
    assert kinds == {"blip", "drop", "lose", "kill"}, kinds  # the seed draws each once
    for r in rounds:
        if r.kind == "lose":
            assert r.lost == r.planted == 1, r  # the checker saw the write it was robbed of
        else:
            assert r.lost == 0 and r.acked > 0, r
        if r.kind == "blip" or r.kind == "drop":
            assert r.false_failovers == 0 == r.failovers, r
    assert any(r.failovers for r in rounds if r.kind == "kill")
    lines = [json.loads(line) for line in history.read_text().splitlines()]
    assert lines[0]["campaign"]["seed"] == 44 and len(lines) == 5
    assert [ln["kind"] for ln in lines[1:]] == [r.kind for r in rounds]  # a replayable record
    rows = {row["fault"]: row for row in summarize(rounds)}
    assert rows["lose"]["planted_found"] == f"{rows['lose']['count']}/{rows['lose']['count']}"
    # the command: the same, as JSON; a fault it does not know is a usage error
    out = json.loads(shoal("torture", "--faults", "1", "--mix", "lose", "--clients", "0",
                           "--json", cluster_dir=cl.dir).stdout)
    assert out["clean"] is True and out["rounds"][0]["lost"] == 1
    bad = shoal("torture", "--mix", "lose,explode", cluster_dir=cl.dir, check=False)
    assert bad.returncode == 2 and "unknown fault explode" in bad.stderr


def test_a_stopped_campaign_resumes_at_the_round_after_its_last(cl: LocalCluster,
                                                                 tmp_path: Path) -> None:
    # an unstopped two-round campaign, and the same one stopped after its first round
    whole = tmp_path / "whole.jsonl"
    rounds = run_torture(cl.dir, faults=2, mix=["blip", "lose"], seed=11, clients=0,
                         history=whole)
    first, *_ = whole.read_text().splitlines(keepends=True)
    stopped = tmp_path / "stopped.jsonl"
    stopped.write_text(first + json.dumps(rounds[0].__dict__) + "\n")
    out = json.loads(shoal("torture", "--history", str(stopped), "--resume", "--json",
                           cluster_dir=cl.dir).stdout)
    # the table covers the whole campaign; only round 2 ran, and drew what it drew unstopped
    assert [r["index"] for r in out["rounds"]] == [1, 2] and out["clean"] is True
    lines = [json.loads(line) for line in stopped.read_text().splitlines()]
    assert [next(iter(ln)) if "index" not in ln else ln["index"] for ln in lines] == \
        ["campaign", 1, "resumed", 2]
    assert (lines[3]["kind"], lines[3]["node"]) == (rounds[1].kind, rounds[1].node)
    again = shoal("torture", "--history", str(stopped), "--resume", cluster_dir=cl.dir,
                  check=False)
    assert again.returncode != 0 and "is over (2 of 2 rounds)" in again.stderr
