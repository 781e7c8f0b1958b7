"""workload/torture_history.py: a campaign's history file read back for `--resume`, which
refuses what it cannot go on with (a bad line named by file:line, a campaign that is over or
ran on other code, a second writer), and each round's draws depend on the seed and the
round's number only, so a resumed campaign draws what an unstopped one would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shoal.errors import Busy, InvalidArgument
from shoal.workload.torture import Round
from shoal.workload.torture_history import (
    as_rounds,
    begin,
    code_version,
    holding,
    read_campaign,
    resume,
    round_rng,
)


def write(path: Path, *entries: object) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return path


def campaign(faults: int = 3, **extra: object) -> dict[str, object]:
    return {"campaign": {"faults": faults, "mix": ["blip"], "seed": 5, "clients": 0,
                         "version": code_version()} | extra}


def round_line(i: int) -> dict[str, object]:
    return {"index": i, "kind": "blip", "node": "n1", "started": 1.0, "acked": 9,
            "some_later_field": 1}


def test_the_last_campaign_and_its_rounds_are_read_back(tmp_path: Path) -> None:
    h = write(tmp_path / "h", campaign(seed=1), round_line(1), campaign(), round_line(1),
              {"resumed": {"at": 2}}, round_line(2))
    c = read_campaign(h)
    assert c.settings["seed"] == 5 and c.done == 2
    rounds = as_rounds(c.rounds, Round)
    assert [r.index for r in rounds] == [1, 2] and rounds[0].acked == 9 and rounds[0].clean


def test_resume_marks_the_file_and_refuses_what_it_cannot_go_on_with(tmp_path: Path) -> None:
    h = write(tmp_path / "h", campaign(), round_line(1))
    assert resume(h).done == 1
    assert json.loads(h.read_text().splitlines()[-1])["resumed"]["at"] == 2
    over = write(tmp_path / "over", campaign(faults=1), round_line(1))
    with pytest.raises(InvalidArgument, match="is over"):
        resume(over)
    other = write(tmp_path / "other", campaign(version="0.0.1+abc"), round_line(1))
    with pytest.raises(InvalidArgument, match="ran on 0.0.1"):
        resume(other)
    before = other.read_text()
    with pytest.raises(InvalidArgument, match="ran on 0.0.1"):
        resume(other)
    assert other.read_text() == before  # a refused resume writes nothing


@pytest.mark.parametrize(("lines", "why"), [
    (["{not json"], "h:1: not a line of JSON"),
    ([json.dumps(round_line(1))], "h:1: a round before any campaign line"),
    ([json.dumps(campaign()), json.dumps(round_line(2))], "h:2: round 2 where round 1"),
    ([json.dumps(campaign()), "[1, 2]"], "h:2: not a campaign"),
    ([json.dumps({"campaign": {"faults": 3}})], "lacks mix, seed, clients"),
    ([""], "holds no campaign"),
])
def test_a_bad_history_is_named_by_line(tmp_path: Path, lines: list[str], why: str) -> None:
    h = tmp_path / "h"
    h.write_text("\n".join(lines) + "\n")
    with pytest.raises(InvalidArgument, match=why):
        resume(h)
    with pytest.raises(InvalidArgument, match="cannot read"):
        resume(tmp_path / "missing")


def test_a_second_writer_is_refused_while_the_first_holds_the_file(tmp_path: Path) -> None:
    h = tmp_path / "h"
    with holding(h):
        begin(h, {"faults": 1, "mix": ["blip"], "seed": 1, "clients": 0})
        with pytest.raises(Busy, match="another shoal torture"):
            with holding(h):
                pass
    with holding(h):  # free again once the first is done
        assert read_campaign(h).settings["version"] == code_version()


def test_a_rounds_draws_depend_on_the_seed_and_its_number_only() -> None:
    mix = ["a", "b", "c", "d", "e"]
    unstopped = [round_rng(9, i).choice(mix) for i in range(1, 41)]
    resumed = unstopped[:17] + [round_rng(9, i).choice(mix) for i in range(18, 41)]
    assert resumed == unstopped
    assert unstopped != [round_rng(10, i).choice(mix) for i in range(1, 41)]
    assert len(set(unstopped)) == len(mix)
