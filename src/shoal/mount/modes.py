"""What an open's flags and a file's mode mean for the mount: direct I/O, the close that
needs no flush, and the setuid/setgid bits a write by an unprivileged process clears."""

from __future__ import annotations

import os
import stat

from pyfuse3 import FileInfo

# Shoal's build of pyfuse3 (packaging/pyfuse3.patch) can ask the kernel not to send a FLUSH
# at close(2) (FOPEN_NOFLUSH); an unpatched one flushes every handle, as before
_NOFLUSH = hasattr(FileInfo, "noflush")


def file_info(fh: int, flags: int, keep: bool) -> FileInfo:
    """What an open answers the kernel. A read-only handle's close(2) sends no FLUSH: a
    flush lands the writes buffered for the file and reports their size, and such a
    handle wrote none (POSIX locks are the kernel's own, not the mount's: none to drop).
    That is a round trip through the mount less for every file a diff, an import or a git
    status reads."""
    fi = FileInfo(fh=fh, keep_cache=keep, direct_io=_direct(flags))
    if _NOFLUSH and flags & os.O_ACCMODE == os.O_RDONLY:
        fi.noflush = True
    return fi


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
