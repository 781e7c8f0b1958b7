"""O_APPEND is atomic between processes on one mount and between mounts (issue 19): the
shell's `>>` opens, appends one line and closes, over and over, from two loops at once.

Before the MDT decided append offsets, 356-389 of 400 lines survived on one mount: each open
took the end of file from the MDT, and two writers appended at the same offset."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from shoal.client.sync import SyncClient
from shoal.cluster.local import LocalCluster
from tests.mount.failover_helpers import Mounts
from tests.scenarios.harness import served_by, wait_for

if TYPE_CHECKING:
    from tests.mount.conftest import Mount

LINES = 200
FAILOVER_LINES = 800  # appending goes on for several seconds, through the failover
OSS_A, OSS_B = "nid00062", "nid00063"
A_OSTS = ["scratch-OST0000", "scratch-OST0002"]


def appenders(*targets: tuple[str, Path], lines: int = LINES) -> None:
    """One `>>` loop per (tag, file), all at once."""
    loops = " & ".join(
        f'(for i in $(seq {lines}); do echo {tag}$i >> "{path}"; done)' for tag, path in targets)
    subprocess.run(["bash", "-c", f"{loops} & wait"], check=True, timeout=300)


def expected(*tags: str, lines: int = LINES) -> list[str]:
    return sorted(f"{tag}{i}" for tag in tags for i in range(1, lines + 1))


def test_two_processes_appending_on_one_mount_lose_nothing(work: Path) -> None:
    log = work / "a"
    appenders(("A", log), ("B", log))
    assert sorted(log.read_text().splitlines()) == expected("A", "B")


def test_two_mounts_appending_to_one_file_lose_nothing(work: Path, mnt: Mount, mnt2: Mount,
                                                       lib: SyncClient) -> None:
    rel = work.relative_to(mnt.path)
    appenders(("A", work / "log"), ("B", mnt2.path / rel / "log"))
    for path in (work / "log", mnt2.path / rel / "log"):
        assert sorted(path.read_text().splitlines()) == expected("A", "B")
    assert sorted(lib.read_file(f"/{rel}/log").decode().splitlines()) == expected("A", "B")


def test_an_append_through_a_readable_descriptor_reads_back_where_it_landed(
        work: Path) -> None:
    """O_APPEND opens bypass the page cache: the kernel would cache an appended write at the
    end of file as this mount last knew it, not where the MDT put it."""
    p = work / "rw"
    p.write_bytes(b"0123")
    other = os.open(p, os.O_WRONLY | os.O_APPEND)
    fd = os.open(p, os.O_RDWR | os.O_APPEND)
    try:
        os.write(other, b"4567")
        os.write(fd, b"89")
        assert os.pread(fd, 10, 0) == b"0123456789"
    finally:
        os.close(fd)
        os.close(other)
    assert p.read_bytes() == b"0123456789"


@pytest.mark.timeout(180)
def test_appends_from_two_processes_and_two_mounts_through_an_oss_kill(
        fresh_cluster: LocalCluster, mounts: Mounts) -> None:
    """Every line exactly once, although the OSS holding the file dies mid-way."""
    a, b = mounts.new(), mounts.new()
    (a.path / "d").mkdir()
    log_a, log_b = a.path / "d" / "log", b.path / "d" / "log"
    log_a.write_bytes(b"")
    done = threading.Event()

    def run() -> None:
        try:
            appenders(("A", log_a), ("B", log_a), ("C", log_b), lines=FAILOVER_LINES)
        finally:
            done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(0.5)
    assert not done.is_set(), "the appenders finished before the kill"
    assert fresh_cluster.kill_node(OSS_A)
    wait_for("OSS_B serving the OSTs", served_by(fresh_cluster, OSS_B, A_OSTS), timeout=40)
    t.join(240)
    assert done.is_set()
    for path in (log_a, log_b):
        assert sorted(path.read_text().splitlines()) == expected("A", "B", "C",
                                                                 lines=FAILOVER_LINES)
