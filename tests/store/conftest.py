"""Fixtures for the store suite: real SQLite files and real etcd processes on 127.0.0.1.

`store` is parametrized over both backends, so every test that takes it is a conformance
test. etcd runs from Debian's `etcd-server` (installed by `make venv`); the one-member cluster
is shared by the session (tests stay apart by key prefix, `ns`), clusters that tests kill or
restart are their own. Raft timings are shortened (heartbeat 50 ms, election 500 ms) so a
leader election after a kill takes well under a second.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from shoal.store import Store, open_store
from shoal.store.etcd_server import EtcdCluster, etcd_binary

FAST_RAFT = {"heartbeat_ms": 50, "election_ms": 500}


def _need_etcd() -> None:
    if etcd_binary() is None:
        pytest.skip("etcd not on PATH: apt-get install etcd-server (make venv does)")


def start_cluster(data_dir: Path, size: int) -> EtcdCluster:
    _need_etcd()
    return EtcdCluster(data_dir, size=size, **FAST_RAFT).start()


@pytest.fixture(scope="session")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One etcd member shared by the whole session; do not kill it."""
    cluster = start_cluster(tmp_path_factory.mktemp("etcd-shared"), 1)
    yield cluster
    cluster.stop()


@pytest.fixture
def etcd_solo(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A one-member cluster of this test's own, free to stop and restart."""
    cluster = start_cluster(tmp_path / "etcd", 1)
    yield cluster
    cluster.stop()


@pytest.fixture
def etcd_trio(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A three-member cluster of this test's own, free to kill members of."""
    cluster = start_cluster(tmp_path / "etcd", 3)
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite://{tmp_path / 'store.db'}"
    cluster: EtcdCluster = request.getfixturevalue("etcd_cluster")
    return cluster.url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = open_store(store_url)
    yield s
    await s.close()


@pytest.fixture
def ns() -> str:
    """A key prefix no other test uses (the etcd cluster is shared)."""
    return f"/test/{uuid.uuid4().hex[:12]}/"


@pytest.fixture
async def another_store(store_url: str) -> AsyncIterator[Callable[[], Store]]:
    """Open more stores on the same URL (another client of the same state)."""
    opened: list[Store] = []

    def make() -> Store:
        s = open_store(store_url)
        opened.append(s)
        return s

    yield make
    for s in opened:
        await s.close()
