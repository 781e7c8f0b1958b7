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
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shoal.client.sync import SyncClient
from shoal.cluster.local import LocalCluster
from shoal.mount.run import LATE_IMPORT
from shoal.workload.bench_mount import start_mount, stop_mount
from tests.scenarios.harness import served_by, wait_for

MiB = 1 << 20
OSS_A, OSS_B = "nid00062", "nid00063"
MDS_A, MDS_B = "nid00060", "nid00061"
A_OSTS = ["scratch-OST0000", "scratch-OST0002"]
MDS_TARGETS = ["MGS", "scratch-MDT0000"]

pytestmark = pytest.mark.timeout(120)


@dataclass
class FMount:
    path: Path
    log: Path
    proc: subprocess.Popen[bytes]

    def check_log(self) -> None:
        text = self.log.read_text(errors="replace")
        # the recovery path read no file (the import hook logs any module loaded late)
        late = [line for line in text.splitlines() if LATE_IMPORT in line]
        assert late == [], late
        assert "Traceback" not in text, text[text.index("Traceback") - 2000:][:6000]


class Mounts:
    """Mounts of one test's cluster, each unmounted (and its log checked) at the end."""

    def __init__(self, cluster: LocalCluster, where: Path) -> None:
        self.cluster = cluster
        self.where = where
        self.all: list[FMount] = []

    def new(self) -> FMount:
        d = self.where / f"m{len(self.all)}"
        (d / "mnt").mkdir(parents=True)
        m = FMount(d / "mnt", d / "mount.log",
                   start_mount(self.cluster.dir, d / "mnt", [], d / "mount.log"))
        self.all.append(m)
        return m


@pytest.fixture
def mounts(fresh_cluster: LocalCluster, tmp_path: Path) -> Iterator[Mounts]:
    ms = Mounts(fresh_cluster, tmp_path)
    try:
        yield ms
    finally:
        codes = [stop_mount(m.proc) for m in ms.all]
    assert codes == [0] * len(codes), [m.log.read_text(errors="replace")[-2000:] for m in ms.all]
    for m in ms.all:
        m.check_log()


def env_for_programs() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH", "PYTHONHOME")}


