"""tar and git on a real mount through server failovers, under client load (issue 6).

Each test has a cluster of its own and a real FUSE mount. tar or git works on the mount
while a node is killed under it (SIGKILL of its process group: power off): first the OSS of
two OSTs, then the MGS/MDS node (git: the MDS node only). `shoal load` runs through each
kill. The programs must see no error (exit 0, nothing on stderr), only a stall. Each takeover
must happen while they run. Afterwards every file, mode, link and commit is checked, through
the mount and off it. One cluster takes both kills: a cluster, a mount and a first commit
cost more than a second takeover.

Nodes (src/shoal/cluster/scratch.fs_defs): nid00060 serves MGS+MDT0000 (backup nid00061);
nid00062 serves OST0000 and OST0002 (backup nid00063).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shoal.cluster.local import LocalCluster
from tests.mount.failover_helpers import Mounts, Program
from tests.mount.tools_helpers import (
    GIT_PROGRAM,
    Tar,
    git,
    git_env,
    listing,
    make_tree,
    snapshot,
    takes_between,
    tar_pipe,
    tree_of_commit,
    worktree,
)
from tests.scenarios.harness import Load, assert_clean, served_by, wait_for

KILLS = {
    "oss": ("nid00062", "nid00063", ["scratch-OST0000", "scratch-OST0002"]),
    "mds": ("nid00060", "nid00061", ["MGS", "scratch-MDT0000"]),
}

pytestmark = pytest.mark.timeout(180)


def start_load(cluster: LocalCluster) -> Load:
    """The load's clients connected and writing a moment before the kill, so that it finds
    them mid-request too and they recover beside the mount."""
    load = Load(cluster, clients=4, duration=6.0)
    time.sleep(1.5)
    return load


def kill_and_take_over(cluster: LocalCluster, kind: str, load: Load,
                       running: Callable[[], bool]) -> None:
    """Kill the node serving `kind`'s targets, then wait until its backup serves them."""
    node, backup, names = KILLS[kind]
    assert running(), f"the program was done before the {kind} kill: give it more work"
    assert load.thread.is_alive(), "the load was over before the kill: make it longer"
    t0 = time.time()
    assert cluster.kill_node(node)
    wait_for(f"{backup} serving {names}", served_by(cluster, backup, names))
    # still running: it waited for the takeover (whether it failed shows at its end)
    assert running(), f"the program was done before the {kind} takeover: give it more work"
    assert takes_between(cluster, backup, names, t0, time.time()) == set(names)


