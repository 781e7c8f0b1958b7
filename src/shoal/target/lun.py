"""A target on a shared block device (a SAN LUN; a loop device in the rig).

The LUN holds an ext4 file system with the target's directory in it, and, in its last MiB,
outside the file system where ext4 never writes, two raw records that Shoal reads without
mounting anything:

    [ ext4 (the target's files) .................... | label 4 KiB | MMP 4 KiB | ... ]
                                                      ^ size - 1 MiB

The label says whose device it is before anyone mounts it (a typo in a backup's device
path is refused there, not after ext4 replayed its journal); the MMP block is the same one
a directory device keeps in its MMP file (target/mmp.py). Both are read and written with
O_DIRECT, so two hosts sharing the LUN see each other's writes, not their own page cache.

Only the node that took the target (after fencing and the MMP claim) mounts the file system,
on <state dir>/targets/<target>, and unmounts it on release.
"""

from __future__ import annotations

import json
import mmap
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

from shoal.errors import NoDevice

RESERVED = 1 << 20  # bytes at the end of the LUN that ext4 is not given
BLOCK = 4096
LABEL_AT = 0  # offsets within the reserved area
MMP_AT = BLOCK
MKFS_TIMEOUT = 120.0
MOUNT_TIMEOUT = 60.0


def is_block_device(path: Path | str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def _size(fd: int) -> int:
    return os.lseek(fd, 0, os.SEEK_END)


def _reserved_offset(fd: int, device: Path) -> int:
    size = _size(fd)
    if size < 16 * RESERVED:
        raise NoDevice(f"device {device} is {size} bytes: too small for a target")
    return (size - RESERVED) // BLOCK * BLOCK


def read_record(device: Path, at: int) -> dict[str, Any] | None:
    """The JSON record at `at` in the reserved area, or None if there is none."""
    buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT wants
    try:
        fd = os.open(device, os.O_RDONLY | os.O_DIRECT)
    except OSError as exc:
        raise NoDevice(f"device {device}: {exc.strerror}") from None
    try:
        os.preadv(fd, [buf], _reserved_offset(fd, device) + at)
    finally:
        os.close(fd)
    raw = bytes(buf).split(b"\0", 1)[0]
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def write_record(device: Path, at: int, record: dict[str, Any]) -> None:
    """One aligned 4 KiB write, synchronous: a reader on another host sees all of it."""
    raw = json.dumps(record, sort_keys=True).encode()
    if len(raw) >= BLOCK:
        raise ValueError("record too large")
    buf = mmap.mmap(-1, BLOCK)
    buf.write(raw)
    fd = os.open(device, os.O_WRONLY | os.O_DIRECT | os.O_DSYNC)
    try:
        os.pwritev(fd, [buf], _reserved_offset(fd, device) + at)
    finally:
        os.close(fd)


def mkfs(device: Path, label: str) -> None:
    """ext4 over all of the LUN but its reserved end."""
    fd = os.open(device, os.O_RDONLY)
    try:
        blocks = _reserved_offset(fd, device) // BLOCK
    finally:
        os.close(fd)
    _run(["mkfs.ext4", "-q", "-F", "-b", str(BLOCK), "-L", label[:16], "-E",
          "nodiscard", str(device), str(blocks)], MKFS_TIMEOUT, f"mkfs.ext4 {device}")


def mount(device: Path, where: Path) -> None:
    where.mkdir(parents=True, exist_ok=True)
    if os.path.ismount(where):
        return
    _run(["mount", "-t", "ext4", "-o", "noatime", str(device), str(where)], MOUNT_TIMEOUT,
         f"mount {device} on {where}")


def unmount(where: Path, *, lazy: bool = False) -> None:
    if not os.path.ismount(where):
        return
    _run(["umount", *(["-l"] if lazy else []), str(where)], MOUNT_TIMEOUT, f"umount {where}")


def _run(argv: list[str], timeout: float, what: str) -> None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NoDevice(f"{what}: {exc}") from None
    if proc.returncode != 0:
        raise NoDevice(f"{what}: {(proc.stderr or proc.stdout).strip()}")


__all__ = ["MMP_AT", "LABEL_AT", "is_block_device", "mkfs", "mount", "read_record",
           "unmount", "write_record"]
