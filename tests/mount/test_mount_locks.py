"""Two mounts of one file system, each keeping names and attributes in the kernel under the
MDT's locks (issue 20): what one changes, the other sees at the next look, however long the
kernel would otherwise keep it."""

from __future__ import annotations

import mmap
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shoal.client.sync import SyncClient
from shoal.cluster.local import LocalCluster
from shoal.protocol.fail_loc import FAIL_ONCE, FAILED, Code
from tests.mount.conftest import Mount, metered
from tests.scenarios.harness import params, scrape, set_fail, urls

MDS = "nid00060"


def test_what_one_mount_changes_the_other_sees_at_once(work: Path, mnt: Mount, mnt2: Mount,
                                                        lib: SyncClient) -> None:
    rel = work.relative_to(mnt.path)
    a, b = work, mnt2.path / rel
    (a / "f").write_bytes(b"1234")
    for _ in range(3):  # cached by both kernels now
        assert stat.S_IMODE((b / "f").stat().st_mode) == 0o644
        assert (a / "f").stat().st_size == 4
    os.chmod(a / "f", 0o600)
    assert stat.S_IMODE((b / "f").stat().st_mode) == 0o600
    (b / "f").write_bytes(b"123456789")
    assert (a / "f").stat().st_size == 9
    assert (a / "f").read_bytes() == b"123456789"
    os.rename(b / "f", b / "g")
    assert not (a / "f").exists()
    assert (a / "g").read_bytes() == b"123456789"
    (a / "d").mkdir()
    assert sorted(p.name for p in b.iterdir()) == ["d", "g"]
    os.rmdir(a / "d")
    with pytest.raises(FileNotFoundError):
        (b / "d").stat()
    os.unlink(b / "g")
    assert not (a / "g").exists()
    # the library (no locks) and the mounts agree
    lib.create(f"/{rel}/h", 0o640)
    assert stat.S_IMODE((a / "h").stat().st_mode) == 0o640
    lib.chmod(f"/{rel}/h", 0o604)
    assert stat.S_IMODE((b / "h").stat().st_mode) == 0o604
    assert stat.S_IMODE((a / "h").stat().st_mode) == 0o604


def test_a_change_beside_a_directory_leaves_the_processes_inside_it_where_they_are(
        work: Path, mnt: Mount, mnt2: Mount) -> None:
    """The other mount's change in a directory calls back this mount's lock on it: the
    names it kept there are forgotten, but a directory that is some process's cwd must stay
    in the tree (getcwd, relative paths)."""
    rel = work.relative_to(mnt.path)
    a, b = work, mnt2.path / rel
    (a / "d").mkdir()
    (a / "d" / "f").write_text("x")
    here = Path.cwd()
    os.chdir(a / "d")
    try:
        for i in range(3):
            assert Path("f").read_text() == "x"  # the names cached by this mount's kernel
            (b / f"beside{i}").write_text("y")  # calls back this mount's lock on `work`
            assert os.getcwd() == str(a / "d")
            assert Path("f").read_text() == "x"
    finally:
        os.chdir(here)


def test_an_absent_name_one_mount_looked_for_appears_when_the_other_makes_it(
        work: Path, mnt: Mount, mnt2: Mount) -> None:
    """The kernel keeps the name's absence (a negative dentry) under the directory's lock:
    the other mount's create calls it back before it is acknowledged."""
    rel = work.relative_to(mnt.path)
    a, b = work, mnt2.path / rel
    for _ in range(3):
        assert not (a / "later").exists()
        assert not (a / "later.py").exists()
    (b / "later").write_text("here")
    assert (a / "later").read_text() == "here"
    os.rename(b / "later", b / "later.py")
    assert not (a / "later").exists()
    assert (a / "later.py").read_text() == "here"


