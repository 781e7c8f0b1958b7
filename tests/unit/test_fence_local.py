"""Fencing with the local driver, against real process groups (`sh` with `sleep` children in
a new session), running and SIGSTOPped, killed and checked gone through /proc.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from shoal.fence import FenceFailed, LocalFenceDriver
from shoal.fence.local import record_instance
from shoal.fence.procs import group_members, live_group_members, read_stat, wait_group_gone
from tests.unit.fence_helpers import Group, alive, local_dir, write_pid


async def test_local_kills_whole_group_and_verifies(tmp_path: Path, groups: list[Group]):
    d = local_dir(tmp_path)
    g = Group()
    groups.append(g)
    assert len(g.pids) == 3
    write_pid(d, "nid00062", g.pgid)
    driver = LocalFenceDriver(d)
    assert await driver.status("nid00062") == "on"

    result = await driver.fence("nid00062")

    assert result.ok and result.node == "nid00062" and result.method == "local"
    assert f"process group {g.pgid}" in result.detail
    assert not [p for p in g.pids if alive(p)], "a member survived the fence"
    assert result.seconds < 0.5, f"fencing took {result.seconds:.3f}s (budget 0.2s)"
    assert await driver.status("nid00062") == "off"
    # fencing again is a success: the node is off
    again = await driver.fence("nid00062")
    assert again.ok and "already off" in again.detail


async def test_local_kills_a_stopped_group(tmp_path: Path, groups: list[Group]):
    d = local_dir(tmp_path)
    g = Group()
    groups.append(g)
    write_pid(d, "nid00063", g.pgid)
    os.killpg(g.pgid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while not all(st.stopped for st in live_group_members(g.pgid)):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    driver = LocalFenceDriver(d)
    assert await driver.status("nid00063") == "on"  # paused is not off: it can wake up

    result = await driver.fence("nid00063")

    assert result.ok
    assert not [p for p in g.pids if alive(p)]
    assert result.seconds < 0.5


async def test_local_kills_children_whose_leader_is_gone(tmp_path: Path, groups: list[Group]):
    d = local_dir(tmp_path)
    # the leader exits at once, its sleep child stays in the group
    proc = subprocess.Popen(["sh", "-c", "sleep 600 & echo $!"], start_new_session=True,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    proc.wait(timeout=5)
    try:
        assert alive(child) and read_stat(child).pgrp == proc.pid  # type: ignore[union-attr]
        write_pid(d, "nid00060", proc.pid)
        driver = LocalFenceDriver(d)
        assert await driver.status("nid00060") == "on"
        assert (await driver.fence("nid00060")).ok
        assert not alive(child)
    finally:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


async def test_local_already_off_cases(tmp_path: Path):
    d = local_dir(tmp_path)
    driver = LocalFenceDriver(d)
    # never started
    r = await driver.fence("nid00060")
    assert r.ok and "no pid file" in r.detail
    # started and exited (reaped)
    proc = subprocess.Popen(["true"], start_new_session=True)
    proc.wait()
    write_pid(d, "nid00061", proc.pid)
    r = await driver.fence("nid00061")
    assert r.ok and "no live process" in r.detail
    assert await driver.status("nid00061") == "off"


async def test_local_leaves_a_reused_pid_alone(tmp_path: Path, groups: list[Group]):
    """A pid file older than the process now holding that pid: the node died long ago and
    its pid went to someone else, who must not be killed."""
    d = local_dir(tmp_path)
    g = Group("sleep 600", members=1)
    groups.append(g)
    path = write_pid(d, "nid00062", g.pgid)
    old = time.time() - 100
    os.utime(path, (old, old))
    driver = LocalFenceDriver(d)
    r = await driver.fence("nid00062")
    assert r.ok and "started after" in r.detail
    assert g.proc.poll() is None and alive(g.pgid), "an unrelated process was killed"


async def test_local_unverifiable_is_a_failure(tmp_path: Path):
    d = local_dir(tmp_path)
    (d / "run" / "nid00062.pid").write_text("")  # a start interrupted while writing it
    driver = LocalFenceDriver(d)
    with pytest.raises(FenceFailed) as info:
        await driver.fence("nid00062")
    assert info.value.result is not None and not info.value.result.ok
    assert "not a pid" in str(info.value) and info.value.errno_name == "EIO"
    assert await driver.status("nid00062") == "unknown"
    # not a local cluster's directory: a missing pid file proves nothing
    nowhere = LocalFenceDriver(tmp_path / "elsewhere")
    with pytest.raises(FenceFailed, match="not a local cluster"):
        await nowhere.fence("nid00062")


async def test_wait_group_gone_times_out_on_a_live_group(groups: list[Group]):
    g = Group()
    groups.append(g)
    t0 = time.monotonic()
    survivors = await wait_group_gone(g.pgid, 0.1)
    assert time.monotonic() - t0 >= 0.1
    assert sorted(s.pid for s in survivors) == sorted(g.pids)
    os.killpg(g.pgid, signal.SIGKILL)
    assert await wait_group_gone(g.pgid, 2.0) == []
    # the leader is our child and not yet reaped: a zombie, still listed, counted gone
    assert g.pgid in [st.pid for st in group_members(g.pgid) if st.gone]


def _record(d: Path, node: str, boot_id: str, pid: int) -> None:
    (d / "run" / f"{node}.instance").write_text(f"{boot_id} {pid}\n")


async def test_a_fence_aimed_at_an_old_instance_spares_the_new_one(tmp_path: Path,
                                                                   groups: list[Group]):
    """Issue 18's first bug: the node was killed, started again, and fenced while its new
    process was still starting: the fence of the old instance killed the new one."""
    d = local_dir(tmp_path)
    new = Group()
    groups.append(new)
    write_pid(d, "nid00062", new.pgid)
    driver = LocalFenceDriver(d)
    # the new process has not written its record yet: the old one's is there, its pid dead
    dead = subprocess.Popen(["true"])
    dead.wait()
    _record(d, "nid00062", "oldboot", dead.pid)
    result = await driver.fence("nid00062", instance="oldboot")
    assert result.ok and "already off" in result.detail, result
    assert all(alive(p) for p in new.pids), "the new instance was killed"
    # the new process has written its own record
    _record(d, "nid00062", "newboot", new.pgid)
    result = await driver.fence("nid00062", instance="oldboot")
    assert result.ok and "instance oldboot is gone" in result.detail, result
    assert all(alive(p) for p in new.pids), "the new instance was killed"
    # the instance that holds the lease is the one that runs: it is killed
    result = await driver.fence("nid00062", instance="newboot")
    assert result.ok and f"process group {new.pgid} killed" in result.detail, result
    assert not [p for p in new.pids if alive(p)]


async def test_record_instance_writes_only_in_a_local_cluster(tmp_path: Path) -> None:
    record_instance(tmp_path, "n1", "abc")
    assert not (tmp_path / "run").exists()  # a daemon's state directory: nothing to do
    d = local_dir(tmp_path / "c")
    record_instance(d, "n1", "abc")
    assert (d / "run" / "n1.instance").read_text() == f"abc {os.getpid()}\n"
