"""File data under the OSTs' extent locks (client/data_locks.py, node/data_locks.py): what
one client writes, every other reads as soon as the write returned, while both have the
file open: no close, no fsync, no sleep. The writer's buffered writes land when a reader
asks (its PW lock is called back); a reader's kept pages go when anyone writes (its PR
lock is called back)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from shoal.client.sync import SyncClient
from shoal.cluster.local import LocalCluster
from tests.mount.conftest import Mount, mount_on

LDLM_TIMEOUT = 10.0  # the default (config/settings.py)

KiB = 1 << 10


def _lib_path(mnt: Mount, p: Path) -> str:
    return "/" + str(p.relative_to(mnt.path))


def test_a_write_on_one_mount_is_read_at_once_on_the_other(mnt: Mount, mnt2: Mount,
                                                           work: Path) -> None:
    other = mnt2.path / work.relative_to(mnt.path)
    (work / "f").write_bytes(b"a" * 64 * KiB)
    want = bytearray(b"a" * 64 * KiB)
    with open(work / "f", "r+b") as w, open(other / "f", "rb") as r:
        assert os.pread(r.fileno(), 64 * KiB, 0) == want  # kept by the kernel
        for round_ in range(3):
            new = bytes([ord("b") + round_]) * 4 * KiB
            assert os.pwrite(w.fileno(), new, 8 * KiB) == len(new)  # buffered on mnt
            want[8 * KiB:12 * KiB] = new
            assert os.pread(r.fileno(), 64 * KiB, 0) == want, round_
            # and the other way round: the reader's mount writes, the writer's reads
            back = bytes([ord("x") + round_]) * KiB
            with open(other / "f", "r+b") as w2:
                assert os.pwrite(w2.fileno(), back, 0) == KiB
                want[:KiB] = back
                assert os.pread(w.fileno(), 64 * KiB, 0) == want, round_


def test_the_library_reads_what_a_mount_has_buffered(mnt: Mount, work: Path,
                                                     lib: SyncClient) -> None:
    (work / "g").write_bytes(b"a" * 32 * KiB)
    with open(work / "g", "r+b") as w:
        assert os.pwrite(w.fileno(), b"z" * 4 * KiB, 4 * KiB) == 4 * KiB
        got = lib.read_file(_lib_path(mnt, work / "g"))
        assert got == b"a" * 4 * KiB + b"z" * 4 * KiB + b"a" * 24 * KiB


def test_a_library_write_drops_what_a_mount_kept(mnt: Mount, work: Path,
                                                 lib: SyncClient) -> None:
    (work / "h").write_bytes(b"a" * 32 * KiB)
    path = _lib_path(mnt, work / "h")
    with open(work / "h", "rb") as r:
        assert os.pread(r.fileno(), 32 * KiB, 0) == b"a" * 32 * KiB  # kept by the kernel
        f = lib.open(path, os.O_WRONLY)
        try:
            lib._run(f.write(b"q" * 2 * KiB, 16 * KiB))  # acknowledged by the OST: no close
            assert os.pread(r.fileno(), 32 * KiB, 0) == (
                b"a" * 16 * KiB + b"q" * 2 * KiB + b"a" * 14 * KiB)
        finally:
            lib._run(f.close())


def test_a_writer_that_stops_answering_is_evicted_and_the_reader_goes_on(
        cluster: LocalCluster, mnt: Mount, work: Path, lib: SyncClient,
        tmp_path: Path) -> None:
    """A mount that holds a PW lock and then stops (SIGSTOP: its sockets stay open) cannot
    hold up a reader for longer than LDLM_TIMEOUT: it is evicted, and the read is served."""
    (work / "e").write_bytes(b"a" * 32 * KiB)
    path = _lib_path(mnt, work / "e")
    frozen = mount_on(cluster, tmp_path / "frozen")
    m = next(frozen)
    try:
        where = m.path / work.relative_to(mnt.path) / "e"
        fd = os.open(where, os.O_RDWR)
        try:
            assert os.pwrite(fd, b"z" * 4 * KiB, 0) == 4 * KiB  # buffered, under PW
            os.kill(m.pid, signal.SIGSTOP)
            try:
                t0 = time.monotonic()
                got = lib.read_file(path)
                took = time.monotonic() - t0
            finally:
                os.kill(m.pid, signal.SIGCONT)
            assert got[4 * KiB:] == b"a" * 28 * KiB
            assert LDLM_TIMEOUT - 1 <= took <= LDLM_TIMEOUT + 10, took
            evicted = [line for p in (cluster.dir / "logs").glob("*.log")
                       for line in p.read_text(errors="replace").splitlines()
                       if "after its blocking callback" in line and "('oid', " in line]
            assert evicted
        finally:
            with contextlib.suppress(OSError):  # its buffered write may be lost: EIO
                os.close(fd)
    finally:
        frozen.close()


def test_a_files_size_is_seen_at_once_while_another_client_writes_it(
        mnt: Mount, mnt2: Mount, work: Path, lib: SyncClient) -> None:
    """The writer tells the MDT its size only at close, flush or fsync; every other client
    sees the size its writes made as soon as they returned: the MDT marks the file as
    written elsewhere, and the others ask its OSTs (a glimpse, which lands the writer's
    buffered writes first)."""
    other = mnt2.path / work.relative_to(mnt.path) / "s"
    path = _lib_path(mnt, work / "s")
    (work / "s").write_bytes(b"")
    assert other.stat().st_size == 0 and lib.stat(path).size == 0  # kept by both
    with open(work / "s", "r+b") as w:  # not O_APPEND: the MDT reserves an append's bytes
        for n in range(1, 4):
            assert os.pwrite(w.fileno(), b"x" * 3000, 3000 * (n - 1)) == 3000
            assert other.stat().st_size == 3000 * n
            assert lib.stat(path).size == 3000 * n
            assert other.read_bytes() == b"x" * 3000 * n
    # a library writer, the mount reading
    f = lib.open(path, os.O_WRONLY)
    try:
        lib._run(f.write(b"y" * 100, 20000))
        assert other.stat().st_size == 20100
        assert (work / "s").stat().st_size == 20100
    finally:
        lib._run(f.close())


def test_a_truncate_elsewhere_comes_after_the_writes_buffered_before_it(
        mnt: Mount, mnt2: Mount, work: Path, lib: SyncClient) -> None:
    """A writer's buffered writes made before another client's truncate land before it, and
    the size they report does not undo it."""
    other = mnt2.path / work.relative_to(mnt.path) / "t"
    path = _lib_path(mnt, work / "t")
    for truncate in (lambda: lib.truncate(path, 100), lambda: os.truncate(other, 100)):
        (work / "t").write_bytes(b"a" * 1000)
        with open(work / "t", "r+b") as w:
            assert os.pwrite(w.fileno(), b"z" * 8000, 0) == 8000  # buffered, past the end
            truncate()
            assert lib.stat(path).size == 100 and other.stat().st_size == 100
            assert os.fstat(w.fileno()).st_size == 100
        assert lib.stat(path).size == 100
        assert lib.read_file(path) == b"z" * 100
        assert other.read_bytes() == b"z" * 100


def test_a_write_only_files_writes_are_read_at_once_on_the_other_mount(
        mnt: Mount, mnt2: Mount, work: Path) -> None:
    """A write-only open's first write goes out as it is, its second under a PW lock: both
    seen by the other mount's open descriptor, whose pages were kept."""
    other = mnt2.path / work.relative_to(mnt.path) / "w"
    (work / "w").write_bytes(b"a" * 16 * KiB)
    with open(other, "rb") as r:
        assert os.pread(r.fileno(), 16 * KiB, 0) == b"a" * 16 * KiB  # kept by the kernel
        fd = os.open(work / "w", os.O_WRONLY)
        try:
            assert os.pwrite(fd, b"1" * KiB, 0) == KiB  # the first: sent as it is
            assert os.pread(r.fileno(), 16 * KiB, 0) == b"1" * KiB + b"a" * 15 * KiB
            assert os.pwrite(fd, b"2" * KiB, 4 * KiB) == KiB  # then buffered, under PW
            assert os.pread(r.fileno(), 16 * KiB, 0) == (
                b"1" * KiB + b"a" * 3 * KiB + b"2" * KiB + b"a" * 11 * KiB)
        finally:
            os.close(fd)