def test_a_listing_the_kernel_keeps_shows_every_change_of_the_others_at_once(
        work: Path, mnt: Mount, mnt2: Mount, lib: SyncClient) -> None:
    """Listings are kept in the kernel's pages under the directory's lock (kernel_cache.py):
    another mount's or the library's change to the directory is in the next listing, in a
    directory of one page and in one of many (names long enough to need several readdirs)."""
    rel = work.relative_to(mnt.path)
    long = "n" * 200
    for many in (False, True):
        a = work / ("many" if many else "few")
        b = mnt2.path / rel / a.name
        a.mkdir()
        names = {f"{long if many else 'x'}{i}" for i in range(300 if many else 4)}
        for n in names:
            (a / n).touch()
        for _ in range(3):  # kept by this mount's kernel now
            assert set(os.listdir(a)) == names
        (b / "made").touch()
        names.add("made")
        assert set(os.listdir(a)) == names
        victim = sorted(names)[1]
        os.unlink(b / victim)
        names.discard(victim)
        assert set(os.listdir(a)) == names
        os.rename(b / "made", b / "renamed")
        names = (names - {"made"}) | {"renamed"}
        assert set(os.listdir(a)) == names
        (b / "sub").mkdir()
        assert set(os.listdir(a)) == names | {"sub"}
        os.rmdir(b / "sub")
        (mnt2.path / rel / "moved_in").touch()
        os.rename(mnt2.path / rel / "moved_in", b / "moved_in")  # from another directory
        names.add("moved_in")
        assert set(os.listdir(a)) == names
        lib.create(f"/{rel}/{a.name}/by_lib", 0o644)
        names.add("by_lib")
        assert set(os.listdir(a)) == names
        assert {e.name for e in os.scandir(a)} == names  # scandir's d_type path too


@pytest.fixture(scope="module")
def counted(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Mount, Callable[[], dict[str, float]]]]:
    """A mount of its own, and a function that reads its metrics (tests/mount/conftest.py
    `metered`)."""
    yield from metered(cluster, tmp_path_factory.mktemp("counted"))


def test_names_made_here_stay_known_through_the_next_creates(
        counted: tuple[Mount, Callable[[], dict[str, float]]]) -> None:
    """Each mkdir in a directory gives back this client's lock on the directory's names,
    but a directory's name is kept under its own LOOKUP lock too: the kernel keeps it
    (tar makes a tree's directories, then walks them to fill them)."""
    m, requests = counted
    d = m.path / f"made-{os.getpid()}"
    d.mkdir()
    for i in range(20):
        (d / f"d{i}").mkdir()
    before = requests()
    for i in range(20):
        assert stat.S_ISDIR(os.lstat(d / f"d{i}").st_mode)
    assert requests().get("lookup", 0) == before.get("lookup", 0)


def test_names_of_files_written_here_stay_known_through_their_setattrs(
        counted: tuple[Mount, Callable[[], dict[str, float]]]) -> None:
    """A file's name and attributes are kept under one lock; its own setattrs (tar's chown,
    chmod and utimens, the size report at close) give it back and ask it again with the
    name, which the MDT confirms: the kernel keeps the names (git checks every file it
    checked out)."""
    m, requests = counted
    d = m.path / f"written-{os.getpid()}"
    d.mkdir()
    for i in range(10):
        p = d / f"f{i}"
        p.write_text("x" * i)
        os.chmod(p, 0o600)
        os.utime(p, ns=(10**18, 10**18))
    before = requests()
    for i in range(10):
        s = os.lstat(d / f"f{i}")
        assert (s.st_size, stat.S_IMODE(s.st_mode), s.st_mtime_ns) == (i, 0o600, 10**18)
    assert requests().get("lookup", 0) == before.get("lookup", 0)


def _mdt_setattrs(cluster: LocalCluster) -> float:
    """setattr requests the cluster's targets served so far (the MDT's, by its metrics)."""
    return sum(v for url in urls(cluster).values()
               for (name, labels), v in scrape(url).items()
               if name == "shoal_target_requests_total" and ("operation", "setattr") in labels)


