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

from shoal.agent.records import Event
from shoal.cluster.local import LocalCluster
from shoal.workload.failover_phases import PHASES, phases

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


def test_phases_tile_the_failover_even_when_ir_precedes_start() -> None:
    def ev(t: float, kind: str, **data: object) -> Event:
        return Event(100.0 + t, "nid00063", kind, "scratch-OST0000", "", dict(data))

    events = [ev(-0.5, "detect"),  # a failover before the kill is not this one
              ev(1.5, "detect"), ev(1.6, "fence_start"), ev(1.62, "fenced"),
              ev(1.63, "take"), ev(2.14, "ir_notify", clients=7),  # the MGS beat `start`
              ev(2.15, "start", take_s=0.5, mmp_s=0.49), ev(2.9, "recovered")]
    ph = phases(events, kill=100.0)
    assert ph["detect_s"] == 1.5 and ph["fence_s"] == 0.12 and ph["take_s"] == 0.5
    assert ph["start_s"] == 0.03 and ph["notify_s"] == 0.0 and ph["recover_s"] == 0.75
    assert ph["failover_s"] == 2.9 and ph["mmp_s"] == 0.49 and ph["ir_told"] == 7
    # without a fence (the old owner said it let go) the later phases still add up
    ph = phases([e for e in events if e.kind != "fenced"], kill=100.0)
    assert ph["fence_s"] is None and ph["take_s"] is None
    assert ph["start_s"] == 0.65 and ph["failover_s"] == 2.9
