"""`shoal top` follows a failover by itself: frame after frame, the owner of the dead node's
targets changes, with no restart of the command."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from shoal.cluster.local import LocalCluster
from tests.scenarios.harness import served_by, wait_for

OSS_A, OSS_B = "nid00062", "nid00063"

pytestmark = pytest.mark.timeout(120)


def owner(frame: str, target: str) -> str | None:
    m = re.search(rf"│ {target}\s*│ (\w+)\s*│ (\w+)", frame)
    return m.group(2) if m else None


def test_top_shows_the_new_owner_without_a_restart(cl: LocalCluster) -> None:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    top = subprocess.Popen([sys.executable, "-m", "shoal", "top", "--dir", str(cl.dir),
                            "--interval", "0.35", "--frames", "24"],
                           stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert top.stdout is not None
        first = ""
        for line in top.stdout:
            first += line
            if "scratch-OST0003" in line:
                break
        assert owner(first, "scratch-OST0000") == OSS_A, first
        assert cl.kill_node(OSS_A)
        wait_for("OSS_B serving OST0000", served_by(cl, OSS_B, ["scratch-OST0000"]),
                 timeout=40)
        out, _ = top.communicate(timeout=60)
    finally:
        top.kill()
    frames = out.split("shoal top ")
    owners = [owner(f, "scratch-OST0000") for f in frames]
    assert owners[-1] == OSS_B, frames[-1]
    assert top.returncode == 0
