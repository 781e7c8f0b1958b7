"""Rigs of their own: up/down leaves nothing, down after the rig's maker was killed, a failed
up undoes itself, the CLI's errors, and the fs_defs the rig writes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from shoal.config.fs_defs import parse_fs_defs_text
from shoal.errors import Exists, TimedOut
from shoal.rig import Rig
from shoal.rig import etcd as rig_etcd
from shoal.rig.devices import render_fs_defs
from shoal.rig.state import load
from tests.rig.rig_helpers import leftovers, needs_rig, root_network

# Makes a small rig, starts a process in a host, then dies by SIGKILL: no cleanup at all.
CRASHER = """
import os, signal, sys
from shoal.rig import Rig
r = Rig(sys.argv[1])
r.up(servers=1, clients=1, osts=1, image_mib=16)
r.spawn("client1", "sleeper", ["sleep", "1000"])
os.kill(os.getpid(), signal.SIGKILL)
"""


@needs_rig
def test_up_down_leaves_nothing(tmp_path: Path) -> None:
    before = root_network()
    rig = Rig(tmp_path / "rig")
    rig.up(servers=3, clients=1, osts=1, image_mib=16)
    made = leftovers(rig.dir, rig.prefix)
    assert sum(x.startswith("netns") for x in made) == 5  # 4 hosts and the bridge
    assert sum(x.startswith("loop") for x in made) == 3  # MGT, MDT, one OST
    assert root_network() == before  # nothing added to the root namespace's network
    pids = [p for s in rig.status() for p in s.pids]
    assert len(pids) == 3  # the etcd members
    with pytest.raises(Exists):
        rig.up()
    rig.down()
    assert leftovers(rig.dir, rig.prefix) == []
    assert root_network() == before
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                   for p in pids)
    rig.down()  # twice is fine
    assert load(rig.dir) is None


@needs_rig
def test_down_after_the_rig_was_killed(tmp_path: Path) -> None:
    before = root_network()
    rig_dir = tmp_path / "rig"
    res = subprocess.run([sys.executable, "-c", CRASHER, str(rig_dir)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == -signal.SIGKILL, res.stderr
    state = load(rig_dir)
    assert state is not None
    pids = [p.pid for p in state.procs]
    assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)  # etcd and the sleeper
    Rig(rig_dir).down()  # a fresh object, knowing only the directory
    assert leftovers(rig_dir.resolve(), state.prefix) == []
    assert root_network() == before
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                   for p in pids)


@needs_rig
def test_failed_up_undoes_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rig_etcd, "binary", lambda: "/bin/false")  # members exit at once
    rig = Rig(tmp_path / "rig")
    with pytest.raises(TimedOut):
        rig.up(servers=1, clients=0, osts=0, image_mib=16, timeout=1.0)
    assert leftovers(rig.dir, rig.prefix) == []
    assert load(rig.dir) is None  # all undone: the next up may go ahead


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run the CLI as another user")
def test_cli_refuses_without_root(tmp_path: Path) -> None:
    res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          sys.executable, "-m", "shoal", "rig", "status", "--dir",
                          str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "needs root" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_fs_defs_for_two_servers() -> None:
    """With two servers the OSTs share the MGS/MDS pair; the file parses as Shoal reads it."""
    text = render_fs_defs("scratch", [("nid00060", "10.77.0.60"), ("nid00061", "10.77.0.61")],
                          {"mgt": "/dev/loop7", "mdt0": "/dev/loop8", "ost0": "/dev/loop9",
                           "ost1": "/dev/loop10"})
    fs, _ = parse_fs_defs_text(text)
    by_name = {t.name: t for t in fs.targets}
    assert by_name["MGS"].devices == (("nid00060", "/dev/loop7"), ("nid00061", "/dev/loop7"))
    assert by_name["scratch-OST0001"].nodes == ("nid00061", "nid00060")
    assert fs.nids == {"nid00060": "10.77.0.60", "nid00061": "10.77.0.61"}
    assert fs.auto_failover
