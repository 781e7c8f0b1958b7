"""Alerts (agent/alerts.py): a failover, and a fence that fails, reach the site's hook with
their whole record, under `shoal load`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shoal.cluster.local import LocalCluster
from tests.helpers import shoal
from tests.scenarios.harness import Load, assert_clean, served_by, wait_for, write_fs_defs

OSS_A, OSS_B = "nid00062", "nid00063"
A_OSTS = ["scratch-OST0000", "scratch-OST0002"]

pytestmark = pytest.mark.timeout(120)

HOOK = """
import sys
with open(sys.argv[1], "a") as f:
    f.write(sys.stdin.read().replace("\\n", " ") + "\\n")
"""


def alerts(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def hooked_cluster(tmp_path: Path) -> tuple[LocalCluster, Path]:
    """A cluster whose alerts a hook command appends to the file returned, one a line."""
    hook = tmp_path / "hook.py"
    hook.write_text(HOOK)
    got = tmp_path / "alerts.jsonl"
    cl = LocalCluster(tmp_path / "cluster")
    cl.up(write_fs_defs(tmp_path / "fs_defs",
                        f"ALERT_COMMAND=\"{sys.executable} {hook} {got}\""), timeout=60)
    return cl, got


def test_a_failover_raises_an_alert_through_the_command_hook(tmp_path: Path) -> None:
    cl, got = hooked_cluster(tmp_path)
    try:
        load = Load(cl, clients=4, duration=6.0)
        load.wait_writing()
        assert alerts(got) == []  # starting up is no alert
        t0 = time.time()
        assert cl.kill_node(OSS_A)
        wait_for("OSS_B serving the OSTs", served_by(cl, OSS_B, A_OSTS), timeout=40)
        wait_for("an alert per OST", lambda: len(alerts(got)) >= 2, timeout=20)
        seen = alerts(got)
        for name in A_OSTS:
            [a] = [a for a in seen if a["target"] == name]
            assert a["alert"] == "detect" and a["node"] == OSS_B and a["time"] >= t0
            assert a["data"]["failover"] is True and a["data"]["last_owner"] == OSS_A
            assert OSS_A in a["detail"]
        assert_clean(load.result())
    finally:
        cl.down()


CLIENT = """
import asyncio, sys
from shoal.client.client import Client

async def main(d):
    c = await Client.from_cluster_dir(d).mount()
    await c.connected()
    print("up", flush=True)
    await asyncio.Event().wait()

asyncio.run(main(sys.argv[1]))
"""


def test_clients_lost_together_raise_one_eviction_storm_alert(tmp_path: Path) -> None:
    cl, got = hooked_cluster(tmp_path)
    rack = []
    try:
        for _ in range(12):
            p = subprocess.Popen([sys.executable, "-c", CLIENT, str(cl.dir)],
                                 stdout=subprocess.PIPE, text=True)
            rack.append(p)
        for p in rack:
            assert p.stdout is not None and p.stdout.readline().strip() == "up"
            p.kill()  # a rack loses power: nobody says goodbye
        shoal("ctl", "set_param", "node.*.evict_timeout=1", cluster_dir=cl.dir)
        wait_for("a storm alert", lambda: any(a["alert"] == "eviction_storm"
                                              for a in alerts(got)), timeout=30)
        time.sleep(2.0)  # the rest of the evictions come: one alert per node and storm
        storms = [a for a in alerts(got) if a["alert"] == "eviction_storm"]
        assert len({a["node"] for a in storms}) == len(storms), storms
        assert all(a["data"]["count"] >= 10 for a in storms)
    finally:
        for p in rack:
            p.kill()
        cl.down()
