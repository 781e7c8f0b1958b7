"""A mount's life: `shoal mount` / `shoal umount`, SIGTERM, options, FUSE missing, and the
rules that keep the serving process independent of its own mount (invariant 3)."""

from __future__ import annotations

import ast
import errno
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from shoal.client.sync import SyncClient
from shoal.cluster.local import LocalCluster
from shoal.errors import InvalidArgument
from shoal.mount.mounts import alive, mount_entry, serving_pid
from shoal.mount.options import parse_options
from shoal.mount.run import LATE_IMPORT, check_fuse
from shoal.workload.bench_mount import start_mount, stop_mount
from tests.helpers import shoal

MiB = 1 << 20
MOUNT_SRC = Path(__file__).resolve().parents[2] / "src" / "shoal" / "mount"


def test_mount_and_umount_commands(cluster: LocalCluster, tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    mgs = ",".join(cluster.spec.target_nids(cluster.spec.mgs))
    out = shoal("mount", "--mgs", mgs, "--key", str(cluster.dir / "key"), str(mp),
                "--log", str(tmp_path / "log"))
    assert f"mounted scratch on {mp}" in out.stderr
    pid = serving_pid(mp)
    assert pid is not None
    try:
        assert mount_entry(mp) == ("shoal:scratch", "fuse.shoal")
        (mp / "hello").write_text("hi")
        assert (mp / "hello").read_text() == "hi"
        again = shoal("mount", str(mp), cluster_dir=cluster.dir, check=False)
        assert again.returncode == 1 and "already mounted" in again.stderr
    finally:
        shoal("umount", str(mp))
    assert mount_entry(mp) is None
    assert not alive(pid)  # umount waited for the process to finish
    gone = shoal("umount", str(mp), check=False)
    assert gone.returncode == 3 and "not mounted" in gone.stderr  # not found


def test_bad_options_and_missing_fuse(cluster: LocalCluster, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        parse_options(["bogus"])
    with pytest.raises(InvalidArgument):
        parse_options(["attr_timeout=-1"])
    for bad in ("metrics=9100", "metrics=:9100", "metrics=host:0", "metrics=host:http"):
        with pytest.raises(InvalidArgument, match="ADDR:PORT"):
            parse_options([bad])
    assert parse_options(["metrics=127.0.0.1:9100"]).metrics == ("127.0.0.1", 9100)
    opts = parse_options(["ro,allow_other", "attr_timeout=0.5,max_tasks=8"])
    assert opts.read_only and opts.attr_timeout == 0.5 and opts.max_tasks == 8
    assert {"ro", "allow_other", "default_permissions"} <= opts.fuse_options("x")
    res = shoal("mount", str(tmp_path), "-o", "bogus", cluster_dir=cluster.dir, check=False)
    assert res.returncode == 2 and "unknown mount option" in res.stderr  # a usage mistake
    unreachable = shoal("mount", "--mgs", "127.0.0.1:1", "--key", str(cluster.dir / "key"),
                        "-o", "mount_timeout=0.5", str(tmp_path), check=False)
    assert unreachable.returncode == 1 and "ETIMEDOUT" in unreachable.stderr
    missing = check_fuse(tmp_path / "no-fuse-here")
    assert not missing.ok and "modprobe fuse" in missing.reason


def test_read_only_mount(cluster: LocalCluster, tmp_path: Path, lib: SyncClient) -> None:
    lib.write_file("/ro-visible", b"seen")
    mp = tmp_path / "mnt"
    mp.mkdir()
    proc = start_mount(cluster.dir, mp, ["ro"], tmp_path / "log")
    try:
        assert (mp / "ro-visible").read_bytes() == b"seen"
        with pytest.raises(OSError) as info:
            (mp / "new").write_text("x")
        assert info.value.errno == errno.EROFS
    finally:
        assert stop_mount(proc) == 0


def test_sigterm_lands_writes_and_needs_nothing_from_the_mount(
        cluster: LocalCluster, tmp_path: Path, lib: SyncClient) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    log = tmp_path / "log"
    proc = start_mount(cluster.dir, mp, [], log)
    try:
        assert os.readlink(f"/proc/{proc.pid}/cwd") == "/"
        # a workload touching every kind of request once the mount is up
        d = mp / "sigterm"
        d.mkdir()
        (d / "a").write_bytes(os.urandom(2 * MiB))
        os.rename(d / "a", d / "b")
        os.symlink("b", d / "l")
        os.link(d / "b", d / "h")
        os.truncate(d / "b", MiB)
        os.chmod(d / "b", 0o600)
        os.utime(d / "b", (1, 2))
        assert len((d / "l").read_bytes()) == MiB and sorted(os.listdir(d)) == ["b", "h", "l"]
        os.statvfs(mp)
        os.unlink(d / "h")
        # left open with writes the mount has only buffered
        payload = os.urandom(3 * MiB + 5)
        fd = os.open(d / "open", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, payload)
    finally:
        code = stop_mount(proc)
    with pytest.raises(OSError) as gone:
        os.close(fd)  # the mount it was open on has gone away
    assert gone.value.errno == errno.ENOTCONN
    assert code == 0
    assert mount_entry(mp) is None
    assert lib.read_file("/sigterm/open") == payload  # landed and reported at unmount
    text = log.read_text()
    assert LATE_IMPORT not in text, text
    assert "Traceback" not in text, text


def test_mount_package_imports_only_at_module_level() -> None:
    """Invariant 3: no import statement inside a function anywhere in shoal.mount."""
    for path in sorted(MOUNT_SRC.glob("*.py")):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                for node in ast.walk(fn):
                    assert not isinstance(node, ast.Import | ast.ImportFrom), \
                        f"{path.name}:{node.lineno}: import inside {fn.name}()"


def test_a_stalled_oss_stalls_only_the_calls_that_need_it(
        fresh_cluster: LocalCluster, tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    proc = start_mount(fresh_cluster.dir, mp, [], tmp_path / "log")
    try:
        payload = os.urandom(8 * MiB)  # striped over every OST
        (mp / "big").write_bytes(payload)
        got: list[bytes] = []
        oss = fresh_cluster.spec.targets[-1].nodes[0]  # serves some of big's OSTs
        assert fresh_cluster.signal_node(oss, signal.SIGSTOP)
        try:
            reader = threading.Thread(target=lambda: got.append((mp / "big").read_bytes()))
            reader.start()
            time.sleep(0.3)
            assert reader.is_alive()  # waiting on the stopped OSS
            t0 = time.monotonic()
            (mp / "meta").mkdir()
            (mp / "meta" / "f").touch()  # a create writes nothing to an OST
            assert sorted(os.listdir(mp)) == ["big", "meta"]
            assert os.stat(mp / "big").st_size == len(payload)
            assert time.monotonic() - t0 < 5, "metadata calls waited for the stalled OSS"
        finally:
            fresh_cluster.signal_node(oss, signal.SIGCONT)
        reader.join(timeout=30)
        assert got == [payload]
    finally:
        assert stop_mount(proc) == 0
