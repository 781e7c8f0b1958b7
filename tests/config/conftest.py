"""Fixtures for the configuration tests: the shared example, and real SQLite stores."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from shoal.store.base import Store

EXAMPLE = Path("/work/shared/examples/scratch.fs_defs")
if not EXAMPLE.exists():  # a checkout elsewhere: the example travels with the design docs
    EXAMPLE = Path(__file__).resolve().parents[3] / "shared" / "examples" / "scratch.fs_defs"

HAVE_SQLITE = importlib.util.find_spec("shoal.store.sqlite") is not None
needs_store = pytest.mark.skipif(
    not HAVE_SQLITE, reason="shoal.store.sqlite (the real SQLite store) has not landed yet"
)


@pytest.fixture
def example_path() -> Path:
    if not EXAMPLE.exists():
        pytest.skip(f"example fs_defs not found at {EXAMPLE}")
    return EXAMPLE


@pytest.fixture
def store_factory(tmp_path: Path) -> Callable[[], Store]:
    """Opens another SQLiteStore on the same file each call: one per 'administrator'."""
    if not HAVE_SQLITE:
        pytest.skip("shoal.store.sqlite (the real SQLite store) has not landed yet")
    from shoal.store.sqlite import SQLiteStore

    path = tmp_path / "store.db"
    return lambda: SQLiteStore(path)


@pytest.fixture
async def store(store_factory: Callable[[], Store]) -> AsyncIterator[Store]:
    s = store_factory()
    try:
        yield s
    finally:
        await s.close()
