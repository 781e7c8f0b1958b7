"""Loop devices standing in for shared LUNs, and the rig's fs_defs naming them.

A loop device is a kernel-wide block device, so every host's mount namespace sees the same
/dev/loopN: exactly a LUN both servers of a failover pair are cabled to. The images are
sparse files under the rig directory, so a 256 MiB device costs nothing until written.
"""

from __future__ import annotations

import os
from pathlib import Path

from shoal.rig.netns import run
from shoal.rig.state import LoopRecord

DEFAULT_SIZE_MIB = 256
IMAGES = "devices"


def target_devices(osts: int) -> list[str]:
    """The devices of the rig's layout: the MGT, one MDT and `osts` OSTs."""
    return ["mgt", "mdt0"] + [f"ost{i}" for i in range(osts)]


def make_image(path: Path, size_mib: int) -> None:
    """A sparse image (kept if it exists: `rig up` after `rig down` finds its data again)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_size < size_mib << 20:
            os.ftruncate(fd, size_mib << 20)
    finally:
        os.close(fd)


def attached(image: Path) -> list[str]:
    """The loop devices backed by `image` (found from the kernel, not from our records)."""
    res = run(["losetup", "--associated", str(image), "--noheadings", "--output", "NAME"],
              check=False, quiet=True)
    return [line.strip() for line in res.stdout.splitlines() if line.strip()]


def attach(record: LoopRecord) -> str:
    """Attach the image to a free loop device (or find the one already on it)."""
    existing = attached(Path(record.image))
    if existing:
        return existing[0]
    res = run(["losetup", "--find", "--show", record.image])
    return res.stdout.strip()


def detach(image: Path) -> None:
    for device in attached(image):
        run(["losetup", "--detach", device], check=False)


def render_fs_defs(fs_name: str, servers: list[tuple[str, str]],
                   devices: dict[str, str]) -> str:
    """An fs_defs like scratch.fs_defs, for the rig's addresses and loop devices.

    `servers` is [(node, address)]; `devices` maps "mgt"/"mdt0"/"ostN" to /dev/loopN.
    The MGT and MDT are served by the first two servers; the OSTs by the others in turn
    (each OST failing over to the next server), or by the first two if there are no others.
    """
    nodes = [n for n, _ in servers]
    meta = nodes[:2]
    oss = nodes[2:] or meta

    def pair(primary: list[str], device: str) -> str:
        return " ".join(f"{n}:{device}" for n in primary)

    lines = [
        "# Written by `shoal rig up`: the rig's hosts and loop devices (shared LUNs).",
        f'fs_name="{fs_name}"',
        'NID_MAP="' + " ".join(f"{n}={a}" for n, a in servers) + '"',
        f'MGSDEV="{pair(meta, devices["mgt"])}"',
        f'MDSDEV[0]="{pair(meta, devices["mdt0"])}"',
    ]
    osts = sorted((k for k in devices if k.startswith("ost")), key=lambda k: int(k[3:]))
    for k in osts:
        i = int(k[3:])
        chain = [oss[i % len(oss)]]
        if len(oss) > 1:
            chain.append(oss[(i + 1) % len(oss)])
        lines.append(f'OSTDEV[{i}]="{pair(chain, devices[k])}"')
    lines.append("AUTO_FAILOVER=yes")
    return "\n".join(lines) + "\n"
