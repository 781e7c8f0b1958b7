"""What the rig tests share: why they skip, root-namespace snapshots, TCP probes run in hosts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from shoal.rig import Rig
from shoal.store.etcd_server import etcd_binary

PY = sys.executable


def skip_reason() -> str | None:
    """Why the rig cannot run here, or None."""
    if os.geteuid() != 0:
        return "the rig needs root (network namespaces, loop devices, mounts)"
    for tool in ("ip", "tc", "unshare", "nsenter", "losetup"):
        if shutil.which(tool) is None:
            return f"the rig needs {tool} on PATH"
    try:
        res = subprocess.run(["ip", "netns", "list"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns` unavailable: {exc}"
    if res.returncode != 0:
        return f"`ip netns` unavailable: {res.stderr.decode().strip()}"
    if etcd_binary() is None:
        return "etcd not installed (Debian's etcd-server)"
    return None


needs_rig = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))


def root_network() -> tuple[str, str]:
    """The root namespace's links and routes, to show the rig never touched them."""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True, check=True)
    # counters and link state of the machine's own NICs may move; names and routes may not
    names = sorted(line.split(":")[1].strip() for line in links.stdout.splitlines())
    return "\n".join(names), routes.stdout


def leftovers(rig_dir: Path, prefix: str) -> list[str]:
    """Whatever of a rig still exists: namespaces, loop devices on its images, mounts."""
    out = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    out += [f"netns {line.split()[0]}" for line in netns.splitlines() if line.startswith(prefix)]
    loops = subprocess.run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
                           capture_output=True, text=True).stdout
    out += [f"loop {line}" for line in loops.splitlines() if str(rig_dir) in line]
    out += [f"mount {p.mountpoint}" for p in psutil.disk_partitions(all=True)
            if p.mountpoint.startswith(str(rig_dir))]
    return out


# A server that answers every connection with "pong" (until killed); prints "ready" first.
SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"pong"); c.close()
"""

# Exit 0 if a TCP connection to argv[1]:argv[2] gets "pong" within argv[3] seconds, else 1.
CLIENT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    c.settimeout(float(sys.argv[3]))
    sys.exit(0 if c.recv(4) == b"pong" else 1)
except OSError as exc:
    print(exc); sys.exit(1)
"""


def serve(rig: Rig, host: str, port: int) -> subprocess.Popen[str]:
    proc = rig.popen(host, [PY, "-I", "-c", SERVER, rig.host(host).address, str(port)],
                     stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def reaches(rig: Rig, src: str, dst: str, port: int, timeout: float = 1.0) -> bool:
    res = rig.exec(src, [PY, "-I", "-c", CLIENT, rig.host(dst).address, str(port), str(timeout)],
                   capture_output=True, text=True, timeout=timeout + 20)
    return res.returncode == 0
