"""A partner that falls silent and stops renewing its leases is fenced by the partner watch
before the leases run out (agent/partner_watch.py); a pause of a second moves nothing."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from shoal.cluster.local import LocalCluster
from tests.scenarios.harness import (
    Load,
    assert_clean,
    events,
    served_by,
    targets,
    wait_for,
    write_fs_defs,
)

pytestmark = pytest.mark.timeout(180)

OSS_A, OSS_B = "nid00062", "nid00063"
A_OSTS = ["scratch-OST0000", "scratch-OST0002"]  # primary OSS_A


def test_a_pause_of_a_second_moves_nothing_a_longer_one_is_fenced_before_the_leases_end(
        tmp_path: Path) -> None:
    """Leases of 4 s here, so that their expiry (2.7 s or more after the pause) cannot come
    first: the watch's detect names the silence, which it could not once the leases were
    gone (a gone lease proves nothing to it). A pause of 1 s, first, stays below it."""
    cl = LocalCluster(tmp_path / "cluster")
    cl.up(write_fs_defs(tmp_path / "fs_defs", "LEASE_TTL=4"), timeout=90)
    try:
        owners = {n: t["owner"] for n, t in targets(cl).items()}
        load = Load(cl, clients=4, duration=14.0)
        load.wait_writing()
        t0 = time.time()
        for node in (OSS_A, OSS_B):
            assert cl.signal_node(node, signal.SIGSTOP)
            time.sleep(1.0)
            assert cl.signal_node(node, signal.SIGCONT)
            time.sleep(1.0)
        time.sleep(1.0)
        evs = events(cl, t0)
        assert not [e for e in evs if e.kind in ("detect", "fence_start", "take")], evs
        assert {n: t["owner"] for n, t in targets(cl).items()} == owners

        t1 = time.time()
        assert cl.signal_node(OSS_A, signal.SIGSTOP)
        wait_for("the OSTs on the backup", served_by(cl, OSS_B, A_OSTS), timeout=60)
        cl.signal_node(OSS_A, signal.SIGCONT)
        assert_clean(load.result())
        evs = events(cl, t1)
        silent = [e for e in evs if e.kind == "detect" and "leases unrenewed" in e.detail]
        assert sorted({e.target for e in silent}) == A_OSTS, evs
        assert all(e.node == OSS_B for e in silent)
        fenced = [e for e in evs if e.kind == "fenced" and e.target in A_OSTS]
        assert fenced and all(e.data.get("victim") == OSS_A for e in fenced), evs
        assert cl.pid(OSS_A) is None, "the silent node was not fenced"
    finally:
        cl.down()
