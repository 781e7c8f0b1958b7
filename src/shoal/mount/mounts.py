"""The kernel's mount table and the pid files of serving processes (no FUSE binding needed,
so `shoal umount` works where pyfuse3 is missing)."""

from __future__ import annotations

import os
from pathlib import Path

MOUNTS = Path("/proc/self/mounts")
MOUNTINFO = Path("/proc/self/mountinfo")
BDI = Path("/sys/class/bdi")


def _unescape(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as octal escapes
    for code, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, ch)
    return field


def mount_entry(mountpoint: Path | str) -> tuple[str, str] | None:
    """(source, type) of what is mounted on mountpoint, or None. Reads the table rather than
    stat()ing the path: a FUSE mount whose process died fails every stat with ENOTCONN."""
    mp = os.path.abspath(mountpoint)
    found = None
    try:
        text = MOUNTS.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and _unescape(parts[1]) == mp:
            found = (_unescape(parts[0]), parts[2])  # the last one is on top
    return found


def pid_file(mountpoint: Path | str) -> Path:
    """Where the serving process of a mountpoint leaves its pid (for `shoal umount`)."""
    run_dir = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / f"shoal-mount-{os.getuid()}"
    return run_dir / (os.path.abspath(mountpoint).strip("/").replace("/", "%") + ".pid")


def alive(pid: int) -> bool:
    """Whether pid is a live process; a zombie is not (init may be slow to reap one)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:][:1] not in ("Z", "X")


def serving_pid(mountpoint: Path | str) -> int | None:
    try:
        pid = int(pid_file(mountpoint).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def device_of(mountpoint: Path | str) -> str | None:
    """major:minor of what is mounted on mountpoint, from /proc/self/mountinfo: a process
    serving a FUSE mount must not stat() it (the request would wait for itself)."""
    mp = os.path.abspath(mountpoint)
    found = None
    try:
        text = MOUNTINFO.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and _unescape(parts[4]) == mp:
            found = parts[2]
    return found


def set_read_ahead(mountpoint: Path | str, kb: int) -> bool:
    """Set the kernel's read-ahead for a mount's backing device; False if not allowed."""
    dev = device_of(mountpoint)
    if dev is None:
        return False
    try:
        (BDI / dev / "read_ahead_kb").write_text(f"{kb}\n")
    except OSError:
        return False
    return True
