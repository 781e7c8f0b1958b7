"""Kernel plumbing for the rig: network and mount namespaces, the bridge, veths, tc rules.

Everything is done with iproute2 (`ip`, `tc`) and util-linux (`unshare`, `nsenter`, `umount`),
always addressing a namespace explicitly (`ip -n NS ...`), so nothing is ever created in the
root network namespace: veth pairs are made inside the bridge namespace with their peer born
directly in the host's namespace.

Partitions are tc rules on the bridge's ports, in the bridge namespace: a u32 filter on a
port's ingress redirects packets for a cut address to a sink veth whose peer drops them (the
kernels we run on lack nftables tools and tc's drop action, but have u32 and mirred). The
sender sees nothing: a cut looks like a dead switch port, not a refused connection.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import psutil

from shoal.errors import NotPermitted, ShoalError, Unsupported

log = logging.getLogger(__name__)

NETNS_DIR = Path("/run/netns")
BRIDGE = "br0"
SINK = "sink0"  # redirect target of partition rules; its peer SINK_PEER discards
SINK_PEER = "sink1"
HOST_IF = "eth0"
TOOLS = ("ip", "tc", "unshare", "nsenter", "umount", "mount", "losetup")
CMD_TIMEOUT = 30.0  # no single plumbing command should take anywhere near this


class RigCommandError(ShoalError):
    """A plumbing command failed; the message carries the command and its stderr."""

    errno_name = "EIO"


def check_supported() -> None:
    """Refuse clearly when the rig cannot work here: not root, no namespaces, missing tools."""
    if os.geteuid() != 0:
        raise NotPermitted("shoal rig needs root (network namespaces, loop devices, mounts)")
    if not Path("/proc/self/ns/net").exists() or not Path("/proc/self/ns/mnt").exists():
        raise Unsupported("shoal rig needs network and mount namespace support in the kernel")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise Unsupported(f"shoal rig needs {', '.join(missing)} on PATH "
                          "(Debian: iproute2, util-linux, mount)")


def run(argv: list[str], *, check: bool = True, quiet: bool = False,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run one plumbing command; RigCommandError with its stderr if it fails and `check`."""
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=CMD_TIMEOUT,
                             input=stdin)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RigCommandError(f"{' '.join(argv)}: {exc}") from exc
    if res.returncode != 0:
        msg = f"{' '.join(argv)}: {res.stderr.strip() or f'exit {res.returncode}'}"
        if check:
            raise RigCommandError(msg)
        if not quiet:
            log.debug("ignored: %s", msg)
    return res


# -- network namespaces -----------------------------------------------------------------
def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def netns_exists(name: str) -> bool:
    return netns_path(name).exists()


def netns_list(prefix: str) -> list[str]:
    """Names of the network namespaces starting with `prefix` (what a crashed rig left)."""
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))
    except FileNotFoundError:
        return []


def netns_add(name: str) -> None:
    if not netns_exists(name):
        run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])


def netns_del(name: str) -> None:
    if netns_exists(name):
        run(["ip", "netns", "del", name], check=False)


def netns_pids(name: str) -> list[int]:
    """Pids of the processes whose network namespace is `name` (`ip netns pids`)."""
    if not netns_exists(name):
        return []
    res = run(["ip", "netns", "pids", name], check=False, quiet=True)
    return sorted(int(p) for p in res.stdout.split() if p.isdigit())


# -- the bridge and the hosts' links ----------------------------------------------------
def make_bridge(ns: str) -> None:
    """The switch: a bridge in a namespace of its own, plus the sink partitions drop into."""
    netns_add(ns)
    if not link_exists(ns, BRIDGE):
        run(["ip", "-n", ns, "link", "add", BRIDGE, "type", "bridge"])
    run(["ip", "-n", ns, "link", "set", BRIDGE, "up"])
    if not link_exists(ns, SINK):
        run(["ip", "-n", ns, "link", "add", SINK, "type", "veth", "peer", "name", SINK_PEER])
    # the peer is up but unaddressed, and forwarding is off in a new namespace: it drops all
    run(["ip", "-n", ns, "link", "set", SINK, "up"])
    run(["ip", "-n", ns, "link", "set", SINK_PEER, "up"])


def link_exists(ns: str, ifname: str) -> bool:
    return run(["ip", "-n", ns, "link", "show", ifname], check=False, quiet=True).returncode == 0


def plug_host(bridge_ns: str, port: str, host_ns: str, address: str, prefix_len: int) -> None:
    """A veth from the bridge to the host: `port` on the bridge, eth0 with `address` in the host."""
    if link_exists(bridge_ns, port):
        run(["ip", "-n", bridge_ns, "link", "del", port], check=False)
    run(["ip", "-n", bridge_ns, "link", "add", port, "type", "veth",
         "peer", "name", HOST_IF, "netns", host_ns])
    run(["ip", "-n", bridge_ns, "link", "set", port, "master", BRIDGE, "up"])
    run(["ip", "-n", host_ns, "addr", "add", f"{address}/{prefix_len}", "dev", HOST_IF])
    run(["ip", "-n", host_ns, "link", "set", HOST_IF, "up"])


def port_down(bridge_ns: str, port: str) -> None:
    if link_exists(bridge_ns, port):
        run(["ip", "-n", bridge_ns, "link", "set", port, "down"], check=False)


