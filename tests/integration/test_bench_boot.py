"""`shoal bench boot` with a few nodes: every op of the trace replayed by every node as the
trace says it ends, the lock cache's saving seen in MDT requests, a kill of the MDS halfway
through the cold run that no node notices, and nothing left behind."""

from __future__ import annotations

import json

from shoal.cluster.local import LocalCluster
from shoal.workload import boot_trace
from shoal.workload.boot_trace import make_plan
from tests.helpers import shoal

RUNS = ("cold", "warm", "alone_cold", "alone_warm")
FIGURES = {"clients", "wall_s", "mdt_requests_median", "mdt_requests_max", "mds_cpu_s",
           "clients_cpu_s", "errors", "ops", "client_s_median", "client_s_max", "samples"}


def _bench(cluster: LocalCluster, *args: str) -> dict:
    out = shoal("bench", "boot", *args, "--json", cluster_dir=cluster.dir, timeout=300).stdout
    return json.loads(out)


def _every_op_of_every_node(res: dict, clients: int) -> None:
    steps = len(make_plan(boot_trace.load(), "/x").steps)
    assert res["trace"]["ops"] == steps
    for run in RUNS:
        fig = res[run]
        n = 1 if run.startswith("alone") else clients
        assert set(fig) == FIGURES, run
        assert fig["clients"] == n
        assert fig["errors"] == 0, (run, fig["samples"])
        assert fig["ops"] == n * steps, run  # each one ended as the trace says it does
        assert fig["wall_s"] > 0
        assert fig["mdt_requests_max"] > 0 or "warm" in run


def test_storm_replays_the_trace_and_the_cache_saves_mdt_requests(cluster: LocalCluster):
    before = shoal("fs", "ls", "/", cluster_dir=cluster.dir).stdout
    res = _bench(cluster, "--clients", "4")
    assert set(res) >= {"clients", "locks", "failover", "trace", *RUNS, "warm_over_alone",
                        "mds_before", "mds_after"}
    assert res["locks"] is True and res["failover"] is False
    _every_op_of_every_node(res, 4)
    assert res["trace"]["fail_ops"] > 20  # the probes of absent files are replayed too
    # warm, a node has everything from its cache: names, attributes, absent names, the
    # link's target, and its opens and closes under OPEN locks (issue 20's goal: at most one
    # MDT request a node)
    assert res["warm"]["mdt_requests_max"] <= 1 < res["cold"]["mdt_requests_median"]
    assert res["alone_warm"]["mdt_requests_max"] <= 1 < res["alone_cold"]["mdt_requests_max"]
    assert res["mds_before"] == res["mds_after"]
    assert res["warm_over_alone"] > 0
    assert shoal("fs", "ls", "/", cluster_dir=cluster.dir).stdout == before  # root removed


def test_without_locks_every_walk_goes_to_the_mdt(cluster: LocalCluster):
    res = _bench(cluster, "--clients", "2", "--no-locks")
    assert res["locks"] is False
    _every_op_of_every_node(res, 2)
    # every component of every path is a lookup, warm as cold: as many requests each time,
    # several per op (with the cache, a warm node sends fewer than one per op)
    for run in RUNS:
        assert res[run]["mdt_requests_max"] == res["alone_cold"]["mdt_requests_max"], run
    assert res["warm"]["mdt_requests_median"] > 2 * res["trace"]["ops"]


def test_a_missing_cluster_is_a_clear_error(tmp_path):
    r = shoal("bench", "boot", "--clients", "2", cluster_dir=tmp_path / "none", check=False)
    assert r.returncode == 2
    assert "no cluster here" in r.stderr and "Traceback" not in r.stderr
