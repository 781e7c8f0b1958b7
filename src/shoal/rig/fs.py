"""Shoal on the rig: the file system brought up the way an administrator does it on real
hosts (docs/deployment.md), from a server host, through the store only:

    shoal config write fs_defs        the rig's fs_defs, with the rig's fence agent
    shoal format                      ext4 and a label on every loop device (the LUNs)
    shoal node run HOST --store ...   one daemon per server host (the rig's daemon hook,
                                      so power-on starts it again, as systemd would)

and then waits until `shoal status` there shows every target UP.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from shoal.errors import ConfigError, TimedOut
from shoal.rig.fence_agent import install as install_fence_agent

if TYPE_CHECKING:
    from shoal.rig.rig import Rig

STATE_DIR = "state"  # <rig>/state/<host>: each daemon's own directory (its LUN mounts)
FENCE_MARK = "# fencing: the rig's fence agent powers hosts off (shoal rig power-off)"


def daemon_command() -> list[str]:
    return [sys.executable, "-m", "shoal", "node", "run", "{host}", "--store", "{store}",
            "--key", "{key}", "--state-dir", "{dir}/" + STATE_DIR + "/{host}"]


def shoal_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "shoal", *args]


def start_shoal(rig: Rig, *, timeout: float = 90.0) -> dict[str, Any]:
    """Configure, format and start the rig's file system; its status once every target is
    UP (TimedOut otherwise)."""
    if not rig.store_url:
        raise ConfigError("the rig has no store (made with --no-etcd)")
    agent = install_fence_agent(rig.dir)
    rig.anchor()
    text = rig.fs_defs_path.read_text()
    if FENCE_MARK not in text:
        text += (f"{FENCE_MARK}\nFENCE_METHOD=\"fence-agent:{agent} rig_dir={rig.dir} "
                 "plug={node}\"\nFENCE_TIMEOUT=30\n")
        rig.fs_defs_path.write_text(text)
    admin = servers(rig)[0]
    run_on(rig, admin, "config", "write", str(rig.fs_defs_path))
    run_on(rig, admin, "format")
    rig.set_daemon_command(daemon_command())
    for host in servers(rig):
        rig.start_daemon(host)
    return wait_up(rig, admin, timeout=timeout)


def servers(rig: Rig) -> list[str]:
    return [h.name for h in rig.hosts if h.role == "server"]


def run_on(rig: Rig, host: str, *args: str, timeout: float = 120.0,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    """`shoal ARGS` on `host`, as its administrator (the store URL and key in the env)."""
    proc = rig.exec(host, shoal_argv(*args), capture_output=True, text=True,
                    timeout=timeout, cwd=rig.dir, env=None)
    if check and proc.returncode != 0:
        raise ConfigError(f"on {host}: shoal {' '.join(args)} failed ({proc.returncode}): "
                          f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def status(rig: Rig, host: str) -> dict[str, Any]:
    return json.loads(run_on(rig, host, "status", "--json", timeout=30).stdout)


def wait_up(rig: Rig, host: str, *, timeout: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        proc = run_on(rig, host, "status", "--json", timeout=30, check=False)
        if proc.returncode == 0:
            st = json.loads(proc.stdout)
            if st["targets"] and all(t["state"] == "UP" for t in st["targets"]):
                return st
        time.sleep(1.0)
    states = {t["name"]: t["state"] for t in st.get("targets", [])}
    raise TimedOut(f"the rig's file system is not up after {timeout:.0f} s: {states}")
