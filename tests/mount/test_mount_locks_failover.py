"""Two mounts keeping names, attributes and listings under the MDT's locks through an MDS
failover (issue 20): each keeps its cache and replays its locks to the new server, and what
the other changes after the takeover is seen at once, as before it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from shoal.cluster.local import LocalCluster
from tests.mount.failover_helpers import Mounts
from tests.scenarios.harness import served_by, wait_for

pytestmark = pytest.mark.timeout(180)

MDS, BACKUP, TARGETS = "nid00060", "nid00061", ["MGS", "scratch-MDT0000"]


def _look(d: Path) -> tuple[list[str], int, int]:
    """What a mount shows of directory `d`: its names, f's mode, its parent's inode."""
    names = sorted(os.listdir(d))
    mode = stat.S_IMODE(os.stat(d / "f").st_mode) if "f" in names else -1
    return names, mode, os.stat(d / "..").st_ino


def test_two_mounts_see_each_others_changes_at_once_after_an_mds_failover(
        fresh_cluster: LocalCluster, mounts: Mounts) -> None:
    a, b = mounts.new(), mounts.new()
    da, db = a.path / "top" / "d", b.path / "top" / "d"
    da.mkdir(parents=True)
    (da / "f").write_bytes(b"data")
    (da / "sub").mkdir()
    up = (a.path / "top").stat().st_ino
    for _ in range(2):  # kept by both mounts and both kernels
        assert _look(da) == _look(db) == (["f", "sub"], 0o644, up)
        assert (db / "f").read_bytes() == b"data"

    assert fresh_cluster.kill_node(MDS)
    wait_for(f"{BACKUP} serving {TARGETS}", served_by(fresh_cluster, BACKUP, TARGETS))
    # what both kept is still true: served again (once the locks are replayed)
    assert _look(da) == _look(db) == (["f", "sub"], 0o644, up)
    assert (da / "sub" / "..").stat().st_ino == da.stat().st_ino

    # and every change after the takeover shows on the other mount at its next look
    os.chmod(db / "f", 0o600)
    assert _look(da) == (["f", "sub"], 0o600, up)
    (db / "g").write_bytes(b"new")
    assert _look(da)[0] == ["f", "g", "sub"]
    assert (da / "g").read_bytes() == b"new"
    os.rename(da / "f", da / "f2")
    assert _look(db)[:2] == (["f2", "g", "sub"], -1)
    os.rename(db / "sub", b.path / "top" / "moved")
    assert not (da / "sub").exists()
    assert (a.path / "top" / "moved" / "..").stat().st_ino == up
    os.unlink(da / "g")
    assert _look(db)[0] == ["f2"]
