"""Helpers of tests/mount/test_mount_tools_failover.py: a source tree for tar, snapshots that
compare trees by content, mode, links and directory mtimes, tar commands with their stderr
kept, a git workload program steered like the programs of failover_helpers.py, and git's
environment and checks.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

from shoal.cluster.local import LocalCluster
from tests.mount.failover_helpers import LOOP, env_for_programs
from tests.scenarios.harness import events

MiB = 1 << 20


def make_tree(root: Path, files: int = 260) -> Path:
    """Nested dirs, files of every size from empty to several stripes, odd modes and names,
    symbolic links (to files, to dirs, dangling) and a hard link."""
    rng = random.Random(6)
    for i in range(files):
        d = root / f"d{i % 8}" / f"e{i % 5}" / ("deep/er" if i % 7 == 0 else "")
        d.mkdir(parents=True, exist_ok=True)
        size = rng.choice([0, 1, 100, 4095, 4096, 4097, rng.randrange(20_000)])
        p = d / f"f{i}.dat"
        p.write_bytes(rng.randbytes(size))
        p.chmod(rng.choice([0o644, 0o644, 0o600, 0o755, 0o664]))
    for i in range(5):  # larger than a stripe (1 MiB): on several OSTs each
        (root / f"d{i}" / f"big{i}.bin").write_bytes(rng.randbytes(int((1.2 + 0.7 * i) * MiB)))
    (root / "x y" / "üñí").mkdir(parents=True)
    (root / "x y" / "üñí" / "name with spaces").write_text("odd names\n")
    (root / "empty").mkdir()
    os.symlink("d1/big1.bin", root / "link-to-big")
    os.symlink("d2/e3", root / "link-to-dir")
    os.symlink("nowhere/at/all", root / "dangling")
    os.link(root / "d0/big0.bin", root / "hard-to-big0")
    # mtimes far from the time of the extraction, each file its own: tar sets a file's
    # with futimens before closing it, and a directory's once it has filled it (which moved
    # it), so a time lost on the way cannot pass for the right one
    for i, (dirpath, _, filenames) in enumerate(sorted(os.walk(root))):
        for j, name in enumerate(sorted(filenames)):
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.utime(p, (1_500_000_000 + 1000 * i + j,) * 2)
        os.utime(dirpath, (1_600_000_000, 1_600_000_000))
    return root


def snapshot(root: Path) -> dict[str, tuple[str, str, int, int]]:
    """Every entry below root: kind, content digest or link target, permission bits and
    mtime (seconds: what a tar header keeps); hard links as the name of their group's first
    path. One lstat an entry: each is a round trip on the mount."""
    out: dict[str, tuple[str, str, int, int]] = {}
    first_of: dict[tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for n in sorted(dirnames + filenames):
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):  # not every tar sets a symlink's mtime
                out[rel] = ("link", os.readlink(p), 0, 0)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", "", stat.S_IMODE(st.st_mode), int(st.st_mtime))
            else:
                group = first_of.setdefault((st.st_dev, st.st_ino), rel)
                with open(p, "rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
                out[rel] = ("file", f"{digest} {group}", stat.S_IMODE(st.st_mode),
                            int(st.st_mtime))
    return out


class Tar:
    """A tar process; its stderr goes to a file, for the check that it said nothing."""

    def __init__(self, argv: list[str | Path], err: Path, **popen: Any) -> None:
        self.argv = [str(a) for a in argv]
        self.err = err
        with open(err, "wb") as e:
            self.proc = subprocess.Popen(self.argv, stderr=e, **popen)

    def finish(self, timeout: float = 90.0) -> None:
        rc = self.proc.wait(timeout)
        text = self.err.read_text(errors="replace")
        assert (rc, text) == (0, ""), f"{self.argv}: exit {rc}\n{text}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def tar_pipe(src: Path, dst: Path, errs: Path) -> tuple[Tar, Tar]:
    """`tar -cf - -C src . | tar -xpf - -C dst`, each end's exit code and stderr its own."""
    create = Tar(["tar", "--sort=name", "-cf", "-", "-C", src, "."], errs / "create.err",
                 stdout=subprocess.PIPE)
    extract = Tar(["tar", "-xpf", "-", "-C", dst], errs / "extract.err",
                  stdin=create.proc.stdout)
    assert create.proc.stdout is not None
    create.proc.stdout.close()  # the extracting end's alone: a dead reader stops the writer
    return create, extract


def listing(archive: Path, err: Path) -> list[str]:
    """`tar -tvf`, every column. The archives are made with --sort=name, so entries and hard
    links come in the same order."""
    with open(archive.with_suffix(".lst"), "wb") as out:
        Tar(["tar", "-tvf", archive], err, stdout=out).finish()
    lines = archive.with_suffix(".lst").read_text().splitlines()
    assert lines and all(re.fullmatch(r"\S+ \S+ +\d+ \S+ \S+ .*", ln) for ln in lines), lines
    return lines


def takes_between(cluster: LocalCluster, backup: str, targets: list[str], t0: float,
                  t1: float) -> set[str]:
    """The targets the backup took (owner key won) between t0 and t1 (wall clock)."""
    return {e.target for e in events(cluster, t0)
            if e.kind == "take" and e.target in targets and e.node == backup and e.time <= t1}


