"""`shoal bench mount` on a real cluster, small: three sides per round, medians reported, the
temporary mount directory gone afterwards."""

from __future__ import annotations

import json
import statistics

from shoal.cluster.local import LocalCluster
from tests.helpers import shoal


def test_bench_mount_reports_medians_and_leaves_no_mount(cluster: LocalCluster) -> None:
    res = json.loads(shoal("bench", "mount", "--size", "32M", "--rounds", "3", "--json",
                           cluster_dir=cluster.dir, timeout=300).stdout)
    rounds = res["per_round"]
    assert res["rounds"] == 3 and len(rounds) == 3
    for r in rounds:
        for side in ("mount", "lib", "local"):
            assert r[f"{side}_write_MBps"] > 0 and r[f"{side}_read_MBps"] > 0
        assert abs(r["mount_read_ratio"] - r["mount_read_MBps"] / r["lib_read_MBps"]) < 2e-3
    for key in ("mount_read_MBps", "mount_read_ratio", "mount_write_ratio"):
        assert res[key] == statistics.median(r[key] for r in rounds), key
    left = list(cluster.dir.glob("bench-mount-*"))
    assert not left, left
