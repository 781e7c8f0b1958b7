"""Ping eviction on a real cluster (node/evictor.py): a client that dies holding state is
evicted once its nodes have heard nothing from it for PING_EVICT_TIMEOUT, while live
clients, busy or idle, are never disturbed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from shoal.client.sync import SyncClient
from shoal.cluster.local import LocalCluster
from tests.conftest import EXAMPLE
from tests.evict_helpers import exports, start_dead_writer, wait_for, with_evict_timeout
from tests.helpers import shoal

TIMEOUT = 2.0  # seconds of silence before a node evicts a client
MiB = 1 << 20


@pytest.fixture(scope="module")
def evicting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    where = tmp_path_factory.mktemp("ping-evict")
    c = LocalCluster(where / "cluster")
    c.up(with_evict_timeout(EXAMPLE, where, TIMEOUT), timeout=60)
    yield c
    c.down()


def files(c: SyncClient) -> int:
    """Inodes in use on the MDT (statvfs's total less its free)."""
    mdt = next(iter(c.statfs()["mdt"].values()))
    return int(mdt["files"]) - int(mdt["ffree"])


def test_the_state_of_a_dead_client_goes_and_live_ones_stay(evicting: LocalCluster) -> None:
    d = evicting.dir
    with SyncClient.from_cluster_dir(d) as idle:
        idle.write_file("/inplace", b"A" * MiB)
        idle.write_file("/idle", b"i" * 4096)
        held = idle.open("/idle", os.O_RDWR)  # its handle must outlive every timeout
        before = idle.stat("/inplace")
        load = subprocess.Popen(
            [sys.executable, "-m", "shoal", "load", "--clients", "2", "--duration", "6",
             "--json", "--dir", str(d)], stdout=subprocess.PIPE, text=True)
        writer = start_dead_writer(evicting, "dead-writer")
        assert "dead-writer" in exports(evicting)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        wait_for("the dead writer evicted from the MDT",
                 lambda: "dead-writer" not in exports(evicting))
        # its in-place writes show in a new ctime (the version is the MDT's transno and
        # stays), and what it wrote is on the OSTs
        after = idle.stat("/inplace")
        assert after.ctime > before.ctime and after.version == before.version
        assert idle.read_file("/inplace") == b"B" * MiB
        # the dead client is gone from the OSTs it wrote to as well
        wait_for("the dead writer evicted from every OST",
                 lambda: "dead-writer" not in exports(evicting, "obdfilter.*"))
        idle_since = time.monotonic()  # from here on the idle client only pings
        out, _ = load.communicate(timeout=120)
        res = json.loads(out)
        assert load.returncode == 0, res
        assert res["lost"] == 0 and res["corrupt"] == 0 and res["errors"] == 0, res
        assert res["verified"] > 0
        # the idle client pinged all along: its handle and its export are still there
        time.sleep(max(0.0, 3 * TIMEOUT - (time.monotonic() - idle_since)))
        assert idle.client.uuid in exports(evicting)
        idle.pwrite(held, b"j" * 10, 0)
        idle.close_file(held)
        assert idle.read_file("/idle") == b"j" * 10 + b"i" * 4086
    evictions = shoal("ctl", "get_param", "-n", "node.*.ping_evictions",
                      cluster_dir=d).stdout.split()
    assert sum(int(n) for n in evictions) >= 2  # MDT and at least one OST


def test_an_orphan_a_dead_client_held_open_is_dropped(evicting: LocalCluster) -> None:
    with SyncClient.from_cluster_dir(evicting.dir) as c:
        c.write_file("/inplace", b"A" * MiB)
        writer = start_dead_writer(evicting, "dead-orphan-holder")
        with_orphan = files(c)  # the orphan: unlinked, but open, so still an inode
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        wait_for("the orphan holder evicted",
                 lambda: "dead-orphan-holder" not in exports(evicting))
        assert files(c) == with_orphan - 1