def unplug(bridge_ns: str, port: str) -> None:
    """Delete a port's veth pair (both ends go at once, synchronously)."""
    if netns_exists(bridge_ns) and link_exists(bridge_ns, port):
        run(["ip", "-n", bridge_ns, "link", "del", port], check=False)


# -- partitions ---------------------------------------------------------------------------
Cuts = tuple[list[str], Sequence[tuple[str, str, int]]]


def set_cuts(bridge_ns: str, ports: dict[str, Cuts]) -> None:
    """Make each port drop every IPv4 packet its host sends to one of its cut addresses,
    and each TCP packet to one of its port cuts' addresses with that destination ("dport")
    or source ("sport") port.

    Replaces each port's whole rule set (empty lists heal it), every port at once: two `tc`
    processes in all rather than several per port, so that a cut (a flap's half second)
    starts and ends at one moment for every host, not spread over the time it took a
    loaded machine to run some thirty commands (seed 27, round 11)."""
    if not ports:
        return
    # a port with no rules has no ingress qdisc to delete: -force goes on past that
    run(["tc", "-n", bridge_ns, "-force", "-batch", "-"], check=False, quiet=True,
        stdin="".join(f"qdisc del dev {port} ingress\n" for port in ports))
    lines = []
    for port, (addresses, port_cuts) in ports.items():
        rules = [f"match ip dst {address}/32" for address in addresses]
        rules += [f"match ip dst {address}/32 match ip protocol 6 0xff "
                  f"match ip {which} {number} 0xffff" for address, which, number in port_cuts]
        if rules:
            lines.append(f"qdisc add dev {port} ingress")
        lines += [f"filter add dev {port} ingress protocol ip prio 1 u32 {match} "
                  f"action mirred egress redirect dev {SINK}" for match in rules]
    if lines:
        run(["tc", "-n", bridge_ns, "-batch", "-"], stdin="".join(f"{x}\n" for x in lines))


def links(ns: str) -> set[str]:
    """The names of the links in namespace `ns`."""
    out = run(["ip", "-n", ns, "-o", "link", "show"], check=False, quiet=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()
            if line.count(":") >= 2}


# -- mount namespaces ---------------------------------------------------------------------
def is_mountpoint(path: Path) -> bool:
    target = str(path)
    return any(p.mountpoint == target for p in psutil.disk_partitions(all=True))


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`, deepest first (the order to unmount them in)."""
    root = str(path)
    found = {p.mountpoint for p in psutil.disk_partitions(all=True)
             if p.mountpoint == root or p.mountpoint.startswith(root + "/")}
    return sorted(found, key=len, reverse=True)


def private_dir(path: Path) -> None:
    """Bind-mount `path` on itself with private propagation: where mount namespace files live
    (unshare --mount=FILE requires it, or the binding would propagate into the namespace)."""
    path.mkdir(parents=True, exist_ok=True)
    if not is_mountpoint(path):
        run(["mount", "--bind", str(path), str(path)])
    run(["mount", "--make-private", str(path)])


def make_mntns(file: Path, private: Path) -> None:
    """A persisted mount namespace bound onto `file` (which must be under `private`).

    Inside it, the copies of `private` and of /run/netns are unmounted: they hold other
    hosts' namespace files, and a copy would keep those namespaces (and the loop devices
    mounted in them) alive after the rig releases them. So are the machine's FUSE mounts: a
    copy keeps a FUSE session open after the machine unmounts it, and its process waits for
    the session's end as long as the host lives (`shoal umount` of a mount made before a
    host's power-on timed out); a host mounts what it needs itself."""
    file.touch()
    run(["unshare", f"--mount={file}", "--propagation", "private", "true"])
    table = run(["nsenter", f"--mount={file}", "--", "cat", "/proc/self/mountinfo"],
                quiet=True).stdout
    fuse = [target for target, fstype in _mounts(table) if fstype.startswith("fuse")]
    for inner in (str(private), str(NETNS_DIR), *sorted(fuse, key=len, reverse=True)):
        run(["nsenter", f"--mount={file}", "--", "umount", "--lazy", inner],
            check=False, quiet=True)


def _mounts(mountinfo: str) -> list[tuple[str, str]]:
    """(mount point, file system type) of each line of a /proc/PID/mountinfo."""
    out = []
    for line in mountinfo.splitlines():
        fields, sep, rest = line.partition(" - ")
        parts = fields.split()
        if sep and len(parts) > 4 and rest.split():
            # the kernel escapes blank, tab, newline and backslash as octal (\040...);
            # umount takes the real name
            target = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[4])
            out.append((target, rest.split()[0]))
    return out


def drop_mntns(file: Path) -> None:
    """Release a mount namespace: once no process is left in it, its mounts go with it."""
    if is_mountpoint(file):
        run(["umount", "--lazy", str(file)], check=False)
    file.unlink(missing_ok=True)


def umount(path: str) -> None:
    run(["umount", "--lazy", path], check=False)


def nsenter_argv(netns: str, mntns: str, wd: str) -> list[str]:
    """The prefix that runs a command inside a host (its network and mount namespaces)."""
    return ["nsenter", f"--net={netns_path(netns)}", f"--mount={mntns}", f"--wd={wd}", "--"]
