"""`shoal bench meta` on a real cluster, small: medians of the rounds, nothing left behind."""

from __future__ import annotations

import json
import statistics

from tests.helpers import shoal

_RATES = ("creates_per_s", "stats_per_s", "unlinks_per_s", "creates_per_s_1", "stats_per_s_1",
          "unlinks_per_s_1", "local_creates_per_s", "local_stats_per_s", "local_unlinks_per_s")


def test_bench_meta_reports_medians_of_its_rounds(cluster):
    before = shoal("fs", "ls", "/", cluster_dir=cluster.dir).stdout
    out = shoal("bench", "meta", "--files", "40", "--rounds", "2", "--json",
                cluster_dir=cluster.dir, timeout=300).stdout
    res = json.loads(out)
    assert res["rounds"] == 2
    rounds = res["per_round"]
    assert len(rounds) == 2
    for r in rounds:
        for key in _RATES:
            assert r[key] > 0, (key, r)
        assert abs(r["create_ratio"] - r["creates_per_s"] / r["local_creates_per_s"]) < 2e-3
    for key in _RATES:  # whole operations, even where two rounds' median falls between
        assert res[key] == round(statistics.median(r[key] for r in rounds)), key
        assert isinstance(res[key], int), key
    assert res["create_ratio"] == round(statistics.median(r["create_ratio"] for r in rounds), 3)
    # every round removed its directories and files: the namespace is as it was
    assert shoal("fs", "ls", "/", cluster_dir=cluster.dir).stdout == before
    assert not list(cluster.dir.glob("bench-meta-local-*"))


def test_bench_meta_refuses_zero_files(cluster):
    r = shoal("bench", "meta", "--files", "0", cluster_dir=cluster.dir, check=False)
    assert r.returncode != 0 and "--files" in r.stderr