def git_env(home: Path) -> dict[str, str]:
    """git with no configuration but ours: no user or system files, a fixed identity."""
    home.mkdir(parents=True, exist_ok=True)
    env = env_for_programs()
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), GIT_CONFIG_NOSYSTEM="1",
               GIT_AUTHOR_NAME="Shoal", GIT_AUTHOR_EMAIL="shoal@example.invalid",
               GIT_COMMITTER_NAME="Shoal", GIT_COMMITTER_EMAIL="shoal@example.invalid",
               LC_ALL="C")
    env.pop("GIT_DIR", None)
    env.pop("GIT_WORK_TREE", None)
    return env


def git(repo: Path, *args: str, env: dict[str, str], timeout: float = 60) -> str:
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, env=env,
                          timeout=timeout)
    assert (proc.returncode, proc.stderr) == (0, ""), \
        f"git {args}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def worktree(root: Path) -> dict[str, list[str]]:
    """A work tree as git would store it: path -> [mode, blob id]."""
    out: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if ".git" in dirnames:
            dirnames.remove(".git")
        for n in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ["120000", blob_id(os.readlink(p).encode())]
            else:
                mode = "100755" if p.stat().st_mode & 0o100 else "100644"
                out[rel] = [mode, blob_id(p.read_bytes())]
    return out


def tree_of_commit(repo: Path, commit: str, env: dict[str, str]) -> dict[str, list[str]]:
    out = {}
    for entry in git(repo, "ls-tree", "-r", "-z", commit, env=env).split("\0"):
        if entry:
            meta, path = entry.split("\t", 1)
            mode, _, obj = meta.split()
            out[path] = [mode, obj]
    return out


# git on the mount, one commit a round: edits, new files, deletes, renames, mode changes,
# symbolic links and files of several stripes
GIT_PROGRAM = LOOP + r'''
import subprocess

def git(*args):
    p = subprocess.run(["git", "-c", "init.defaultBranch=main", "-c", "gc.auto=0", *args],
                       cwd=mnt, capture_output=True, text=True)
    if p.returncode != 0 or p.stderr:
        sys.exit(f"round {counts['rounds']}: git {' '.join(args)}: exit {p.returncode}\n"
                 f"{p.stdout}\n{p.stderr}")
    return p.stdout

def blob_id(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

tree = {}  # path -> [mode, blob id], what the next commit must hold
commits = []

def put(rel, data, mode="100644"):
    path = os.path.join(mnt, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o755 if mode == "100755" else 0o644)
    tree[rel] = [mode, blob_id(data)]

def one_round(i):
    added = []  # new paths: git commit -a takes every change but these
    if i == 0:
        git("init", "-q")
        # shallow: a stat is a lookup a path component, each a round trip to the MDT
        for n in range(50):
            put(f"m{n % 6}/{'s/' if n % 5 == 0 else ''}file{n}.txt",
                rng.randbytes(rng.randrange(30, 6000)))
        put("bin/big.bin", rng.randbytes(3 << 20))
    else:
        files = sorted(k for k, v in tree.items() if v[0] != "120000")
        for rel in rng.sample(files, 5):  # edits, keeping the mode
            put(rel, rng.randbytes(rng.randrange(0, 8000)), tree[rel][0])
        for n in range(3):
            put(f"new/r{i}-n{n}.txt", rng.randbytes(rng.randrange(1, 3000)))
        gone = rng.choice(files)
        os.unlink(os.path.join(mnt, gone))
        del tree[gone]
        files.remove(gone)
        old = rng.choice(files)
        new = f"moved/{i}-{os.path.basename(old)}"
        os.makedirs(os.path.join(mnt, "moved"), exist_ok=True)
        os.rename(os.path.join(mnt, old), os.path.join(mnt, new))
        tree[new] = tree.pop(old)
        added += [new] + [f"new/r{i}-n{n}.txt" for n in range(3)]
        if i % 3 == 0:
            rel = rng.choice(sorted(k for k, v in tree.items() if v[0] == "100644"))
            os.chmod(os.path.join(mnt, rel), 0o755)
            tree[rel] = ["100755", tree[rel][1]]
        if i % 4 == 0:
            target = f"../{new}"
            os.makedirs(os.path.join(mnt, "links"), exist_ok=True)
            os.symlink(target, os.path.join(mnt, f"links/l{i}"))
            tree[f"links/l{i}"] = ["120000", blob_id(target.encode())]
            added.append(f"links/l{i}")
        if i % 5 == 0:
            put(f"bin/big{i}.bin", rng.randbytes((1 << 20) + rng.randrange(1 << 20)))
            added.append(f"bin/big{i}.bin")
    # one scan of the work tree a round, by commit -a: each lstat is a round trip to the MDT
    if i == 0:
        git("add", "-A")
    else:
        git("add", *added)
    # git add says nothing when it cannot list a directory (a readdir's ENOENT, session
    # 19): that the index has what it added shows here, not a commit later
    if missed := sorted(set(added) - set(git("ls-files", "--", *added).splitlines())):
        sys.exit(f"round {i}: git add left {missed} out of the index")
    git("commit", "-q", "-a", "-m", f"round {i}")
    commits.append([git("rev-parse", "HEAD").strip(), f"round {i}", dict(tree)])

times = []  # seconds a round: the rounds in flight at a kill waited for the takeover

def timed_round(i):
    t0 = time.monotonic()
    one_round(i)
    times.append(time.monotonic() - t0)

loop(timed_round)
print(json.dumps({"commits": commits, "times": times, "stall": stall, **counts}))
'''
