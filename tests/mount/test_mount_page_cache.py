"""The kernel's pages of a file outlive its close, and a new open keeps them while the MDT
shows the file unchanged (mount/handles.py): a second read costs no OST read, and any change
another client closed (the library, another mount) is seen at the next open."""

from __future__ import annotations

import ctypes
import mmap
import os
import random
import threading
import time
from pathlib import Path

from shoal.client.client import Client
from shoal.client.sync import SyncClient
from shoal.net import loop
from tests.helpers import ost_reads, ost_reads_settled
from tests.mount.conftest import Mount

MiB = 1 << 20
PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)


class _SharedMap:
    """A read-only MAP_SHARED map of a whole file, through libc: Python's mmap object gives
    no address for mincore(2) unless the map is writable."""

    def __init__(self, fd: int, length: int) -> None:
        _libc.mmap.restype = ctypes.c_void_p
        addr = _libc.mmap(None, ctypes.c_size_t(length), mmap.PROT_READ, mmap.MAP_SHARED, fd,
                          ctypes.c_long(0))
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap")
        self.addr, self.length = addr, length

    def read(self) -> bytes:
        return ctypes.string_at(self.addr, self.length)

    def resident_pages(self) -> int:
        """How many of the map's pages are in the kernel's page cache."""
        vec = (ctypes.c_ubyte * (-(-self.length // PAGE)))()
        if _libc.mincore(ctypes.c_void_p(self.addr), ctypes.c_size_t(self.length), vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
        return sum(b & 1 for b in vec)

    def close(self) -> None:
        _libc.munmap(ctypes.c_void_p(self.addr), ctypes.c_size_t(self.length))


def _lib_path(mnt: Mount, p: Path) -> str:
    return "/" + str(p.relative_to(mnt.path))


def test_unchanged_file_is_read_again_from_memory(cluster, mnt: Mount, work: Path,
                                                  lib: SyncClient) -> None:
    data = os.urandom(8 * MiB)
    lib.write_file(_lib_path(mnt, work / "in"), data)
    assert (work / "in").read_bytes() == data
    # the OST counters are the whole cluster's: another client's late read (the stalled-OSS
    # test's, say) may land in a round; a mount that reread the file would add reads to
    # every round (8 MiB x 3), so one clean round out of three shows the pages were used
    rounds = []
    for _ in range(3):
        before = ost_reads_settled(cluster.dir)
        for _ in range(3):
            assert (work / "in").read_bytes() == data
        rounds.append(ost_reads(cluster.dir) - before)
        if rounds[-1] == 0:
            break
    assert rounds[-1] == 0, rounds  # every byte came from the kernel's pages


def test_reopen_sees_an_in_place_overwrite_by_the_library(cluster, mnt: Mount, work: Path,
                                                          lib: SyncClient) -> None:
    """Same size, same layout: only the version the close moves tells the change."""
    old, new = os.urandom(4 * MiB), os.urandom(4 * MiB)
    path = _lib_path(mnt, work / "f")
    lib.write_file(path, old)
    assert (work / "f").read_bytes() == old
    version = lib.stat(path).version

    async def overwrite() -> None:
        async with Client.from_cluster_dir(cluster.dir) as c:
            f = await c.open(path, os.O_WRONLY)
            await f.write(new, 0)
            await f.close()

    loop.run(overwrite())
    after = lib.stat(path)
    assert after.size == len(old) and after.version > version
    assert (work / "f").read_bytes() == new


def test_reopen_sees_another_mounts_change(mnt: Mount, mnt2: Mount, work: Path) -> None:
    other = mnt2.path / work.relative_to(mnt.path)
    (work / "g").write_bytes(b"a" * MiB)
    assert (work / "g").read_bytes() == b"a" * MiB  # pages cached here
    assert (other / "g").read_bytes() == b"a" * MiB
    with open(other / "g", "r+b") as f:
        f.seek(4096)
        f.write(b"b" * 4096)
    assert (work / "g").read_bytes() == b"a" * 4096 + b"b" * 4096 + b"a" * (MiB - 8192)
    os.truncate(other / "g", 100)
    assert (work / "g").read_bytes() == b"a" * 100


def test_own_writes_then_reads_are_never_stale(mnt: Mount, work: Path,
                                               lib: SyncClient) -> None:
    (work / "h").write_bytes(b"1" * 10000)
    with open(work / "h", "r+b") as f:
        f.seek(5000)
        f.write(b"2" * 10)
    want = b"1" * 5000 + b"2" * 10 + b"1" * 4990
    assert (work / "h").read_bytes() == want
    assert lib.read_file(_lib_path(mnt, work / "h")) == want


def test_write_only_descriptors_bypass_the_page_cache(mnt: Mount, work: Path) -> None:
    """O_WRONLY opens are direct I/O (mount/fs.py): their writes drop the pages of the range
    they write, without filling them again, and a shared map of the file sees the new bytes."""
    path = work / "d"
    path.write_bytes(b"a" * (4 * MiB))
    with open(path, "rb") as r:
        m = _SharedMap(r.fileno(), 4 * MiB)  # as np.load(mmap_mode="r") maps
        try:
            assert m.read() == b"a" * (4 * MiB)
            assert m.resident_pages() == 4 * MiB // PAGE
            fd = os.open(path, os.O_WRONLY)
            try:
                os.pwrite(fd, b"c" * (2 * MiB), 0)
                # the written range's pages are gone, not refilled; the rest stay
                assert m.resident_pages() == 2 * MiB // PAGE
            finally:
                os.close(fd)
            assert m.read() == b"c" * (2 * MiB) + b"a" * (2 * MiB)
            with open(path, "r+b") as rw:  # readable: through the page cache, as before
                rw.write(b"b" * MiB)
            assert m.read() == b"b" * MiB + b"c" * MiB + b"a" * (2 * MiB)
        finally:
            m.close()
    assert path.read_bytes() == b"b" * MiB + b"c" * MiB + b"a" * (2 * MiB)


def test_a_write_into_a_file_this_mount_read_keeps_its_other_pages(mnt: Mount,
                                                                   work: Path) -> None:
    """A write through a readable descriptor lands from the kernel's page cache under a PW
    lock, for which the mount gives up the PR lock its reads were kept under (an upgrade).
    Where no other client wanted the file meanwhile, the kernel's pages of it are still
    the file as it is, and stay: dropping them waited on the very page being written back,
    half a second a write (SETTLE_WAIT), and lost every page of the file."""
    path = work / "rmw"
    pages = 64
    data = bytearray(os.urandom(pages * PAGE))
    path.write_bytes(data)
    with open(path, "rb") as r:
        m = _SharedMap(r.fileno(), len(data))
        try:
            assert m.read() == data
            assert m.resident_pages() == pages
            with open(path, "r+b") as rw:
                rw.seek(10 * PAGE)
                rw.write(b"z" * PAGE)
            data[10 * PAGE:11 * PAGE] = b"z" * PAGE
            assert m.resident_pages() == pages
            assert m.read() == data
        finally:
            m.close()
    assert path.read_bytes() == data


def test_another_clients_write_is_seen_while_this_mount_upgrades_its_lock(
        mnt: Mount, mnt2: Mount, work: Path, lib: SyncClient) -> None:
    """This mount writes into a file it has read (an upgrade of its PR lock to PW, page 0)
    while the library writes another page of it: once the library's write has returned, a
    read through this mount shows it, whichever of the two the OST took first. The first
    version of the kept upgrade let the library's write through before this mount's pages
    went (stale reads in 5-8 rounds of 400, found by review); a2f5d64 had none."""
    path = work / "race"
    size = 16 * PAGE
    path.write_bytes(b"a" * size)
    lf = lib.open(_lib_path(mnt, path), os.O_RDWR)
    rfd = os.open(path, os.O_RDONLY)
    rw = os.open(path, os.O_RDWR)
    rng = random.Random(3)
    stale = 0

    def own_write(go: threading.Barrier, done: threading.Event) -> None:
        go.wait()
        os.pwrite(rw, b"z", 0)
        os.fsync(rw)
        done.set()

    def lib_write(go: threading.Barrier, done: threading.Event, tag: bytes,
                  pause: float) -> None:
        go.wait()
        time.sleep(pause)
        lib.pwrite(lf, tag, 8 * PAGE)
        done.set()

    try:
        for i in range(200):
            tag = b"%07d|" % i
            assert len(os.pread(rfd, size, 0)) == size  # pages kept, under PR
            go = threading.Barrier(2)
            lib_done, own_done = threading.Event(), threading.Event()
            ts = [threading.Thread(target=own_write, args=(go, own_done)),
                  threading.Thread(target=lib_write,
                                   args=(go, lib_done, tag, rng.uniform(0, 0.002)))]
            for t in ts:
                t.start()
            lib_done.wait()
            seen = [os.pread(rfd, 8, 8 * PAGE)]
            while not own_done.is_set():
                seen.append(os.pread(rfd, 8, 8 * PAGE))
            for t in ts:
                t.join()
            seen.append(os.pread(rfd, 8, 8 * PAGE))
            stale += any(x != tag for x in seen)
    finally:
        os.close(rfd)
        os.close(rw)
        lib.close_file(lf)
    assert stale == 0
