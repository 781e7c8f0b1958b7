"""`shoal bench io` on a real cluster, small: the figures are medians of the rounds shown."""

from __future__ import annotations

import json
import statistics

from tests.helpers import shoal


def test_bench_io_reports_medians_of_its_rounds(cluster):
    out = shoal("bench", "io", "--size", "32M", "--rounds", "3", "--json",
                cluster_dir=cluster.dir, timeout=300).stdout
    res = json.loads(out)
    assert res["size_bytes"] == 32 << 20 and res["rounds"] == 3
    rounds = res["per_round"]
    assert len(rounds) == 3
    for r in rounds:
        for key in ("write_MBps", "read_MBps", "local_write_MBps", "local_read_MBps",
                    "read_warm_MBps", "local_read_warm_MBps"):
            assert r[key] > 0, (key, r)
        assert abs(r["read_ratio"] - r["read_MBps"] / r["local_read_MBps"]) < 2e-3
        assert abs(r["write_ratio"] - r["write_MBps"] / r["local_write_MBps"]) < 2e-3
    for key in ("write_MBps", "read_MBps", "write_ratio", "read_ratio"):
        assert res[key] == statistics.median(r[key] for r in rounds), key
    # nothing of the benchmark's is left behind: the next run starts from the same place
    listing = shoal("fs", "ls", "/", cluster_dir=cluster.dir).stdout
    assert "bench-io" not in listing
    assert not list(cluster.dir.glob("bench-io-local-*"))


def test_bench_io_with_quota_streams_as_a_limited_user_and_lifts_the_limit_after(cluster):
    import asyncio

    from shoal.client import quota
    from shoal.client.client import Client
    from shoal.workload.bench_io import QUOTA_UID

    out = shoal("bench", "io", "--size", "32M", "--rounds", "1", "--quota", "--json",
                cluster_dir=cluster.dir, timeout=300).stdout
    r = json.loads(out)["per_round"][0]
    assert r["quota_write_MBps"] > 0 and r["quota_read_MBps"] > 0
    assert abs(r["quota_write_ratio"] - r["quota_write_MBps"] / r["write_MBps"]) < 2e-3
    assert r["quota_write_cpu_ratio"] > 0

    async def after() -> quota.QuotaReport:
        async with Client.from_cluster_dir(cluster.dir) as c:
            return await quota.get_quota(c, "u", QUOTA_UID)

    rep = asyncio.run(after())
    assert not rep.limits.limited  # lifted
    assert rep.kbytes == 0 and rep.inodes == 0  # and its file is gone
