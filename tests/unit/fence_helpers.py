"""Helpers of the fence tests (tests/unit/test_fence_*.py): node stand-ins made of real
process groups, a local cluster directory with their pid files, the test fence agent, and
the `shoal` command run from a coroutine. The `groups` fixture is in tests/unit/conftest.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from shoal.fence.procs import live_group_members, read_stat

TEST_AGENT = Path(__file__).resolve().parents[1] / "fence_agents" / "fence_shoal_test"


class Group:
    """A node stand-in: `sh` leading its own session with two `sleep` children."""

    def __init__(self, script: str = "sleep 600 & sleep 600 & wait", members: int = 3) -> None:
        self.proc = subprocess.Popen(["sh", "-c", script], start_new_session=True)
        self.pgid = self.proc.pid
        deadline = time.monotonic() + 5
        while len(live_group_members(self.pgid)) < members:
            assert time.monotonic() < deadline, "group did not start"
            time.sleep(0.01)
        self.pids = [st.pid for st in live_group_members(self.pgid)]

    def cleanup(self) -> None:
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=5)


def local_dir(tmp_path: Path) -> Path:
    d = tmp_path / "cluster"
    (d / "run").mkdir(parents=True)
    return d


def write_pid(cluster_dir: Path, node: str, pid: int) -> Path:
    path = cluster_dir / "run" / f"{node}.pid"
    path.write_text(f"{pid}\n")
    return path


def alive(pid: int) -> bool:
    st = read_stat(pid)
    return st is not None and not st.gone


async def run_shoal(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shoal", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()
