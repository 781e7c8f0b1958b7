"""Programs on a real mount keep running through a server failover (issue 6).

Each test has a cluster of its own, a real FUSE mount of it, a real program working on the
mount, and a node killed under it (SIGKILL of the node's process group: power off). The
program must see no error, only a stall, and every byte it wrote is checked afterwards. The
program of the last test lives on the mount itself, interpreter and libpython included, and
keeps running through an MDS failover on a long-up mount and on one just booted.

Nodes (src/shoal/cluster/scratch.fs_defs): nid00060 serves MGS+MDT0000 (backup nid00061);
nid00062 serves OST0000 and OST0002 (backup nid00063).
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shoal.client.sync import SyncClient
from shoal.cluster.local import LocalCluster
from shoal.workload.bench_mount import start_mount, stop_mount
from tests.mount.failover_helpers import (
    DATA_PROGRAM,
    META_PROGRAM,
    FMount,
    Mounts,
    Program,
    install_app,
    interpreter_files,
    run_through,
    start_app,
    tree_of,
)
from tests.scenarios.harness import served_by, wait_for

MiB = 1 << 20
OSS_A, OSS_B = "nid00062", "nid00063"
MDS_A, MDS_B = "nid00060", "nid00061"
A_OSTS = ["scratch-OST0000", "scratch-OST0002"]
MDS_TARGETS = ["MGS", "scratch-MDT0000"]

pytestmark = pytest.mark.timeout(120)


def test_reader_writer_through_an_oss_kill(fresh_cluster: LocalCluster, mounts: Mounts,
                                           tmp_path: Path) -> None:
    m = mounts.new()
    script = tmp_path / "rw.py"
    script.write_text(DATA_PROGRAM)
    work = m.path / "rw"
    work.mkdir()
    prog = Program([sys.executable, script, work, tmp_path / "ctl"], tmp_path / "ctl")
    try:
        [report] = run_through(fresh_cluster, [prog], OSS_A, OSS_B, A_OSTS)
    finally:
        prog.kill()
    sums = report["sums"]
    assert sorted(os.listdir(work)) == sorted(sums)
    for name, want in sums.items():  # through the mount, and through another client
        assert hashlib.sha256((work / name).read_bytes()).hexdigest() == want, name
    with SyncClient.from_cluster_dir(fresh_cluster.dir) as lib:
        for name, want in sums.items():
            assert hashlib.sha256(lib.read_file(f"/rw/{name}")).hexdigest() == want, name


def test_what_a_mount_buffered_and_kept_before_an_oss_kill_stays_coherent(
        fresh_cluster: LocalCluster, mounts: Mounts) -> None:
    """Its extent locks are replayed in the backup's window (client/data_locks.py): a write
    it buffered before the kill lands before another client's read after it, and pages it
    kept go when another client writes after it."""
    m = mounts.new()
    kib = 1 << 10
    with SyncClient.from_cluster_dir(fresh_cluster.dir) as lib:
        for name in ("buffered", "kept"):
            lib.write_file(f"/{name}", b"a" * 32 * kib, stripe_count=1, stripe_offset=0)
        with open(m.path / "buffered", "r+b") as w, open(m.path / "kept", "rb") as r:
            assert os.pwrite(w.fileno(), b"z" * 4 * kib, 4 * kib) == 4 * kib  # buffered
            assert os.pread(r.fileno(), 32 * kib, 0) == b"a" * 32 * kib  # kept
            assert fresh_cluster.kill_node(OSS_A)
            wait_for("OSS_B serving the OSTs", served_by(fresh_cluster, OSS_B, A_OSTS),
                     timeout=40)
            assert lib.read_file("/buffered") == b"a" * 4 * kib + b"z" * 4 * kib + b"a" * 24 * kib
            f = lib.open("/kept", os.O_WRONLY)
            try:
                lib._run(f.write(b"q" * kib, 0))  # acknowledged: no close
                assert os.pread(r.fileno(), 2 * kib, 0) == b"q" * kib + b"a" * kib
            finally:
                lib._run(f.close())


def test_a_mounts_metrics_show_its_imports_recover(fresh_cluster: LocalCluster,
                                                    mounts: Mounts) -> None:
    """`-o metrics=ADDR:PORT`: the mount's Prometheus metrics (client/metrics.py), scraped
    before and after an OSS kill under its writes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = mounts.new(f"metrics=127.0.0.1:{port}")

    def scrape() -> dict[tuple[str, str, str], float]:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - our own mount
            text = r.read().decode()
        return {(x.name, x.labels.get("target", ""), x.labels.get("state", "")): x.value
                for fam in text_string_to_metric_families(text) for x in fam.samples}

    (m.path / "f").write_bytes(b"x" * MiB)  # 1 MiB stripes: every OST
    before = scrape()
    assert before[("shoal_client_import_state", "scratch-OST0000", "FULL")] == 1
    assert before[("shoal_client_recoveries_total", "scratch-OST0000", "")] == 0
    assert fresh_cluster.kill_node(OSS_A)
    wait_for("OSS_B serving the OSTs", served_by(fresh_cluster, OSS_B, A_OSTS), timeout=40)
    (m.path / "g").write_bytes(b"y" * MiB)  # through the new server
    after = scrape()
    assert after[("shoal_client_recoveries_total", "scratch-OST0000", "")] >= 1
    assert after[("shoal_client_import_state", "scratch-OST0000", "FULL")] == 1
    assert after[("shoal_client_evictions_total", "scratch-OST0000", "")] == 0


