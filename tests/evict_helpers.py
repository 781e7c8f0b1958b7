"""A client that dies holding state, and waiting for the nodes to evict it (node/evictor.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from shoal.cluster.local import LocalCluster
from tests.helpers import shoal

# a client that opens a file for writing, overwrites it in place, opens and unlinks another
# (an orphan), and then dies without closing or syncing anything
DEAD_WRITER = """
import os, sys, time
from shoal.client.sync import SyncClient
c = SyncClient.from_cluster_dir(sys.argv[1], name=sys.argv[2])
f = c.open("/inplace", os.O_RDWR)
c.pwrite(f, b"B" * (1 << 20), 0)
o = c.open("/orphan", os.O_RDWR | os.O_CREAT)
c.pwrite(o, b"o" * 4096, 0)
c.unlink("/orphan")
print("ready", flush=True)
time.sleep(600)
"""


def with_evict_timeout(fs_defs: Path, where: Path, seconds: float) -> Path:
    out = where / "fs_defs"
    out.write_text(fs_defs.read_text() + f"\nPING_EVICT_TIMEOUT={seconds:g}\n")
    return out


def exports(cluster: LocalCluster, target: str = "mdt.*") -> str:
    return shoal("ctl", "get_param", "-n", f"{target}.exports", cluster_dir=cluster.dir).stdout


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not after {timeout:g} s: {what}")
        time.sleep(0.2)


def start_dead_writer(cluster: LocalCluster, name: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", DEAD_WRITER, str(cluster.dir), name],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise AssertionError(f"dead writer did not start: {line!r}")
    return proc
