"""Two mounts of one file system, each keeping names and attributes in the kernel under the
MDT's locks (issue 20): what one changes, the other sees at the next look, however long the
kernel would otherwise keep it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from shoal.client.sync import SyncClient
from tests.mount.conftest import Mount


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