def test_metadata_programs_through_an_mds_kill(fresh_cluster: LocalCluster, mounts: Mounts,
                                               tmp_path: Path) -> None:
    """Two clients, each with a program creating, writing, renaming, linking and listing;
    whatever the MDT had not committed when it died is replayed by both."""
    script = tmp_path / "meta.py"
    script.write_text(META_PROGRAM)
    works, progs = [], []
    try:
        for i in range(2):
            m = mounts.new()
            works.append(m.path / f"meta{i}")
            works[-1].mkdir()
            ctl = tmp_path / f"ctl{i}"
            progs.append(Program([sys.executable, script, works[-1], ctl], ctl))
        reports = run_through(fresh_cluster, progs, MDS_A, MDS_B, MDS_TARGETS)
    finally:
        for p in progs:
            p.kill()
    for work, report in zip(works, reports, strict=True):
        want = {k: (v[0], v[1]) for k, v in report["want"].items()}
        assert tree_of(work) == want
        assert all((work / k).stat().st_mode & 0o777 == 0o640
                   for k, (kind, _) in want.items() if kind == "file")


@pytest.fixture
def big_tree(tmp_path: Path) -> Path:
    """A tree cp needs a few seconds for: many small files and some striped large ones."""
    root = tmp_path / "tree"
    for i in range(24):
        d = root / f"dir{i % 6}" / f"sub{i}"
        d.mkdir(parents=True)
        for j in range(8):
            (d / f"small{j}.txt").write_bytes(os.urandom(j * 1500 + 7))
        if i % 3 == 0:
            (d / "big.bin").write_bytes(os.urandom(3 * MiB + i))
    os.symlink("dir0/sub0/big.bin", root / "link")
    os.link(root / "dir1/sub1/small3.txt", root / "hard")
    (root / "empty").mkdir()
    return root


def test_cp_r_through_an_oss_kill(fresh_cluster: LocalCluster, mounts: Mounts,
                                  big_tree: Path, tmp_path: Path) -> None:
    m = mounts.new()
    dest = m.path / "copy"
    with open(tmp_path / "cp.err", "wb") as err:
        cp = subprocess.Popen(["cp", "-a", str(big_tree), str(dest)], stderr=err)
    try:
        wait_for("cp under way", lambda: cp.poll() is not None or (dest / "dir0").exists(),
                 timeout=20)
        assert cp.poll() is None, "cp finished before the kill: make the tree larger"
        assert fresh_cluster.kill_node(OSS_A)
        wait_for("OSS_B serving the OSTs", served_by(fresh_cluster, OSS_B, A_OSTS))
        spanned = cp.poll() is None  # it waited for the takeover, it did not fail
        rc = cp.wait(timeout=60)
    finally:
        if cp.poll() is None:
            cp.kill()
            cp.wait()
    assert rc == 0, (tmp_path / "cp.err").read_text()
    assert spanned, "cp was done before the OSTs were back: make the tree larger"
    res = subprocess.run(["diff", "-r", "--no-dereference", str(big_tree), str(dest)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert os.readlink(dest / "link") == "dir0/sub0/big.bin"
    assert (dest / "hard").stat().st_ino == (dest / "dir1/sub1/small3.txt").stat().st_ino


def test_program_living_on_the_mount_survives_an_mds_kill(
        fresh_cluster: LocalCluster, mounts: Mounts, tmp_path: Path) -> None:
    old = mounts.new()
    install_app(old.path / "app")
    first = start_app(old.path / "app", old.path / "out-old", tmp_path / "ctl-old")
    young = second = None
    try:
        first.wait_progress("rounds", 3)
        young = mounts.new()  # a client just booted: it has never been through a recovery
        second = start_app(young.path / "app", young.path / "out-young", tmp_path / "ctl-young")
        second.wait_progress("rounds", 1)
        # its own code is mapped from the mount: the interpreter, and libpython if it has one
        maps = Path(f"/proc/{second.proc.pid}/maps").read_text()
        assert str(young.path / "app" / "bin" / "python") in maps
        if (libpython := interpreter_files()[1]) is not None:
            assert str(young.path / "app" / "lib" / libpython.name) in maps
        assert fresh_cluster.kill_node(MDS_A)
        first.mark("killed")  # both now import a module of theirs from the mount
        second.mark("killed")
        wait_for("MGS and MDT on the backup", served_by(fresh_cluster, MDS_B, MDS_TARGETS))
        outputs = [first.finish(), second.finish()]
    finally:
        for p in (first, second):
            if p is not None:
                p.kill()
    for text, out in zip(outputs, ("out-old", "out-young"), strict=True):
        name, late, n, cwd, relative = text.split()
        assert (name, late) == ("app", "late") and int(n) >= 11, text
        assert (cwd, relative) == (str(old.path / "app") if out == "out-old"
                                   else str(young.path / "app"), "True"), text
        got = sorted(os.listdir(old.path / out))
        assert got == sorted(f"r{i}" for i in range(int(n))), got
        for i in range(int(n)):
            line = (old.path / out / f"r{i}").read_text()
            assert line == f"{'late' if i >= int(n) - 10 else 'app'} {i}\n", (out, i, line)


def test_sigterm_while_requests_arrive_logs_no_error(fresh_cluster: LocalCluster,
                                                    tmp_path: Path) -> None:
    """Unmount (SIGTERM) with requests coming in, as at the end of the tests above: pyfuse3's
    asyncio shim used to finish the waiting worker's future twice (InvalidStateError
    tracebacks in the mount's log, about one stop in three)."""
    for i in range(5):
        mp = tmp_path / f"m{i}"
        mp.mkdir()
        log = tmp_path / f"log{i}"
        proc = start_mount(fresh_cluster.dir, mp, [], log)
        stop = threading.Event()

        def hammer(where: Path = mp, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                try:
                    os.stat(where / "nothing")
                except OSError:
                    pass

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.2)
            code = stop_mount(proc)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert code == 0
        FMount(mp, log, proc).check_log()
