"""Shared fixtures: real local clusters of real node processes on loopback addresses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from shoal.cluster.local import LocalCluster

# shared, noisy machines: a slow example is not a failure (speed is shown by benchmarks)
settings.register_profile("shoal", deadline=None)
settings.load_profile("shoal")

EXAMPLE = Path(__file__).resolve().parents[1] / "src" / "shoal" / "cluster" / "scratch.fs_defs"


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
    c.down()