def test_a_setattr_after_writes_carries_their_size_report(
        cluster: LocalCluster, counted: tuple[Mount, Callable[[], dict[str, float]]],
        lib: SyncClient) -> None:
    """tar writes a file, sets its times and mode, then closes it: the size report goes
    with the first setattr, and the flush at close has nothing left to send (a round trip
    to the MDT less a file). What the MDT keeps is what the program did."""
    m, _ = counted
    d = m.path / f"tarlike-{os.getpid()}"
    d.mkdir()
    before = _mdt_setattrs(cluster)
    for i in range(10):
        fd = os.open(d / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"x" * (1000 + i))
            os.utime(fd, ns=(10**18, 10**18 + i))
            os.fchmod(fd, 0o640)
        finally:
            os.close(fd)
    assert _mdt_setattrs(cluster) - before == 20  # utime and chmod; the reports rode along
    for i in range(10):
        s = lib.stat(f"/{d.relative_to(m.path)}/f{i}")
        assert (s.size, stat.S_IMODE(s.mode), s.mtime) == (1000 + i, 0o640, (10**18 + i) / 1e9)
        assert (d / f"f{i}").read_bytes() == b"x" * (1000 + i)


def test_a_read_only_close_sends_no_flush_and_a_writers_close_still_reports(
        counted: tuple[Mount, Callable[[], dict[str, float]]], lib: SyncClient) -> None:
    """A descriptor opened read-only wrote nothing: its close(2) sends the mount no FLUSH
    (FOPEN_NOFLUSH). One opened for writing still flushes, and what it wrote is on the MDT
    when its close returns, even while a read-only descriptor of the file is open."""
    m, requests = counted
    d = m.path / f"noflush-{os.getpid()}"
    d.mkdir()
    for i in range(5):
        (d / f"f{i}").write_bytes(b"x" * i)
    before = requests()
    for i in range(5):
        with open(d / f"f{i}", "rb") as f:
            assert f.read() == b"x" * i
    assert requests().get("flush", 0) == before.get("flush", 0)
    with open(d / "f4", "rb") as r:
        with open(d / "f4", "ab") as w:
            w.write(b"y" * 100)
        assert requests().get("flush", 0) == before.get("flush", 0) + 1
        assert lib.stat(f"/{d.relative_to(m.path)}/f4").size == 104
        assert r.read() == b"x" * 4 + b"y" * 100


def test_a_listing_read_again_asks_the_mount_nothing(
        counted: tuple[Mount, Callable[[], dict[str, float]]], mnt2: Mount) -> None:
    """The kernel opens directories itself and lists them again from its pages: a walk of
    a tree read once sends the mount no request at all, and one after another client's
    change asks only for what changed."""
    m, requests = counted
    top = m.path / f"walk-{os.getpid()}"
    for d in range(5):
        (top / f"d{d}").mkdir(parents=True)
        for f in range(10):
            (top / f"d{d}" / f"f{f}").write_text("x")

    def walk() -> list[tuple[str, int]]:
        return sorted((os.path.join(r, n), os.lstat(os.path.join(r, n)).st_size)
                      for r, ds, fs in os.walk(top) for n in ds + fs)

    first = walk()
    walk()  # what the first walk's listings brought is under locks now
    before = requests()
    assert walk() == first
    after = requests()
    assert {op: after[op] - before.get(op, 0) for op in after
            if after[op] != before.get(op, 0)} == {}
    # another client's create in one directory: that one is listed again, nothing else
    (mnt2.path / top.relative_to(m.path) / "d3" / "new").write_text("y")
    before = requests()
    assert ("/".join((str(top), "d3", "new")), 1) in walk()
    after = requests()
    assert 0 < after.get("readdir", 0) - before.get("readdir", 0) <= 2
    assert after.get("opendir", 0) <= 1  # answered ENOSYS once: the kernel opens them


def test_removing_while_listing_skips_nothing_whoever_else_lists(work: Path) -> None:
    """Readers of a directory share the kernel's listing and the mount's: an entry's place
    must mean the same in every copy, or a program that removes what it reads while another
    lists the directory skips entries (with places as indexes: every other one)."""
    d = work / "big"
    d.mkdir()
    names = [f"{'e' * 150}{i:04d}" for i in range(400)]  # several readdir replies
    for n in names:
        (d / n).touch()
    stop = threading.Event()
    errors: list[BaseException] = []

    def lister() -> None:
        try:
            while not stop.is_set():
                os.listdir(d)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    others = [threading.Thread(target=lister) for _ in range(2)]
    for t in others:
        t.start()
    try:
        removed = 0
        with os.scandir(d) as it:
            for e in it:
                os.unlink(e.path)
                removed += 1
    finally:
        stop.set()
        for t in others:
            t.join(30)
    assert not errors
    assert os.listdir(d) == [] and removed == len(names)
    seen: list[str] = []
    for n in names[:50]:
        (d / n).touch()
    with os.scandir(d) as it:  # telldir/seekdir-like: a place taken goes on in the new copy
        for i, e in enumerate(it):
            seen.append(e.name)
            if i == 10:
                (d / "zz-new").touch()  # a change: the next reply comes from a new listing
    assert set(names[:50]) <= set(seen) and len(seen) == len(set(seen))


