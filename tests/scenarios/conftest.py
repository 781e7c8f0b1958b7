"""Scenario fixtures: each scenario gets a cluster of its own (it kills nodes)."""

from __future__ import annotations

import pytest

from shoal.cluster.local import LocalCluster


@pytest.fixture
def cl(fresh_cluster: LocalCluster) -> LocalCluster:
    return fresh_cluster
