"""FIFOs, Unix sockets and device nodes on the mount (issue 19): inodes of the MDT alone,
whose I/O the kernel of the mounting host does itself. mknod(2) used to fail with EPERM even
as root, and every later step on the name failed with it (pjdfstest: 3,591 failures)."""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from shoal.client.sync import SyncClient

if TYPE_CHECKING:
    from tests.mount.conftest import Mount

ROOT = os.geteuid() == 0


def rel(mnt: Mount, p: Path) -> str:
    return "/" + str(p.relative_to(mnt.path))


def test_a_fifo_carries_data_from_a_writer_to_a_reader(work: Path, mnt: Mount,
                                                      lib: SyncClient) -> None:
    fifo = work / "fifo"
    os.mkfifo(fifo, 0o640)
    st = os.lstat(fifo)
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_size == 0
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    with open(fifo, "wb") as w:  # blocks until the reader has opened it
        w.write(b"through the pipe\n" * 1000)
    reader.join(30)
    assert got == [b"through the pipe\n" * 1000]
    # another client (the library) sees a FIFO too
    a = lib.stat(rel(mnt, fifo))
    assert a.type == "p" and stat.S_ISFIFO(a.mode)
    with pytest.raises(FileExistsError):
        os.mkfifo(fifo)


def test_a_unix_socket_bound_on_the_mount_accepts_connections(
        work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a relative name: the test's directory can be longer than sun_path's 107 bytes
    monkeypatch.chdir(work)
    path = "sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(path)
        server.listen(1)
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(path)
        peer, _ = server.accept()
        client.sendall(b"hello")
        assert peer.recv(5) == b"hello"
        peer.close()
        client.close()
    finally:
        server.close()
    os.unlink(path)
    assert not os.path.lexists(path)


@pytest.mark.skipif(not ROOT, reason="mknod of a device node needs root")
def test_device_nodes_keep_their_numbers(work: Path, mnt: Mount, lib: SyncClient) -> None:
    char, block = work / "null", work / "loop"
    os.mknod(char, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(block, stat.S_IFBLK | 0o600, os.makedev(7, 250))
    st = os.lstat(char)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert stat.S_ISBLK(os.lstat(block).st_mode)
    assert os.lstat(block).st_rdev == os.makedev(7, 250)
    a = lib.stat(rel(mnt, char))
    assert a.type == "c" and a.rdev == os.makedev(1, 3)


def test_special_files_take_every_namespace_operation(work: Path) -> None:
    fifo = work / "p"
    os.mkfifo(fifo, 0o600)
    os.chmod(fifo, 0o604)
    assert stat.S_IMODE(os.lstat(fifo).st_mode) == 0o604
    os.chown(fifo, 1234, 5678)
    assert (os.lstat(fifo).st_uid, os.lstat(fifo).st_gid) == (1234, 5678)
    os.utime(fifo, ns=(1_600_000_000_000_000_000, 1_650_000_000_000_000_000))
    assert os.lstat(fifo).st_mtime_ns == 1_650_000_000_000_000_000
    os.link(fifo, work / "p2")
    assert os.lstat(fifo).st_nlink == 2
    assert stat.S_ISFIFO(os.lstat(work / "p2").st_mode)
    os.rename(work / "p2", work / "p3")
    assert sorted(os.listdir(work)) == ["p", "p3"]
    with os.scandir(work) as it:  # the types readdir gives (DirEntry has no is_fifo)
        assert all(not e.is_file(follow_symlinks=False) and not e.is_dir() for e in it)
    with pytest.raises(OSError) as info:
        os.truncate(fifo, 0)  # as on ext4: a FIFO has no size to set
    assert info.value.errno == errno.EINVAL
    os.unlink(fifo)
    assert os.lstat(work / "p3").st_nlink == 1
    os.unlink(work / "p3")
    assert os.listdir(work) == []


def test_the_library_makes_special_files_and_refuses_other_modes(lib: SyncClient) -> None:
    from shoal.errors import InvalidArgument

    d = f"/lib-special-{os.getpid()}"
    lib.mkdir(d)
    a = lib.mknod(f"{d}/fifo", stat.S_IFIFO | 0o644)
    assert a.type == "p" and a.mode == stat.S_IFIFO | 0o644 and a.rdev == 0
    with pytest.raises(InvalidArgument):
        lib.mknod(f"{d}/reg", stat.S_IFREG | 0o644)  # a regular file is create's
    with pytest.raises(InvalidArgument):
        lib.mknod(f"{d}/dir", stat.S_IFDIR | 0o755)
    assert [n for n, _ino, _t in lib.readdir(d)] == ["fifo"]


def test_a_sparse_file_uses_only_the_blocks_written(work: Path, mnt: Mount,
                                                   lib: SyncClient) -> None:
    """`truncate -s 1G` showed 2,097,152 blocks and `du` 1G, where ext4 shows 0."""
    sparse = work / "sparse"
    with open(sparse, "wb") as f:
        f.truncate(1 << 30)
    assert sparse.stat().st_size == 1 << 30 and sparse.stat().st_blocks == 0
    du = subprocess.run(["du", "-k", str(sparse)], capture_output=True, text=True, check=True)
    assert du.stdout.split()[0] == "0"
    with open(sparse, "r+b") as f:
        f.seek(3 << 20)
        f.write(b"tail")
    assert sparse.stat().st_blocks == 8  # one 4 KiB page, as ext4 allocates
    full = work / "full"
    full.write_bytes(os.urandom(1 << 20))
    assert full.stat().st_blocks == 2048
    assert lib.stat(rel(mnt, full)).blocks == 2048  # the MDT has it: every client sees it
    os.truncate(full, 5000)
    assert full.stat().st_blocks == 16
