"""Helpers of tests/mount/test_mount_failover.py: mounts of a test's own cluster, programs
steered through a control directory, the workload programs they run, and the checks made
after a failover.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from shoal.cluster.local import LocalCluster
from shoal.mount.run import LATE_IMPORT
from shoal.workload.bench_mount import start_mount
from tests.scenarios.harness import served_by, wait_for


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

    def new(self, *options: str) -> FMount:
        d = self.where / f"m{len(self.all)}"
        (d / "mnt").mkdir(parents=True)
        m = FMount(d / "mnt", d / "mount.log",
                   start_mount(self.cluster.dir, d / "mnt", list(options), d / "mount.log"))
        self.all.append(m)
        return m


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
LOOP = r'''
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
DATA_PROGRAM = LOOP + r'''
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
META_PROGRAM = LOOP + r'''
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


# lives on the mount with its package; `late` is first imported while the MDS is dead
APP_MAIN = r'''
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
time.sleep(0.5)  # what the mount forgets at its reconnect is forgotten by now
# its cwd is on the mount: the reconnect must not have unhooked it from the tree
print(shoalapp.NAME, late.NAME, n, os.getcwd(), os.path.exists("main.py"))
'''

APP_PKG = r'''
import os
NAME = "app"
def step(out, n):
    tmp = os.path.join(out, f".{n}")
    with open(tmp, "w") as f:
        f.write(f"{NAME} {n}\n")
    os.rename(tmp, os.path.join(out, f"r{n}"))
    os.stat(os.path.join(out, f"r{n}"))
'''

APP_LATE = r'''
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
    (root / "main.py").write_text(APP_MAIN)
    (root / "shoalapp" / "__init__.py").write_text(APP_PKG)
    (root / "shoalapp" / "late.py").write_text(APP_LATE)


def start_app(app: Path, out: Path, ctl: Path) -> Program:
    env = env_for_programs()
    env["PYTHONHOME"] = sys.base_prefix  # the standard library stays local
    env["LD_LIBRARY_PATH"] = str(app / "lib")
    # started from the mount: its executable, its libpython and its cwd are there
    return Program([app / "bin" / "python", "main.py", out, ctl], ctl, cwd=app, env=env)
