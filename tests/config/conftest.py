"""Fixtures for the configuration tests: the shared example, and real stores.

Store-backed tests run against the real SQLite store and, when `etcd` is installed, a real
etcd (marked `etcd`). Configuration keys live at fixed paths under /shoal/, so the etcd
backend gets a cluster of this module's own and is wiped between tests.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.store.base import ROOT, Store

EXAMPLE = Path("/work/shared/examples/scratch.fs_defs")
if not EXAMPLE.exists():  # a checkout elsewhere: the example travels with the design docs
    EXAMPLE = Path(__file__).resolve().parents[3] / "shared" / "examples" / "scratch.fs_defs"

HAVE_STORE = importlib.util.find_spec("shoal.store.sqlite") is not None
NO_STORE = "shoal.store.sqlite (the real SQLite store) has not landed yet"


@pytest.fixture
def example_path() -> Path:
    if not EXAMPLE.exists():
        pytest.skip(f"example fs_defs not found at {EXAMPLE}")
    return EXAMPLE


@pytest.fixture(scope="session")
def config_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from shoal.store.etcd_server import EtcdCluster, etcd_binary

    if etcd_binary() is None:
        pytest.skip("etcd not on PATH: apt-get install etcd-server (make venv does)")
    cluster = EtcdCluster(
        tmp_path_factory.mktemp("config-etcd"), size=1, heartbeat_ms=50, election_ms=500
    ).start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if not HAVE_STORE:
        pytest.skip(NO_STORE)
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("config_etcd").url)


@pytest.fixture
async def store_factory(store_url: str) -> AsyncIterator[Callable[[], Store]]:
    """Opens another client of the same store each call: one per 'administrator'."""
    from shoal.store import open_store

    opened: list[Store] = []

    def make() -> Store:
        s = open_store(store_url)
        opened.append(s)
        return s

    first = make()
    # the etcd cluster is shared by the session and our keys are fixed: start from empty
    kvs, _ = await first.range(f"{ROOT}/")
    for kv in kvs:
        await first.delete(kv.key)
    yield make
    for s in opened:
        await s.close()


@pytest.fixture
async def store(store_factory: Callable[[], Store]) -> Store:
    return store_factory()
