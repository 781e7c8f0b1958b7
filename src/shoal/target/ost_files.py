"""Object files on the OST's device: where they live, reading them, writing a log out.

An object's data lives in `<device>/objects/<oid % 256 as 2 hex digits>/<oid as hex>`; its
size, version and block count live in target.db (see ost.py). The files only change in a
commit (`apply_log`, run in a worker thread), so the event loop can read them at any time and
overlay what is still pending.

Crash rule: a commit fsyncs the files before the database row that says how big each object
is. A crash in between leaves file bytes past the recorded size; reads never look past the
recorded (committed) size, and the next commit that touches the object cuts such a tail off
before writing, so it can never show up inside a later hole. Bytes that such a commit
overwrote inside the recorded size do stay: they are acknowledged writes whose clients replay
them (the same data, at the same offsets), as with Lustre, whose OSTs do not journal data.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

from shoal.target.ost_journal import Entry, PendingLog, Punch, Write, last_destroy

_IOV_MAX = 1024  # Linux's limit on buffers per pwritev


def object_path(objects: Path, oid: int) -> Path:
    return objects / f"{oid % 256:02x}" / f"{oid:x}"


def make_objects_dir(objects: Path) -> None:
    """Create the objects directory, durably; its 256 fan-out directories come on first use
    (making them all up front costs a tenth of a second on some file systems)."""
    objects.mkdir(parents=True, exist_ok=True)
    fsync_dir(objects)
    fsync_dir(objects.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FdCache:
    """Read-only descriptors of recently read objects, least recently used closed first.

    Opening a file per 4 MiB read costs more than the read's bookkeeping, so keep them."""

    def __init__(self, objects: Path, capacity: int = 256) -> None:
        self.objects = objects
        self.capacity = capacity
        self._fds: OrderedDict[int, int] = OrderedDict()

    def get(self, oid: int) -> int | None:
        """A descriptor for the object's file, or None if the file does not exist (yet)."""
        fd = self._fds.get(oid)
        if fd is not None:
            self._fds.move_to_end(oid)
            return fd
        try:
            fd = os.open(object_path(self.objects, oid), os.O_RDONLY)
        except FileNotFoundError:
            return None  # not cached: the next commit may create it
        self._fds[oid] = fd
        if len(self._fds) > self.capacity:
            _, old = self._fds.popitem(last=False)
            os.close(old)
        return fd

    def drop(self, oid: int) -> None:
        """Forget an object's descriptor: its file was (or is about to be) unlinked."""
        fd = self._fds.pop(oid, None)
        if fd is not None:
            os.close(fd)

    def close_all(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])

    def __len__(self) -> int:
        return len(self._fds)


def read_range(fd: int | None, buf: bytearray, offset: int, valid: int) -> None:
    """Fill buf's first `valid` bytes from the file at `offset`; the rest stays as is (zeros).

    Bytes past the file's end are holes, so a short read is not an error."""
    if fd is None or valid <= 0:
        return
    view = memoryview(buf)[:valid]
    done = 0
    while done < valid:
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            break
        done += n


def read_plain(fd: int | None, length: int, offset: int) -> bytes:
    """`length` bytes at `offset` of an object with nothing pending: one pread, no copies."""
    if fd is None:
        return bytes(length)
    data = os.pread(fd, length, offset)
    if len(data) < length:
        # a regular file reads short only at its end: the rest is a hole (a file lost in a
        # crash, or one whose tail a commit has not yet extended)
        return data + bytes(length - len(data))
    return data


