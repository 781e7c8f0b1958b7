"""`shoal load` ends within its bound whatever the cluster does, and takes its workers with
it (issue 18's fifth bug: a 25 s load of a stopped cluster still ran 55 minutes later, and
SIGTERM left its two workers running)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import psutil

from shoal.cluster.local import LocalCluster
from shoal.workload.load import KILL_MARGIN, LoadSummary, run_load
from tests.scenarios.harness import wait_for


def test_a_load_of_a_cluster_stopped_under_it_gives_up_at_its_bound(
        fresh_cluster: LocalCluster) -> None:
    out: dict[str, LoadSummary] = {}
    t0 = time.monotonic()
    t = threading.Thread(target=lambda: out.setdefault("s", run_load(
        fresh_cluster.dir, clients=2, duration=3.0, grace=3.0, procs=1)), daemon=True)
    t.start()
    time.sleep(1.5)
    fresh_cluster.down()
    t.join(3.0 + 3.0 + KILL_MARGIN + 20)
    took = time.monotonic() - t0
    assert not t.is_alive(), "the load did not end"
    s = out["s"]
    assert s.unfinished >= 1 and not s.ok, s
    assert any("gave up" in e or "did not report" in e for e in s.error_samples), s
    assert took < 3.0 + 3.0 + KILL_MARGIN + 10, took
    assert not [p for p in psutil.Process().children(recursive=True) if _load_worker(p)]


def _load_worker(p: psutil.Process) -> bool:
    try:
        return "spawn_main" in " ".join(p.cmdline())  # not the resource tracker
    except psutil.Error:  # gone, or a zombie of the stopped cluster's nodes
        return False


def test_sigterm_ends_shoal_load_and_its_workers(cluster: LocalCluster) -> None:
    env = {**os.environ, "SHOAL_DIR": str(cluster.dir)}
    proc = subprocess.Popen([sys.executable, "-m", "shoal", "load", "--clients", "2",
                             "--duration", "60", "--procs", "2", "--json"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        parent = psutil.Process(proc.pid)
        wait_for("two load workers", lambda: len(parent.children()) >= 2, timeout=30)
        workers = parent.children()
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) != 0
        gone, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, alive
    finally:
        proc.kill()
