"""Extended attributes, POSIX ACLs and file capabilities through the mount (issue 19), as
getfattr, setfacl and setcap use them, checked from another mount and the library too."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.client.sync import SyncClient
from shoal.cluster.local import LocalCluster
from tests.mount.conftest import Mount, mount_on

ROOT = os.geteuid() == 0


def rel(mnt: Mount, p: Path) -> str:
    return "/" + str(p.relative_to(mnt.path))


def tool(name: str) -> str:
    found = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}")
                                   else None)
    if found is None:
        pytest.skip(f"{name} is not installed (Debian: acl, attr, libcap2-bin)")
    return found


def run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, (argv, proc.stdout, proc.stderr)
    return proc.stdout


def test_xattrs_set_read_listed_and_removed(work: Path, mnt: Mount, mnt2: Mount,
                                            lib: SyncClient) -> None:
    f = work / "f"
    f.write_text("x")
    os.setxattr(f, "user.color", b"blue")
    os.setxattr(f, "user.empty", b"")
    assert os.getxattr(f, "user.color") == b"blue"
    assert sorted(os.listxattr(f)) == ["user.color", "user.empty"]
    with pytest.raises(OSError) as info:
        os.getxattr(f, "user.missing")
    assert info.value.errno == errno.ENODATA
    with pytest.raises(FileExistsError):
        os.setxattr(f, "user.color", b"red", os.XATTR_CREATE)
    with pytest.raises(OSError) as info:
        os.setxattr(f, "user.other", b"red", os.XATTR_REPLACE)
    assert info.value.errno == errno.ENODATA
    with pytest.raises(OSError) as info:
        os.setxattr(f, "user.big", b"v" * 65537)
    assert info.value.errno == errno.E2BIG
    # another mount and the library see the same
    other = mnt2.path / f.relative_to(mnt.path)
    assert os.getxattr(other, "user.color") == b"blue"
    assert lib.getxattr(rel(mnt, f), "user.color") == b"blue"
    os.removexattr(f, "user.color")
    assert os.listxattr(f) == ["user.empty"]
    setfattr, getfattr = tool("setfattr"), tool("getfattr")
    run(setfattr, "-n", "user.tool", "-v", "0x00ff10", str(f))
    assert 'user.tool=0x00ff10' in run(getfattr, "-e", "hex", "-d", str(f))


@pytest.mark.skipif(not ROOT, reason="setting a file capability needs root")
def test_a_file_capability_on_a_copied_binary(work: Path) -> None:
    setcap, getcap = tool("setcap"), tool("getcap")
    ping = work / "ping"
    shutil.copy(sys.executable, ping)
    run(setcap, "cap_net_raw+ep", str(ping))
    assert "cap_net_raw=ep" in run(getcap, str(ping))
    assert os.getxattr(ping, "security.capability")[:4]  # the kernel's vfs_cap_data
    # a write drops them, root's too, as Linux does: a changed binary keeps no privilege
    with open(ping, "ab") as f:
        f.write(b"\0")
    assert run(getcap, str(ping)).strip() == ""
    run(setcap, "cap_net_raw+ep", str(ping))
    with open(ping, "r+b") as f:  # through the page cache as well
        f.write(b"\x7f")
    assert run(getcap, str(ping)).strip() == ""
    run(setcap, "cap_net_raw+ep", str(ping))
    os.chown(ping, 0, 0)  # and so does a chown
    assert run(getcap, str(ping)).strip() == ""


READ_AS = "import os, sys; os.setgid(int(sys.argv[2])); os.setuid(int(sys.argv[2])); " \
          "print(open(sys.argv[1]).read())"


def read_as(uid: int, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", READ_AS, str(path), str(uid)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def shared(cluster: LocalCluster) -> Iterator[list[Mount]]:
    """Two mounts (two clients) other users may use (allow_other), where they can reach them
    (pytest's own directories are root's alone)."""
    where = Path(tempfile.mkdtemp(prefix="shoal-acl-"))
    where.chmod(0o755)
    try:
        with contextlib.ExitStack() as stack:
            mounts = []
            for name in ("a", "b"):
                (where / name).mkdir(mode=0o755)
                mounts.append(stack.enter_context(contextlib.contextmanager(mount_on)(
                    cluster, where / name, "allow_other")))
            yield mounts
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.mark.skipif(not ROOT, reason="reading as other users needs root")
def test_acls_are_enforced_shown_and_handed_down(shared: list[Mount]) -> None:
    setfacl, getfacl = tool("setfacl"), tool("getfacl")
    a, b = shared
    work = a.path / f"acl-{os.getpid()}"
    work.mkdir(mode=0o755)
    secret = work / "secret"
    secret.write_text("for 1234 only")
    os.chmod(secret, 0o600)
    assert "Permission denied" in read_as(1234, secret).stderr
    run(setfacl, "-m", "u:1234:r", str(secret))
    assert read_as(1234, secret).stdout.strip() == "for 1234 only"
    assert "Permission denied" in read_as(4321, secret).stderr
    shown = run(getfacl, "-c", str(secret))
    assert "user:1234:r--" in shown and "mask::r--" in shown
    assert oct(secret.stat().st_mode & 0o777) == "0o640"  # the mask is the group bits
    # the other client enforces it too (its kernel reads the ACL from the MDT)
    other = b.path / secret.relative_to(a.path)
    assert read_as(1234, other).stdout.strip() == "for 1234 only"
    assert "Permission denied" in read_as(4321, other).stderr
    # default ACLs: a new file gets the named group, cut by its create mode
    d = work / "shared"
    d.mkdir()
    run(setfacl, "-d", "-m", "g:100:rwx", str(d))
    (d / "new").write_text("x")
    (d / "sub").mkdir()
    assert "group:100:rwx" in run(getfacl, "-cn", str(d / "new"))
    assert "default:group:100:rwx" in run(getfacl, "-cn", str(d / "sub"))
    run(setfacl, "-b", str(secret))  # every extended entry gone: the mode alone again
    assert "Permission denied" in read_as(1234, secret).stderr
    assert "Permission denied" in read_as(1234, other).stderr
