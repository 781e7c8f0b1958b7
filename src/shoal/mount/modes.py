"""What an open's flags and a file's mode mean for the mount: direct I/O, and the
setuid/setgid bits a write by an unprivileged process clears."""

from __future__ import annotations

import os
import stat


def _killed_mode(mode: int) -> int:
    """`mode` without its setuid bit, and without setgid when group-executable (without
    S_IXGRP setgid means mandatory locking, which a write leaves alone)."""
    mode &= ~stat.S_ISUID
    if mode & stat.S_IXGRP:
        mode &= ~stat.S_ISGID
    return mode


def _direct(flags: int) -> bool:
    """Whether an open's I/O bypasses the kernel's page cache: write-only opens (below) and
    appending ones, whose offsets the MDT decides (the kernel would cache an appended write
    at the end of file as it last knew it)."""
    return _write_only(flags) or bool(flags & os.O_APPEND)


def _write_only(flags: int) -> bool:
    """Whether an open's writes bypass the kernel's page cache (FOPEN_DIRECT_IO). Only for
    O_WRONLY: such a descriptor can never be mmap()ed (mmap needs read access), and direct
    I/O on a readable one would fail MAP_SHARED maps with ENODEV, since libfuse 3.14 cannot
    ask for FUSE_DIRECT_IO_ALLOW_MMAP. Pages of a mount's own writes are never kept across
    an open (mount/handles.py), so filling them only cost the writer a copy and the next
    open their invalidation; the kernel still drops any page another descriptor holds of
    the range written."""
    return flags & os.O_ACCMODE == os.O_WRONLY
