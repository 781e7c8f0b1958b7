"""Extent locks through an OSS failover (client/data_locks.py, node/data_locks.py): the
holder replays them inside the backup's recovery window and keeps what they cover, and the
first conflicting request after the window calls them back as it would have on the old
server. Before, every lock was dropped at the reconnect: a write buffered under PW then
landed whenever the holder got to it, while another client's read or write of the same
bytes, released by the same window, could be served first.

Nodes (src/shoal/cluster/scratch.fs_defs): nid00062 serves OST0000 (backup nid00063).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from shoal.cluster.local import LocalCluster
from shoal.protocol.ldlm import Mode
from tests.scenarios.harness import Probe, served_by, wait_for

OSS_A, OSS_B = "nid00062", "nid00063"
OST0 = {"stripe_count": 1, "stripe_offset": 0}

pytestmark = pytest.mark.timeout(120)


def test_locks_held_over_an_oss_failover_are_replayed_and_called_back_after(
        cl: LocalCluster) -> None:
    probe = Probe()
    gone: list[tuple[Mode, Any]] = []

    async def release(mode: Mode, data: Any) -> None:
        gone.append((mode, data))

    holder = probe.client(cl, name="holder")
    other = probe.client(cl, name="other")
    try:
        holder.keep_data(release)
        for name in ("w", "r"):
            probe.run(holder.write_file(f"/{name}", name.encode() * 100, **OST0))
        probe.run(holder.sync_all())
        w = probe.run(holder.open("/w", os.O_RDWR))
        r = probe.run(holder.open("/r", os.O_RDONLY))
        dl = holder.osts[0].data_locks
        assert dl is not None
        probe.run(dl.hold(w.layout.oid, Mode.PW, "w"))
        probe.run(dl.hold(r.layout.oid, Mode.PR, "r"))
        before = dl.handle_for(w.layout.oid, Mode.PW)

        assert cl.kill_node(OSS_A)
        wait_for("OSS_B serving OST0000", served_by(cl, OSS_B, ["scratch-OST0000"]),
                 timeout=40)
        probe.run(other.read_file("/r"))  # after the window: the PR lock is no obstacle
        wait_for("the holder back", lambda: holder.osts[0].sm.state.value == "FULL",
                 timeout=20)
        # both granted again inside the window, under new handles, and nothing dropped
        assert gone == []
        assert dl.stats["replayed"] == 2 and dl.stats["not_replayed"] == 0
        assert dl.holds(w.layout.oid, Mode.PW) and dl.holds(r.layout.oid, Mode.PR)
        assert dl.handle_for(w.layout.oid, Mode.PW) not in (None, before)
        # the holder's own write under the lock is served without calling itself back
        probe.run(w.write(b"W" * 10, 0))
        assert gone == []
        # another client's read of the written file calls the PW lock back first
        assert probe.run(other.read_file("/w")) == b"W" * 10 + b"w" * 90
        assert gone == [(Mode.PW, "w")]
        # and its write of the other calls back the PR lock before it is acknowledged
        f = probe.run(other.open("/r", os.O_WRONLY))
        probe.run(f.write(b"R", 0))
        assert (Mode.PR, "r") in gone
        probe.run(f.close())
        for g in (w, r):
            probe.run(g.close())
    finally:
        probe.close(holder, other)
