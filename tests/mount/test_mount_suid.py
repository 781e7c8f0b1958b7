"""setuid/setgid bits do not survive a change by a process without CAP_FSETID (issue 17):
a write through any open mode, an O_TRUNC open, or a truncate clears S_ISUID, and S_ISGID
where it means setgid-on-exec, as ext4 does. Otherwise anyone allowed to write a setuid-root
program could make it run their code as root."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.cluster.local import LocalCluster
from tests.mount.conftest import Mount, mount_on

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="needs root and setpriv (writes as another user)")

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture(scope="module")
def shared(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    """A mount other users may use (allow_other), as a multi-user node's would be, where
    they can reach it (pytest's own directories are root's alone)."""
    where = Path(tempfile.mkdtemp(prefix="shoal-suid-"))
    where.chmod(0o755)
    try:
        yield from mount_on(cluster, where, "allow_other")
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def d(shared: Mount, request: pytest.FixtureRequest) -> Path:
    path = shared.path / f"suid-{request.node.name}"
    path.mkdir()
    path.chmod(0o777)
    return path


def privileged(path: Path, mode: int = 0o6777) -> Path:
    path.write_bytes(b"#!/bin/sh\necho hi\n")
    path.chmod(mode)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    return path


def as_nobody(*argv: str) -> None:
    subprocess.run([*NOBODY, *argv], check=True, capture_output=True, timeout=30)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("how", [
    ["dd", "of={f}", "conv=notrunc", "status=none"],  # O_WRONLY: bypasses the kernel
    ["sh", "-c", "echo x 1<>{f}"],                    # O_RDWR
    ["sh", "-c", "echo x > {f}"],                     # O_TRUNC
    ["sh", "-c", "echo x >> {f}"],                    # O_APPEND
    ["truncate", "-s", "3", "{f}"],                   # truncate(2)
])
def test_a_change_by_an_unprivileged_process_clears_setuid_and_setgid(d: Path,
                                                                      how: list[str]) -> None:
    f = privileged(d / "prog")
    argv = [a.format(f=f) for a in how]
    if argv[0] == "dd":
        subprocess.run([*NOBODY, *argv], input=b"x", check=True, timeout=30)
    else:
        as_nobody(*argv)
    assert mode_of(f) == 0o777


def test_setgid_without_group_exec_is_kept(d: Path) -> None:
    f = privileged(d / "locked", 0o2666)  # setgid without S_IXGRP: mandatory locking
    subprocess.run([*NOBODY, "dd", f"of={f}", "conv=notrunc", "status=none"], input=b"x",
                   check=True, timeout=30)
    assert mode_of(f) == 0o2666


def test_root_keeps_the_bits(d: Path) -> None:
    f = privileged(d / "rootprog")
    subprocess.run(["dd", f"of={f}", "conv=notrunc", "status=none"], input=b"x", check=True,
                   timeout=30)
    assert mode_of(f) == 0o6777  # CAP_FSETID