class Program:
    """A program in a process of its own, steered through files in a local control
    directory (never on the mount): it writes `progress` (JSON) after every round and stops
    at `stop`; `killed`/`recovered` mark the rounds started after the fault and after the
    takeover."""

    def __init__(self, argv: list[str | Path], ctl: Path, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.ctl = ctl
        ctl.mkdir(parents=True, exist_ok=True)
        self.out = ctl / "stdout"
        self.err = ctl / "stderr"
        with open(self.out, "wb") as o, open(self.err, "wb") as e:
            self.proc = subprocess.Popen([str(a) for a in argv], cwd=cwd, stdout=o, stderr=e,
                                         stdin=subprocess.DEVNULL,
                                         env=env or env_for_programs())

    def progress(self) -> dict[str, int]:
        try:
            return json.loads((self.ctl / "progress").read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def wait_progress(self, key: str, at_least: int, timeout: float = 30.0) -> None:
        def pred() -> bool:
            assert self.proc.poll() is None, self.failure()
            return self.progress().get(key, 0) >= at_least

        wait_for(f"{key} >= {at_least}", pred, timeout)

    def mark(self, name: str) -> None:
        (self.ctl / name).touch()

    def failure(self) -> str:
        return (f"exit {self.proc.returncode}\n{self.out.read_text(errors='replace')}\n"
                f"{self.err.read_text(errors='replace')}")

    def finish(self, timeout: float = 60.0) -> str:
        self.mark("stop")
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the program did not finish: {self.failure()}") from None
        assert self.proc.returncode == 0, self.failure()
        assert self.err.read_text() == "", self.failure()
        return self.out.read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# the control loop shared by the workload programs: a round, then its progress
_LOOP = r'''
import hashlib, json, os, random, sys, time
mnt, ctl = sys.argv[1], sys.argv[2]
rng = random.Random(6)
counts = {"rounds": 0, "after_kill": 0, "after_recovery": 0}
stall = 0.0

def flag(name):
    return os.path.exists(os.path.join(ctl, name))

def loop(one_round):
    global stall
    while not flag("stop"):
        killed, recovered = flag("killed"), flag("recovered")
        t0 = time.monotonic()
        one_round(counts["rounds"])
        stall = max(stall, time.monotonic() - t0)
        counts["rounds"] += 1
        counts["after_kill"] += killed
        counts["after_recovery"] += recovered
        tmp = os.path.join(ctl, "progress.tmp")
        with open(tmp, "w") as f:
            json.dump(counts, f)
        os.replace(tmp, os.path.join(ctl, "progress"))
'''

# writes, rewrites at an offset, appends and reads back files striped over every OST
_DATA_PROGRAM = _LOOP + r'''
sums = {}

def check(path, want):
    with open(path, "rb") as f:
        got = f.read()
    if hashlib.sha256(got).hexdigest() != want:
        sys.exit(f"{path}: {len(got)} bytes, not what was written")

def one_round(i):
    path = os.path.join(mnt, f"f{i:04d}")
    data = bytearray(rng.randbytes(rng.randrange(2 << 20, 9 << 19)))  # 2 to 4.5 MiB
    with open(path, "wb") as f:
        f.write(data)
    check(path, hashlib.sha256(data).hexdigest())
    off = rng.randrange(len(data))
    patch = rng.randbytes(rng.randrange(1, 300_000))
    with open(path, "r+b") as f:  # a write at an offset, over the end perhaps
        f.seek(off)
        f.write(patch)
    data[off:off + len(patch)] = patch
    tail = rng.randbytes(rng.randrange(1, 70_000))
    with open(path, "ab") as f:
        f.write(tail)
    data += tail
    sums[os.path.basename(path)] = want = hashlib.sha256(data).hexdigest()
    check(path, want)
    old = f"f{rng.randrange(i + 1):04d}"  # and one written before, perhaps before the fault
    check(os.path.join(mnt, old), sums[old])

loop(one_round)
print(json.dumps({"sums": sums, "stall": stall, **counts}))
'''

# creates, renames (over existing files too), stats, links, listings, unlinks: mostly MDT
_META_PROGRAM = _LOOP + r'''
want = {}  # relative path -> ("file", sha256) | ("link", target) | ("dir", None)

def one_round(i):
    d = f"d{i % 7}"
    dp = os.path.join(mnt, d)
    if not os.path.isdir(dp):
        os.mkdir(dp)
        want[d] = ("dir", None)
    data = rng.randbytes(rng.randrange(0, 20_000))
    tmp = os.path.join(dp, f".tmp{i}")
    with open(tmp, "xb") as f:
        f.write(data)
    final = f"{d}/n{i % 11}"  # renamed over an older file every now and then
    os.rename(tmp, os.path.join(mnt, final))
    want[final] = ("file", hashlib.sha256(data).hexdigest())
    st = os.stat(os.path.join(mnt, final))
    if st.st_size != len(data):
        sys.exit(f"{final}: stat says {st.st_size} bytes, {len(data)} written")
    if i % 3 == 0:
        os.link(os.path.join(mnt, final), os.path.join(mnt, f"{d}/h{i}"))
        want[f"{d}/h{i}"] = want[final]
    if i % 4 == 0:
        os.symlink(f"n{i % 11}", os.path.join(mnt, f"{d}/s{i}"))
        want[f"{d}/s{i}"] = ("link", f"n{i % 11}")
    if i % 5 == 4:
        victim = sorted(k for k in want if k.startswith(f"{d}/h"))
        if victim:
            os.unlink(os.path.join(mnt, victim[0]))
            del want[victim[0]]
    os.chmod(os.path.join(mnt, final), 0o640)
    names = set(os.listdir(dp))
    expect = {k.split("/", 1)[1] for k in want if k.startswith(d + "/")}
    if names != expect:
        sys.exit(f"{d}: listing {sorted(names)} is not {sorted(expect)}")

loop(one_round)
print(json.dumps({"want": want, "stall": stall, **counts}))
'''


def run_through(cluster: LocalCluster, progs: list[Program], node: str, backup: str,
                targets: list[str]) -> list[dict]:
    """Rounds before the kill, the kill, the takeover, rounds after it; each program's
    report."""
    for p in progs:
        p.wait_progress("rounds", 4)
        p.mark("killed")
    t0 = time.monotonic()
    assert cluster.kill_node(node)
    wait_for(f"{backup} serving {targets}", served_by(cluster, backup, targets))
    took = time.monotonic() - t0
    for p in progs:
        p.mark("recovered")
    for p in progs:
        p.wait_progress("after_recovery", 4)
    reports = [json.loads(p.finish()) for p in progs]
    for r in reports:
        assert r["after_kill"] >= r["after_recovery"] >= 4, r
        # the program felt the fault (a round waited for the takeover) and saw no error
        assert r["stall"] > 0.5, (r["stall"], took)
    return reports


def test_reader_writer_through_an_oss_kill(fresh_cluster: LocalCluster, mounts: Mounts,
                                           tmp_path: Path) -> None:
    m = mounts.new()
    script = tmp_path / "rw.py"
    script.write_text(_DATA_PROGRAM)
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


def tree_of(root: Path) -> dict[str, tuple[str, str | None]]:
    out: dict[str, tuple[str, str | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", None)
            else:
                out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def test_metadata_programs_through_an_mds_kill(fresh_cluster: LocalCluster, mounts: Mounts,
                                               tmp_path: Path) -> None:
    """Two clients, each with a program creating, writing, renaming, linking and listing;
    whatever the MDT had not committed when it died is replayed by both."""
    script = tmp_path / "meta.py"
    script.write_text(_META_PROGRAM)
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


# lives on the mount with its package; `late` is first imported while the MDS is dead
_APP_MAIN = r'''
import json, os, sys, time
import shoalapp
out, ctl = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
n = 0
def progress():
    with open(os.path.join(ctl, "progress.tmp"), "w") as f:
        json.dump({"rounds": n}, f)
    os.replace(os.path.join(ctl, "progress.tmp"), os.path.join(ctl, "progress"))
while not os.path.exists(os.path.join(ctl, "killed")):
    shoalapp.step(out, n)
    n += 1
    progress()
    time.sleep(0.02)
from shoalapp import late  # a file on the mount, looked up on an MDT that is failing over
for _ in range(10):
    late.step(out, n)
    n += 1
    progress()
print(shoalapp.NAME, late.NAME, n)
'''

_APP_PKG = r'''
import os
NAME = "app"
def step(out, n):
    tmp = os.path.join(out, f".{n}")
    with open(tmp, "w") as f:
        f.write(f"{NAME} {n}\n")
    os.rename(tmp, os.path.join(out, f"r{n}"))
    os.stat(os.path.join(out, f"r{n}"))
'''

_APP_LATE = r'''
import os
from shoalapp import step as _first
NAME = "late"
def step(out, n):
    with open(os.path.join(out, f"r{n}"), "x") as f:
        f.write(f"{NAME} {n}\n")
    os.listdir(out)
'''


def interpreter_files() -> tuple[Path, Path | None]:
    """This interpreter's binary and its libpython, if it links one."""
    exe = Path(os.path.realpath(sys.executable))
    for line in Path("/proc/self/maps").read_text().splitlines():
        m = re.search(r"(/\S*/libpython[\d.]+\S*\.so[\d.]*)$", line)
        if m:
            return exe, Path(m.group(1))
    return exe, None


def install_app(root: Path) -> None:
    """The interpreter (and libpython), a program and its package, all on the mount."""
    exe, libpython = interpreter_files()
    (root / "bin").mkdir(parents=True)
    shutil.copy2(exe, root / "bin" / "python")
    if libpython is not None:
        (root / "lib").mkdir()
        shutil.copy2(libpython, root / "lib" / libpython.name)
    (root / "shoalapp").mkdir()
    (root / "main.py").write_text(_APP_MAIN)
    (root / "shoalapp" / "__init__.py").write_text(_APP_PKG)
    (root / "shoalapp" / "late.py").write_text(_APP_LATE)


def start_app(app: Path, out: Path, ctl: Path) -> Program:
    env = env_for_programs()
    env["PYTHONHOME"] = sys.base_prefix  # the standard library stays local
    env["LD_LIBRARY_PATH"] = str(app / "lib")
    # started from the mount: its executable, its libpython and its cwd are there
    return Program([app / "bin" / "python", "main.py", out, ctl], ctl, cwd=app, env=env)


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
        name, late, n = text.split()
        assert (name, late) == ("app", "late") and int(n) >= 11, text
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
