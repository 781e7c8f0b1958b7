"""Fixtures shared by unit test files: `groups`, the fence tests' node stand-ins."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.fence_helpers import Group


@pytest.fixture
def groups() -> Iterator[list[Group]]:
    """Process groups a test made (append them), killed at its end."""
    made: list[Group] = []
    yield made
    for g in made:
        g.cleanup()