def test_names_a_listing_brought_stay_known_through_this_mounts_unlinks(
        counted: tuple[Mount, Callable[[], dict[str, float]]], lib: SyncClient) -> None:
    """A listing brings each file's name under the file's own lock, so an `rm -rf` after
    it (each unlink gives back this client's lock on the directory) asks no lookups."""
    m, requests = counted
    # made by another client (names made here are kept anyway: these come from a listing;
    # and no close of this mount's is still on its way to the MDT when they are listed)
    name = f"listed-{os.getpid()}"
    lib.mkdir(f"/{name}", 0o755)
    for i in range(10):
        lib.write_file(f"/{name}/f{i}", b"x")
    m2 = m.path / name
    assert sorted(os.listdir(m2)) == sorted(f"f{i}" for i in range(10))
    before = requests()
    for i in range(10):
        os.unlink(m2 / f"f{i}")
    assert requests().get("lookup", 0) == before.get("lookup", 0)
    assert os.listdir(m2) == []


def test_a_name_this_mount_renamed_to_follows_the_others_changes(
        work: Path, mnt: Mount, mnt2: Mount) -> None:
    """The kernel moves the renamed entry to its new name with the old one's validity; no
    lock covers it after the rename, so it must be asked again: another mount's rename of
    it and a new file under the name show at once (found by the review of eb7c5e9)."""
    rel = work.relative_to(mnt.path)
    a, b = work, mnt2.path / rel
    (a / "d1").mkdir()
    (a / "d2").mkdir()
    (a / "d1" / "f").write_text("old")
    for _ in range(3):
        os.stat(a / "d1" / "f")
    os.rename(a / "d1" / "f", a / "d2" / "g")
    assert (a / "d2" / "g").read_text() == "old"
    os.rename(b / "d2" / "g", b / "d2" / "kept")
    (b / "d2" / "g").write_text("new!")
    assert (a / "d2" / "g").read_text() == "new!"
    assert os.stat(a / "d2" / "g").st_ino == os.stat(b / "d2" / "g").st_ino
    os.rename(a / "d2" / "g", a / "d2" / "h")  # and within one directory
    os.stat(a / "d2" / "h")
    os.unlink(b / "d2" / "h")
    assert not os.path.exists(a / "d2" / "h")


