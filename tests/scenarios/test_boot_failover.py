"""`shoal bench boot --failover` with a few nodes: the MDS killed halfway through the cold
run, on a cluster of the test's own, and no node sees an error."""

from __future__ import annotations

from shoal.cluster.local import LocalCluster
from tests.integration.test_bench_boot import _bench, _every_op_of_every_node


def test_mds_killed_in_the_cold_run_fails_no_node(fresh_cluster: LocalCluster):
    res = _bench(fresh_cluster, "--clients", "4", "--failover")
    assert res["failover"] is True
    _every_op_of_every_node(res, 4)
    assert res["killed"]["node"] == res["mds_before"]
    assert res["mds_after"] not in (None, res["mds_before"])
    # while ops were still to come: no node passes the end of the cold run without the bench
    assert 0 < res["killed"]["at_ops"] < 4 * res["trace"]["ops"]
    assert res["killed"]["at_s"] < res["cold"]["wall_s"]
