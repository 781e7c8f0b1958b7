"""Helpers for tests that drive the real `shoal` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def shoal(*args: str, cluster_dir: Path | None = None, check: bool = True,
          timeout: float = 120, columns: str | None = "200") -> subprocess.CompletedProcess[str]:
    """Run the real `shoal` command line (COLUMNS=`columns`, or unset if None)."""
    cmd = [sys.executable, "-m", "shoal", *args]
    if cluster_dir is not None:
        cmd += ["--dir", str(cluster_dir)]
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = columns
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"shoal {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def status_json(cluster_dir: Path) -> dict:
    return json.loads(shoal("status", "--json", cluster_dir=cluster_dir).stdout)


def ost_reads(cluster_dir: Path) -> int:
    """Read RPCs served by every OST of the cluster so far (obdfilter.*.stats)."""
    out = shoal("ctl", "get_param", "-n", "obdfilter.*.stats", cluster_dir=cluster_dir).stdout
    return sum(int(line.split()[1]) for line in out.splitlines()
               if line.split()[:1] == ["read"])


def ost_reads_settled(cluster_dir: Path, timeout: float = 10.0) -> int:
    """ost_reads once two samples in a row agree: read-ahead that an earlier read started
    may still be on its way to the OSTs, and must not count against what comes next."""
    last = ost_reads(cluster_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = ost_reads(cluster_dir)
        if now == last:
            return now
        last = now
    return last


async def read_all(c: Any, path: str) -> bytes:
    """The whole of file `path`, read through client `c` (open, read, close)."""
    f = await c.open(path)
    try:
        return bytes(await f.read())
    finally:
        await f.close()
