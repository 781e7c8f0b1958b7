"""POSIX behaviour through a real FUSE mount, with the errnos a local file system gives."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from shoal.client.sync import SyncClient
from shoal.errors import NotFound

if TYPE_CHECKING:
    from tests.mount.conftest import Mount

MiB = 1 << 20


def rel(mnt: Mount, p: Path) -> str:
    return "/" + str(p.relative_to(mnt.path))


@contextlib.contextmanager
def oserr(code: int) -> Iterator[None]:
    """Expect an OSError with exactly this errno."""
    with pytest.raises(OSError) as info:
        yield
    got = info.value.errno
    assert got == code, f"errno {errno.errorcode.get(got or 0, got)}, want {errno.errorcode[code]}"


def test_create_write_read_at_offsets(work: Path) -> None:
    p = work / "f"
    p.write_bytes(b"hello world")
    assert p.read_bytes() == b"hello world"
    with open(p, "r+b") as f:
        f.seek(6)
        f.write(b"WORLD")
        f.seek(3 * MiB)  # a hole, then data past it
        f.write(b"tail")
    data = p.read_bytes()
    assert data[:11] == b"hello WORLD"
    assert data[11:3 * MiB] == bytes(3 * MiB - 11)
    assert data[3 * MiB:] == b"tail"
    assert p.stat().st_size == 3 * MiB + 4
    fd = os.open(p, os.O_RDONLY)
    try:
        assert os.pread(fd, 5, 3 * MiB - 2) == b"\0\0tai"
        assert os.pread(fd, 100, 3 * MiB + 10) == b""
    finally:
        os.close(fd)


def test_large_random_writes_match(work: Path) -> None:
    """Overlapping writes at scattered offsets land in the order they were made."""
    p = work / "r"
    model = bytearray()
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        rng = random.Random(7)
        for _ in range(60):
            off = rng.randrange(0, 6 * MiB)
            chunk = os.urandom(rng.choice([1, 100, 4096, 300_000, MiB + 17]))
            os.pwrite(fd, chunk, off)
            if len(model) < off + len(chunk):
                model.extend(bytes(off + len(chunk) - len(model)))
            model[off:off + len(chunk)] = chunk
        assert os.fstat(fd).st_size == len(model)
        assert os.pread(fd, len(model), 0) == bytes(model)
    finally:
        os.close(fd)
    assert p.read_bytes() == bytes(model)


def test_append(work: Path) -> None:
    p = work / "log"
    for i in range(5):
        with open(p, "a") as f:
            f.write(f"line {i}\n")
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"A")
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"B")  # O_APPEND: at the end whatever the offset
    finally:
        os.close(fd)
    assert p.read_text() == "".join(f"line {i}\n" for i in range(5)) + "AB"


def test_truncate(work: Path) -> None:
    p = work / "t"
    p.write_bytes(b"x" * (2 * MiB + 5))
    os.truncate(p, 10)
    assert p.read_bytes() == b"x" * 10
    os.truncate(p, 2 * MiB)  # extending: zeros
    data = p.read_bytes()
    assert data == b"x" * 10 + bytes(2 * MiB - 10)
    with open(p, "r+b") as f:
        f.write(b"yy")
        f.truncate(1)  # ftruncate after a buffered write
    assert p.read_bytes() == b"y"
    with open(p, "wb") as f:  # O_TRUNC
        f.write(b"new")
    assert p.read_bytes() == b"new"


def test_o_excl_and_errnos(work: Path) -> None:
    p = work / "x"
    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    with oserr(errno.EEXIST):
        os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    with oserr(errno.ENOENT):
        os.stat(work / "missing")
    with oserr(errno.ENOENT):
        open(work / "missing" / "deeper", "w")
    with oserr(errno.ENOTDIR):
        os.stat(p / "below-a-file")
    with oserr(errno.EISDIR):
        open(work, "w")
    (work / "d").mkdir()
    (work / "d" / "inside").write_text("1")
    with oserr(errno.ENOTEMPTY):
        os.rmdir(work / "d")
    with oserr(errno.EEXIST):
        os.mkdir(work / "d")
    with oserr(errno.ENOTDIR):
        os.rmdir(p)
    with oserr(errno.EISDIR):
        os.unlink(work / "d")
    with oserr(errno.ENAMETOOLONG):
        open(work / ("n" * 256), "w")
    with oserr(errno.EINVAL):
        os.rename(work / "d", work / "d" / "sub")


def test_rename(work: Path, mnt: Mount, lib: SyncClient) -> None:
    a, b = work / "a", work / "b"
    a.write_text("A")
    b.write_text("B")
    old_b = b.stat().st_ino
    os.rename(a, b)  # over an existing file: atomic replace
    assert b.read_text() == "A" and not a.exists()
    with pytest.raises(NotFound):
        lib.getattr(old_b)  # the replaced inode is gone
    (work / "d1").mkdir()
    (work / "d2").mkdir()
    (work / "d1" / "f").write_text("f")
    os.rename(work / "d1", work / "d2")  # over an empty directory
    assert (work / "d2" / "f").read_text() == "f"
    (work / "d3").mkdir()
    (work / "d3" / "g").write_text("g")
    with oserr(errno.ENOTEMPTY):
        os.rename(work / "d2", work / "d3")
    with oserr(errno.EISDIR):
        os.rename(b, work / "d3")
    with oserr(errno.ENOTDIR):
        os.rename(work / "d3", b)
    os.rename(b, work / "d3" / "moved")  # across directories
    assert lib.read_file(rel(mnt, work / "d3" / "moved")) == b"A"


def test_links(work: Path) -> None:
    f = work / "f"
    f.write_text("data")
    os.link(f, work / "hard")
    assert f.stat().st_nlink == 2
    assert (work / "hard").stat().st_ino == f.stat().st_ino
    (work / "hard").write_text("changed")
    assert f.read_text() == "changed"
    os.symlink("f", work / "soft")
    os.symlink("nowhere", work / "dangling")
    assert os.readlink(work / "soft") == "f"
    assert (work / "soft").read_text() == "changed"
    assert stat.S_ISLNK(os.lstat(work / "soft").st_mode)
    with oserr(errno.ENOENT):
        (work / "dangling").read_text()
    with oserr(errno.EEXIST):
        os.symlink("x", work / "f")
    (work / "dir").mkdir()
    with oserr(errno.EPERM):
        os.link(work / "dir", work / "dirlink")
    os.unlink(f)
    assert (work / "hard").stat().st_nlink == 1
    assert (work / "hard").read_text() == "changed"


def test_mkdir_rmdir_and_nlink(work: Path) -> None:
    d = work / "top"
    d.mkdir(0o750)
    assert stat.S_IMODE(d.stat().st_mode) == 0o750
    for i in range(3):
        (d / f"sub{i}").mkdir()
    assert d.stat().st_nlink == 5
    assert sorted(os.listdir(d)) == ["sub0", "sub1", "sub2"]
    for i in range(3):
        os.rmdir(d / f"sub{i}")
    os.rmdir(d)
    assert not d.exists()


def test_chmod_chown_utimes(work: Path) -> None:
    p = work / "f"
    p.write_text("x")
    os.chmod(p, 0o751)
    assert stat.S_IMODE(p.stat().st_mode) == 0o751
    os.chown(p, 1234, 5678)
    st = p.stat()
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.chown(p, -1, 42)  # -1 leaves the uid alone
    assert (p.stat().st_uid, p.stat().st_gid) == (1234, 42)
    t_a, t_m = 1_600_000_000_123_456_000, 1_650_000_000_654_321_000
    os.utime(p, ns=(t_a, t_m))
    st = p.stat()
    assert (st.st_atime_ns, st.st_mtime_ns) == (t_a, t_m)
    before = time.time()
    os.utime(p)  # now
    assert p.stat().st_mtime >= before - 1


def test_readdir_large_directory(work: Path, mnt: Mount, lib: SyncClient) -> None:
    n = 3000
    d = work / "big"
    d.mkdir()
    base = rel(mnt, d)
    for i in range(n):
        lib.create(f"{base}/file-{i:05d}")
    t0 = time.monotonic()
    names = os.listdir(d)
    took = time.monotonic() - t0
    assert sorted(names) == [f"file-{i:05d}" for i in range(n)]
    with os.scandir(d) as it:
        kinds = {e.name: e.is_file(follow_symlinks=False) for e in it}
    assert len(kinds) == n and all(kinds.values())
    assert took < 15, f"listing {n} entries took {took:.1f} s"


def test_statfs_shows_the_osts(mnt: Mount, lib: SyncClient) -> None:
    vfs = os.statvfs(mnt.path)
    total = lib.statfs()["total"]
    assert vfs.f_frsize == total["bsize"]
    assert abs(vfs.f_blocks - total["blocks"]) <= total["blocks"] // 100
    assert vfs.f_blocks > 0 and vfs.f_namemax == 255
    assert vfs.f_files >= vfs.f_ffree > 0


def test_open_unlinked_file_stays_readable(work: Path, mnt: Mount, lib: SyncClient) -> None:
    p = work / "orphan"
    payload = os.urandom(3 * MiB)
    p.write_bytes(payload)
    ino = p.stat().st_ino
    fd = os.open(p, os.O_RDWR)
    try:
        os.unlink(p)
        assert not p.exists()
        assert os.fstat(fd).st_nlink == 0
        assert lib.getattr(ino).nlink == 0  # the MDT keeps it while it is open
        assert os.pread(fd, len(payload), 0) == payload
        os.pwrite(fd, b"still writable", len(payload))
        os.fsync(fd)
        assert os.pread(fd, 14, len(payload)) == b"still writable"
    finally:
        os.close(fd)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the close was sent when close(2) returned
        try:
            lib.getattr(ino)
        except NotFound:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the orphan outlived its last close")


def test_fsync_is_durable_and_visible(work: Path, mnt: Mount, lib: SyncClient) -> None:
    p = work / "synced"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"z" * (5 * MiB))
        os.fsync(fd)
        # after fsync another client sees the size and data even before close
        assert lib.stat(rel(mnt, p)).size == 5 * MiB
        assert lib.read_file(rel(mnt, p)) == b"z" * (5 * MiB)
    finally:
        os.close(fd)


def test_stat_while_writing_shows_local_size(work: Path) -> None:
    p = work / "growing"
    with open(p, "wb") as f:
        for i in range(1, 4):
            f.write(b"q" * MiB)
            f.flush()
            assert os.stat(p).st_size == i * MiB  # buffered in the mount, not yet reported


def test_what_fstat_shows_before_the_close_stays_after_it(work: Path) -> None:
    """git records a file's stat data with an fstat before its close, and re-reads every
    file whose lstat then differs (the first `git status` of a clone re-read 176 of 466
    files): a write moves ctime with mtime, and the size report at close changes neither."""
    for i, size in enumerate((10, 5000, 3 * MiB)):
        p = work / f"f{i}"
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"x" * size)
            before = os.fstat(fd)
        finally:
            os.close(fd)
        after = os.lstat(p)
        key = [(s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino) for s in (before, after)]
        assert key[0] == key[1], (size, key)
        assert before.st_ctime_ns >= before.st_mtime_ns  # a write moves both
    # an explicit mtime (tar's futimens) is kept, and ctime still moves with the write
    p = work / "old"
    with open(p, "wb") as f:
        f.write(b"y" * 100)
        f.flush()
        os.utime(f.fileno(), ns=(10**18, 10**18))
        before = os.fstat(f.fileno())
    after = os.lstat(p)
    assert after.st_mtime_ns == 10**18
    assert (after.st_mtime_ns, after.st_ctime_ns) == (before.st_mtime_ns, before.st_ctime_ns)


def test_another_mounts_truncate_stays_past_a_write_through_a_descriptor_opened_before(
        mnt: Mount, mnt2: Mount, work: Path) -> None:
    """A descriptor open for writing since before another mount truncated the file: a write
    through it reports the size its own writes reach, not the size the file had when it was
    opened (which grew the file back and undid the truncate on the MDT; found by the
    random exerciser under failovers, then without them)."""
    other = mnt2.path / work.relative_to(mnt.path)
    for dirty in (False, True):
        p = work / f"t{int(dirty)}"
        data = os.urandom(200_000)
        p.write_bytes(data)
        fd = os.open(p, os.O_RDWR)
        try:
            if dirty:
                os.pwrite(fd, b"x" * 5000, 150_000)
            os.truncate(other / p.name, 80_000)
            os.pwrite(fd, b"y" * 1000, 1000)
        finally:
            os.close(fd)
        want = (data[:1000] + b"y" * 1000 + data[2000:80_000])
        assert os.stat(p).st_size == os.stat(other / p.name).st_size == 80_000
        assert (other / p.name).read_bytes() == want
