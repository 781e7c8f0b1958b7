"""Shared fixtures: real local clusters of real node processes on loopback addresses."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from hypothesis import settings

from shoal.cluster.local import LocalCluster
from shoal.cluster.store_setup import stop_local_etcd
from shoal.errors import ConfigError
from tests.forkserver import ForkServer

# shared, noisy machines: a slow example is not a failure (speed is shown by benchmarks)
settings.register_profile("shoal", deadline=None)
settings.load_profile("shoal")

EXAMPLE = Path(__file__).resolve().parents[1] / "src" / "shoal" / "cluster" / "scratch.fs_defs"


@pytest.fixture(scope="session", autouse=True)
def node_fork_server() -> Iterator[None]:
    """Local clusters' nodes forked from a process that imported Shoal once (the fork server
    starts with the first node): a test's own cluster is up in 0.5 s instead of 1.2."""
    server = ForkServer(Path(tempfile.mkdtemp(prefix="shoal-fork-")) / "sock")
    LocalCluster.launcher = server.launch
    yield
    LocalCluster.launcher = None
    server.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One cluster for the session's read-mostly tests (each test uses its own paths)."""
    c = LocalCluster(tmp_path_factory.mktemp("cluster"))
    c.up(EXAMPLE, timeout=60)
    yield c
    c.down()


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster of its own, for tests that kill or restart nodes."""
    c = LocalCluster(tmp_path / "cluster")
    c.up(EXAMPLE, timeout=60)
    yield c
    discard(c)


def discard(c: LocalCluster) -> None:
    """A test's own cluster, gone with the test: every node powered off at once (a graceful
    stop cost each test 0.7 s and checks nothing), then the etcd members it started."""
    try:
        nodes = c.spec.nodes
    except ConfigError:  # the test broke the configuration: as `shoal down` would
        c.down()
        return
    procs = []
    for n in nodes:
        pid = c.pid(n)
        if pid is None:
            continue
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            procs.append(psutil.Process(pid))
            os.killpg(pid, signal.SIGKILL)
    psutil.wait_procs(procs, timeout=10)
    stop_local_etcd(c.dir)

