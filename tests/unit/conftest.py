"""Fixtures shared by unit test files: `groups`, the fence tests' node stand-ins; `ost` and
`cl`, a real OST on tmp_path and a client that calls it in process; `mdt` and `c`, the same
for an MDT."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shoal.target.mdt import MDT
from shoal.target.ost import OST
from tests.unit import mdt_client
from tests.unit.fence_helpers import Group
from tests.unit.ost_client import NAME, Client


@pytest.fixture
def groups() -> Iterator[list[Group]]:
    """Process groups a test made (append them), killed at its end."""
    made: list[Group] = []
    yield made
    for g in made:
        g.cleanup()


@pytest.fixture
async def ost(tmp_path: Path) -> AsyncIterator[OST]:
    # a long interval: tests decide when commits happen
    o = OST(NAME, tmp_path / "ost0", fs="scratch", commit_interval=3600, index=0)
    o.format()
    await o.start()
    yield o
    await o.stop()


@pytest.fixture
def cl(ost: OST) -> Client:
    return Client(ost)


@pytest.fixture
def deferred_reads(ost: OST) -> None:
    """The `ost` answers large reads as a node's does (worker threads, sendfile): use with
    pytest.mark.usefixtures."""
    ost.deferred_reads = True


@pytest.fixture
def mdt(tmp_path: Path) -> Iterator[MDT]:
    t = mdt_client.open_mdt(tmp_path / "mdt0")
    yield t
    t._close_db()


@pytest.fixture
def c(mdt: MDT) -> mdt_client.Client:
    return mdt_client.Client(mdt)