def test_tar_in_through_an_oss_kill_and_out_through_an_mds_kill(
        fresh_cluster: LocalCluster, mounts: Mounts, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    want = snapshot(src)
    Tar(["tar", "--sort=name", "-cf", tmp_path / "src.tar", "-C", src, "."],
        tmp_path / "src.err").finish()
    m = mounts.new()
    dst = m.path / "dst"
    dst.mkdir()

    # tar in: `tar -cf - -C src . | tar -xpf - -C dst`, the OSS dying under it
    load = start_load(fresh_cluster)
    create, extract = tar_pipe(src, dst, tmp_path)
    try:
        wait_for("tar -x under way",
                 lambda: extract.proc.poll() is not None or any(dst.iterdir()), timeout=20)
        kill_and_take_over(fresh_cluster, "oss", load, lambda: extract.proc.poll() is None)
        create.finish()
        extract.finish()
    finally:
        extract.kill()
        create.kill()
    assert_clean(load.result())

    # tar out, to local disk, the MDS dying under it
    out = tmp_path / "out.tar"
    load = start_load(fresh_cluster)
    archive = Tar(["tar", "--sort=name", "-cf", out, "-C", dst, "."], tmp_path / "out.err")
    try:
        wait_for("tar -c under way", lambda: archive.proc.poll() is not None
                 or (out.exists() and out.stat().st_size > 0), timeout=20)
        kill_and_take_over(fresh_cluster, "mds", load, lambda: archive.proc.poll() is None)
        archive.finish()
    finally:
        archive.kill()
    assert_clean(load.result())

    # the archive lists what went in (names, modes, sizes, link targets, hard links) and
    # extracts to the same tree. It read every entry and byte on the mount, so the tree
    # there is not walked a second time: each lstat is a round trip.
    assert listing(out, tmp_path / "l.err") == listing(tmp_path / "src.tar", tmp_path / "l.err")
    (tmp_path / "back").mkdir()
    Tar(["tar", "-xpf", out, "-C", tmp_path / "back"], tmp_path / "back.err").finish()
    assert snapshot(tmp_path / "back") == want


def test_git_commits_through_an_mds_kill(
        fresh_cluster: LocalCluster, mounts: Mounts, tmp_path: Path) -> None:
    env = git_env(tmp_path / "home")
    m = mounts.new()
    repo = m.path / "repo"
    repo.mkdir()
    script = tmp_path / "git.py"
    script.write_text(GIT_PROGRAM)
    prog = Program([sys.executable, script, repo, tmp_path / "ctl"], tmp_path / "ctl",
                   env=env)
    in_flight = []  # the round running at each kill
    try:
        # few rounds around each kill: on a busy machine a round is seconds (each lstat of
        # git's is a round trip to the MDT)
        prog.wait_progress("rounds", 2, timeout=60)  # round 0, the first commit, is long
        # the MDS kill only: git through an OSS kill costs the suite 15 s more, and tar,
        # cp -r and the writer already go through one (test_mount_failover.py)
        for kind in ("mds",):
            load = start_load(fresh_cluster)
            in_flight.append(prog.progress()["rounds"])
            kill_and_take_over(fresh_cluster, kind, load, lambda: prog.proc.poll() is None)
            # and on: a commit begun and made after the takeover
            prog.wait_progress("rounds", prog.progress()["rounds"] + 2)
            assert_clean(load.result())
        report = json.loads(prog.finish())
    finally:
        prog.kill()
    # the round in flight at a kill, or the next, waited for the takeover (round 0, the
    # long first commit, is no measure of a stall)
    times = report["times"]
    stalls = {i for at in in_flight for i in (at, at + 1)}
    usual = statistics.median(t for i, t in enumerate(times) if i > 0 and i not in stalls)
    for at in in_flight:
        # a takeover of a killed node takes about a second now (the partner watch sees its
        # port refuse): the round that met it is slower by most of that, not by more
        assert max(times[at:at + 2]) > usual + 0.3, (times, in_flight)

    commits = report["commits"]
    assert len(commits) == report["rounds"] >= 4
    history = [f"{sha} {msg}" for sha, msg, _ in reversed(commits)]
    # on the mount: the history, a complete object store, a work tree matching the index
    assert git(repo, "log", "--format=%H %s", env=env).splitlines() == history
    assert git(repo, "fsck", "--full", "--strict", "--no-dangling", env=env) == ""
    assert git(repo, "status", "--porcelain", env=env) == ""
    # off the mount: a clone, its objects copied from the mount's files and checked again.
    # Every commit holds the blob ids of the bytes the program wrote: git read each file
    # back right from the mount, through the failovers.
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "--no-hardlinks", str(repo), str(clone), env=env)
    assert git(clone, "log", "--format=%H %s", env=env).splitlines() == history
    assert git(clone, "fsck", "--full", "--strict", env=env) == ""
    for sha, msg, tree in commits:
        assert tree_of_commit(clone, sha, env) == tree, msg
    assert worktree(clone) == commits[-1][2]


def test_tar_restores_file_mtimes(work: Path, tmp_path: Path) -> None:
    """GNU tar extracts a file as open, write, futimens(fd, header mtime), close: the mtime
    must be the header's afterwards, as on a local file system."""
    fd = os.open(work / "direct", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"data")
        os.utime(fd, (1_600_000_000, 1_600_000_000))
    finally:
        os.close(fd)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("data\n")
    os.utime(src / "f", (1_600_000_000, 1_600_000_000))
    Tar(["tar", "-cf", tmp_path / "t.tar", "-C", src, "f"], tmp_path / "c.err").finish()
    Tar(["tar", "-xf", tmp_path / "t.tar", "-C", work], tmp_path / "x.err").finish()
    assert [(work / n).stat().st_mtime for n in ("direct", "f")] == [1_600_000_000] * 2