class Readahead:
    """Read the next extents of an object being read sequentially ahead of the requests.

    An OST read is a blocking pread on the node's event loop: from a cold cache it waits for
    the disk while nothing is sent. When a read starts where the previous one of the same
    object ended, the next `depth` extents of the same size are handed to the kernel
    (posix_fadvise WILLNEED starts the I/O and returns), so the disk works on the next RPCs'
    data while this one goes out: the OSS read-ahead Lustre has for streaming reads.
    """

    def __init__(self, depth: int = 6, min_io: int = 256 << 10, max_objects: int = 256) -> None:
        self.depth = depth
        self.min_io = min_io
        self.max_objects = max_objects
        self._next: dict[int, tuple[int, int]] = {}  # oid -> (end of last read, end ahead)

    def after_read(self, fd: int | None, oid: int, offset: int, n: int) -> None:
        last_end, ahead = self._next.pop(oid, (-1, 0))
        end = offset + n
        if fd is not None and n >= self.min_io and offset == last_end:
            want = end + n * self.depth
            start = ahead if end <= ahead <= want else end  # a window from before a seek is void
            if want > start:
                os.posix_fadvise(fd, start, want - start, os.POSIX_FADV_WILLNEED)
                ahead = want
        self._next[oid] = (end, ahead)  # most recent last: the dict is an LRU
        if len(self._next) > self.max_objects:
            del self._next[next(iter(self._next))]

    def forget(self, oid: int) -> None:
        self._next.pop(oid, None)


def _pwrite_all(fd: int, bufs: list[bytes], offset: int) -> None:
    for i in range(0, len(bufs), _IOV_MAX):
        chunk = bufs[i:i + _IOV_MAX]
        want = sum(len(b) for b in chunk)
        n = os.pwritev(fd, chunk, offset)
        if n < want:
            # a partial vector write: finish it one buffer at a time
            data = memoryview(b"".join(chunk))
            while n < want:
                n += os.pwrite(fd, data[n:], offset + n)
        offset += want


def _apply_entries(fd: int, entries: list[Entry]) -> None:
    run: list[bytes] = []
    run_start = run_end = 0
    for e in entries:
        if isinstance(e, Write):
            if run and e.offset == run_end:
                run.append(e.data)  # adjacent to the previous write: one syscall for both
                run_end = e.end
                continue
            if run:
                _pwrite_all(fd, run, run_start)
            run, run_start, run_end = [e.data], e.offset, e.end
            continue
        if run:
            _pwrite_all(fd, run, run_start)
            run = []
        assert isinstance(e, Punch)  # a Destroy never reaches here (see apply_log)
        os.ftruncate(fd, e.size)
    if run:
        _pwrite_all(fd, run, run_start)


def _open_for_write(path: Path, dirs: set[Path]) -> int:
    """Open an object file, creating it (and its fan-out directory); `dirs` collects the
    directories whose entries changed and need an fsync."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        path.parent.mkdir(exist_ok=True)
        dirs.add(path.parent.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    dirs.add(path.parent)
    return fd


def apply_log(objects: Path, log: PendingLog, base_sizes: dict[int, int]) -> dict[int, int | None]:
    """Write a pending log to the object files and fsync them (runs in a worker thread).

    `base_sizes` holds each object's committed size (the size its file is valid up to).
    Returns each touched object's allocated 512-byte blocks, None for one that is gone."""
    blocks: dict[int, int | None] = {}
    dirs: set[Path] = set()
    for oid, entries in log.entries.items():
        path = object_path(objects, oid)
        base = base_sizes.get(oid, 0)
        k = last_destroy(entries)
        if k >= 0:
            try:
                path.unlink()
                dirs.add(path.parent)
            except FileNotFoundError:
                pass
            entries, base = entries[k + 1:], 0
            if not entries:
                blocks[oid] = None
                continue
        fd = _open_for_write(path, dirs)
        try:
            if os.fstat(fd).st_size > base:
                os.ftruncate(fd, base)  # a tail left by a commit that crashed: not ours
            _apply_entries(fd, entries)
            os.fsync(fd)
            blocks[oid] = os.fstat(fd).st_blocks
        finally:
            os.close(fd)
    for d in dirs:
        fsync_dir(d)
    return blocks