def _mdt_readdirs(cluster: LocalCluster) -> int:
    """Readdir requests the MDT has served so far (its stats, as `lctl get_param` shows)."""
    out = subprocess.run([sys.executable, "-m", "shoal", "ctl", "get_param", "--dir",
                          str(cluster.dir), "mdt.*.stats"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return sum(int(line.split()[1]) for line in out.splitlines()
               if line.split()[:1] == ["readdir"])


def test_a_cold_listing_asks_for_its_subdirectories_listings_ahead(
        cluster: LocalCluster, counted: tuple[Mount, Callable[[], dict[str, float]]],
        mnt2: Mount) -> None:
    """A directory listed from the MDT has its subdirectories' listings asked for in the
    background (mount/dirs.py ListingsAhead): a walk going into them then finds them kept
    and asks the MDT nothing more."""
    m, _requests = counted
    name = f"ahead-{os.getpid()}"
    for d in range(3):  # made through the other mount: nothing of it is kept in this one
        (mnt2.path / name / f"d{d}").mkdir(parents=True)
        (mnt2.path / name / f"d{d}" / "f").write_text("x")
    before = _mdt_readdirs(cluster)
    assert len(os.listdir(m.path / name)) == 3
    deadline = time.monotonic() + 30
    while (got := _mdt_readdirs(cluster)) < before + 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert got == before + 4  # the directory, and its three subdirectories ahead
    for d in range(3):
        assert os.listdir(m.path / name / f"d{d}") == ["f"]
    assert _mdt_readdirs(cluster) == before + 4  # nothing asked again


def test_a_small_files_read_goes_with_its_open_and_sees_every_change(
        counted: tuple[Mount, Callable[[], dict[str, float]]], mnt2: Mount,
        lib: SyncClient) -> None:
    """A read-only open of a small file whose attributes this mount keeps sends the file's
    read with it (mount/early_read.py), and the kernel's read finds it: one round trip
    less for every file a diff, an import or git reads. What another client changed is
    what is read, never what was read before."""
    m, requests = counted
    name = f"early-{os.getpid()}"
    there, here = mnt2.path / name, m.path / name
    there.mkdir()
    for i in range(3):
        (there / f"f{i}").write_bytes(b"%d" % i * 1000)
    (there / "big").write_bytes(b"b" * (2 << 20))  # past SMALL: opened for a look, perhaps
    assert sorted(os.listdir(here)) == ["big", "f0", "f1", "f2"]  # attributes, under locks
    before = requests()
    for i in range(3):
        assert (here / f"f{i}").read_bytes() == b"%d" % i * 1000
    # and went into the kernel's pages with the open: the small files' reads asked nothing
    small = requests()
    assert small.get("read", 0) == before.get("read", 0)
    assert small["early_stored"] - before["early_stored"] == 3
    assert (here / "big").read_bytes() == b"b" * (2 << 20)
    after = requests()
    assert after["early_sent"] - before["early_sent"] == 3  # not for the big one
    assert after["early_used"] - before["early_used"] == 3
    # changed by the other mount and by the library, the same size: the bytes read are new
    (there / "f0").write_bytes(b"x" * 1000)
    assert (here / "f0").read_bytes() == b"x" * 1000
    f = lib._run(lib.client.open(f"/{name}/f1", os.O_RDWR))
    try:
        lib._run(f.write(b"y" * 10, 500))
    finally:
        lib._run(f.close())
    assert (here / "f1").read_bytes() == b"1" * 500 + b"y" * 10 + b"1" * 490
    with open(here / "f0", "rb") as r:  # a map of the stored pages
        with mmap.mmap(r.fileno(), 0, prot=mmap.PROT_READ) as mm:
            assert mm[:] == b"x" * 1000
    # a file read once keeps its open handle under an OPEN lock: its next open asks
    # nobody, and its read goes after it (the kernel keeps the pages anyway)
    assert (here / "f2").read_bytes() == b"2" * 1000
    assert requests()["early_sent"] == after["early_sent"]


def test_a_close_waits_for_the_size_report_a_setattr_of_another_process_carries(
        cluster: LocalCluster, mnt: Mount, work: Path, lib: SyncClient) -> None:
    """A chmod of a file with unreported writes carries their size report; the writer's
    close meanwhile finds nothing left to report, and still returns only once that report
    is on the MDT (the setattr is held there a while): close-to-open for the next client.
    (Found by session 26's review: the close overtook it.)"""
    path = work / "f"
    rel = f"/{path.relative_to(mnt.path)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"z" * 100)  # buffered by the mount, its size not reported
        set_fail(cluster, MDS, loc=hex(FAIL_ONCE | Code.DELAY_REQ), opc="setattr",
                 target="scratch-MDT0000", ms="1500")
        chmod = threading.Thread(target=os.chmod, args=(path, 0o600))
        chmod.start()
        deadline = time.monotonic() + 30
        while not int(params(cluster, MDS, "fail_loc")["fail_loc"], 0) & FAILED:
            assert time.monotonic() < deadline, "the chmod's setattr never reached the MDT"
            time.sleep(0.02)  # the setattr is held at the MDT now
    finally:
        os.close(fd)
    try:
        raw = lib._run(lib.client.mdt.call("getattr", {"path": rel})).data
        assert raw["size"] == 100  # as the MDT has it, no glimpse of the OSTs
    finally:
        chmod.join()
        set_fail(cluster, MDS, loc="0")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and path.read_bytes() == b"z" * 100
