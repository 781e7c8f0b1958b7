"""`shoal bench failover` with a few clients: the report is whole and self-consistent.

No timing thresholds: speed is what the benchmark reports, not what a test on a shared
machine can promise.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.cluster.local import LocalCluster
from shoal.workload.bench_failover import PHASES

KEYS = ("clients", "ir", "detect_s", "fence_s", "take_s", "start_s", "notify_s", "recover_s",
        "total_s", "lost")


def run_bench(tmp_path: Path, *extra: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-m", "shoal", "bench", "failover", "--clients", "4", "--procs", "2",
         "--json", "--dir", str(tmp_path / "cluster"), *extra],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    out: dict[str, object] = json.loads(proc.stdout)
    return out


@pytest.mark.parametrize("noir", [False, True], ids=["ir", "noir"])
def test_bench_failover_reports_consistent_phases(tmp_path: Path, noir: bool) -> None:
    res = run_bench(tmp_path, *(["--noir"] if noir else []))
    for k in KEYS:
        assert k in res, k
    assert res["clients"] == 4 and res["ir"] is (not noir)
    assert res["lost"] == 0 and res["corrupt"] == 0, res["samples"]
    assert res["resumed"] == 4 and res["acked_writes"] > 0
    times = {k: res[k] for k in (*PHASES, "failover_s", "total_s")}
    for k, v in times.items():
        assert isinstance(v, float | int) and v >= 0, (k, v)
    # the phases tile the failover: kill -> detect -> ... -> recovered
    assert abs(sum(times[k] for k in PHASES) - times["failover_s"]) < 0.02, times
    assert times["detect_s"] < times["failover_s"]  # detected before recovered
    assert times["total_s"] >= times["detect_s"]
    # a client cannot complete I/O on the new instance before it has started
    assert times["total_s"] >= sum(times[k] for k in PHASES[:4])
    cluster = LocalCluster(tmp_path / "cluster")
    assert [n for n in cluster.spec.nodes if cluster.pid(n) is not None] == [], \
        "the bench left nodes running"
