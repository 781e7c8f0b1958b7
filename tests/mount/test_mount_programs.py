"""Real programs on a real mount: cp, diff, tar, python, git; and two mounts (two clients)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.mount.conftest import Mount

MiB = 1 << 20


def sh(*cmd: str | Path, cwd: Path | None = None, timeout: float = 60) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, f"{cmd}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local tree with every kind of thing cp and tar carry: nested dirs, empty and large
    files, odd names, modes, hard and symbolic links."""
    root = tmp_path_factory.mktemp("tree") / "src"
    for d in ("a/b/c", "empty", "x y", "üñí"):
        (root / d).mkdir(parents=True)
    for i in range(12):
        (root / "a" / f"small-{i}.txt").write_text(f"file {i}\n" * (i + 1))
    (root / "a/b/c/big.bin").write_bytes(os.urandom(3 * MiB + 123))
    (root / "a/b/empty.file").write_bytes(b"")
    (root / "x y/space name").write_text("spaces\n")
    (root / "üñí/ünï").write_text("unicode\n")
    exe = root / "a/run.sh"
    exe.write_text("#!/bin/sh\necho ran\n")
    exe.chmod(0o755)
    os.symlink("b/c/big.bin", root / "a/link-to-big")
    os.link(root / "a/small-1.txt", root / "a/hard-1.txt")
    return root


def test_cp_r_and_diff_r(tree: Path, work: Path, tmp_path: Path) -> None:
    sh("cp", "-a", tree, work / "copy")
    sh("diff", "-r", "--no-dereference", tree, work / "copy")
    assert os.readlink(work / "copy/a/link-to-big") == "b/c/big.bin"
    assert (work / "copy/a/hard-1.txt").stat().st_ino == (work / "copy/a/small-1.txt").stat().st_ino
    assert os.access(work / "copy/a/run.sh", os.X_OK)
    assert sh(work / "copy/a/run.sh") == "ran\n"
    sh("cp", "-r", work / "copy", tmp_path / "back")  # and out again
    sh("diff", "-r", tree, tmp_path / "back")


def test_tar_in_and_out(tree: Path, work: Path, tmp_path: Path) -> None:
    archive = tmp_path / "t.tar"
    sh("tar", "-C", tree.parent, "-cf", archive, tree.name)
    sh("tar", "-C", work, "-xf", archive)  # in: extract onto the mount
    sh("diff", "-r", "--no-dereference", tree, work / tree.name)
    out = work / "again.tar.gz"
    sh("tar", "-C", work, "-czf", out, tree.name)  # out: archive from the mount, onto it
    (tmp_path / "x").mkdir()
    sh("tar", "-C", tmp_path / "x", "-xzf", out)
    sh("diff", "-r", "--no-dereference", tree, tmp_path / "x" / tree.name)
    listing = sh("tar", "-tvzf", out)
    assert "link-to-big -> b/c/big.bin" in listing


def test_python_program_runs_from_the_mount(work: Path) -> None:
    pkg = work / "prog" / "helper"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("def double(x):\n    return 2 * x\n")
    main = work / "prog" / "main.py"
    main.write_text(
        "import sys, helper\n"
        "with open(sys.argv[1], 'w') as f:\n"
        "    f.write(str(helper.double(21)))\n"
        "print('ok', helper.double(2))\n")
    out = sh(sys.executable, main, work / "result", cwd=work / "prog")
    assert out == "ok 4\n"
    assert (work / "result").read_text() == "42"
    # bytecode written to the mount and used on the second run
    assert list((pkg / "__pycache__").glob("__init__.*.pyc"))
    assert sh(sys.executable, main, work / "result", cwd=work / "prog") == "ok 4\n"


def test_binary_runs_from_the_mount(work: Path) -> None:
    """exec() maps the binary from the mount's pages."""
    binary = work / "ls"
    shutil.copy2(shutil.which("ls") or "/bin/ls", binary)
    (work / "marker").touch()
    assert "marker" in sh(binary, "-la", work).split()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_init_add_commit(tree: Path, work: Path) -> None:
    repo = work / "repo"
    shutil.copytree(tree / "a", repo, symlinks=True)
    env = ["-c", "user.name=Shoal", "-c", "user.email=shoal@example.invalid",
           "-c", "init.defaultBranch=main"]
    sh("git", *env, "init", "-q", cwd=repo)
    sh("git", *env, "add", "-A", cwd=repo)
    sh("git", *env, "commit", "-q", "-m", "first", cwd=repo)
    (repo / "small-3.txt").write_text("edited\n")
    (repo / "new.txt").write_text("new\n")
    sh("git", *env, "commit", "-q", "-am", "second", cwd=repo)
    sh("git", *env, "add", "new.txt", cwd=repo)
    sh("git", *env, "commit", "-q", "-m", "third", cwd=repo)
    assert sh("git", "log", "--format=%s", cwd=repo).split() == ["third", "second", "first"]
    assert sh("git", "status", "--porcelain", cwd=repo) == ""
    sh("git", "fsck", "--strict", cwd=repo)
    assert sh("git", "show", "HEAD~1:small-3.txt", cwd=repo) == "edited\n"


def eventually(check, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (AssertionError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_two_mounts_see_each_others_changes(mnt: Mount, mnt2: Mount, work: Path) -> None:
    other = mnt2.path / work.relative_to(mnt.path)
    (work / "from-a").write_text("one")
    assert (other / "from-a").read_text() == "one"  # attr/entry timeouts are 0: no wait
    (other / "from-a").write_text("two, longer")  # rewritten by the other client
    assert (work / "from-a").read_text() == "two, longer"
    with open(work / "from-a", "ab") as f:
        f.write(b"+" * MiB)
    assert (other / "from-a").stat().st_size == len("two, longer") + MiB
    os.rename(work / "from-a", work / "renamed")
    assert not (other / "from-a").exists()
    assert (other / "renamed").read_bytes()[:11] == b"two, longer"
    (other / "sub").mkdir()
    (other / "sub" / "f").write_text("made by b")
    assert sorted(os.listdir(work)) == ["renamed", "sub"]
    assert (work / "sub" / "f").read_text() == "made by b"
    os.unlink(other / "renamed")
    assert not (work / "renamed").exists()
    os.chmod(work / "sub" / "f", 0o600)
    assert (other / "sub" / "f").stat().st_mode & 0o777 == 0o600


def test_open_reader_sees_another_clients_closed_change(mnt: Mount, mnt2: Mount,
                                                        work: Path) -> None:
    """Data cached for an open file (the kernel's pages, the mount's read-ahead) goes as soon
    as the file's attributes show another client changed it."""
    other = mnt2.path / work.relative_to(mnt.path)
    old, new = os.urandom(6 * MiB), os.urandom(6 * MiB)
    (work / "f").write_bytes(old)
    fd = os.open(work / "f", os.O_RDONLY)
    try:
        assert os.pread(fd, 6 * MiB, 0) == old  # cached here now
        time.sleep(0.01)  # a later mtime
        with open(other / "f", "r+b") as f:
            f.write(new)
        assert os.pread(fd, 6 * MiB, 0) == new
    finally:
        os.close(fd)
