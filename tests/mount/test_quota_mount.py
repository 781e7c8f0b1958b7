"""Issue 23 through the mount, under `shoal load`: a user's process writing past the block hard
limit gets EDQUOT from write(2), fsync(2) or close(2) (the mount's write-behind reports the
error of a write in flight at the next write, flush or fsync), and one creating files past
the inode hard limit gets it from open(2), with the MDS node (the quota master's) or an OSS
node killed in the middle of the writing, which the program goes on through; after the
failover the same user meets the same limits again. What an fsync acknowledged before reads
back, a refused write makes the file no longer, the usage stays within the limits and equals
a recount of the targets, and the load loses nothing. The mount creates files as the calling
process's uid and gid (mount/fs.py), so the programs run as the user, on a mount that lets
them in (allow_other, as root mounts it).

Nodes (src/shoal/cluster/scratch.fs_defs): nid00060 serves MGS+MDT0000 (backup nid00061);
nid00062 serves OST0000 and OST0002 (backup nid00063).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.client import quota
from shoal.client.client import Client
from shoal.cluster.local import LocalCluster
from tests.mount.conftest import Mount, mount_on
from tests.scenarios.harness import Load, assert_clean, served_by, wait_for

MiB = 1 << 20
UID = 7301
HARD_KIB = 16 << 10  # 16 MiB over 4 OSTs
IHARD = 12
PYTHON = "/usr/bin/python3"  # one the user may run (the test's own is under /root)

pytestmark = [
    pytest.mark.timeout(150),
    pytest.mark.skipif(os.geteuid() != 0 or not os.access(PYTHON, os.X_OK),
                       reason=f"needs root (to run programs as another user) and {PYTHON}"),
]

# chunk i of the file: the same bytes here and in the test
CHUNK = "hashlib.sha256(str(i).encode()).digest() * (MiB // 32)"

# writes 1 MiB at a time, fsyncs every 4 MiB, until an error; prints what happened. With a
# control directory: once 4 MiB are synced, says so (`reached`) and waits for `killed`
WRITER = f"""
import errno, hashlib, json, os, sys, time
MiB = 1 << 20
ctl = sys.argv[2] if len(sys.argv) > 2 else None
out = {{"errno": None, "at": None, "synced": 0, "written": 0}}
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
try:
    for i in range(64):
        step = "write"
        os.write(fd, {CHUNK})
        out["written"] = (i + 1) * MiB
        if (i + 1) % 4 == 0:
            step = "fsync"
            os.fsync(fd)
            out["synced"] = (i + 1) * MiB
            if ctl and i == 3:
                open(os.path.join(ctl, "reached"), "w").close()
                deadline = time.monotonic() + 60
                while not os.path.exists(os.path.join(ctl, "killed")):
                    if time.monotonic() > deadline:
                        sys.exit("never killed")
                    time.sleep(0.02)
except OSError as exc:
    out["errno"], out["at"] = exc.errno, step
try:
    os.close(fd)
except OSError as exc:
    if out["errno"] is None:
        out["errno"], out["at"] = exc.errno, "close"
print(json.dumps(out))
"""

# creates empty files until an error
CREATOR = """
import json, os, sys
n, err = 0, None
try:
    for n in range(1000):
        os.close(os.open(os.path.join(sys.argv[1], f"e{n}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    n = 1000
except OSError as exc:
    err = exc.errno
print(json.dumps({"created": n, "errno": err}))
"""


def chunk(i: int) -> bytes:
    return eval(CHUNK, {"hashlib": hashlib, "MiB": MiB, "i": i})  # noqa: S307


def start_as_user(program: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([PYTHON, "-I", "-c", program, *args], user=UID, group=UID,
                            extra_groups=[], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)


def result(p: subprocess.Popen[str]) -> dict:
    out, err = p.communicate(timeout=90)
    assert p.returncode == 0 and err == "", (p.returncode, out, err)
    return json.loads(out)


def as_user(program: str, *args: str) -> dict:
    return result(start_as_user(program, *args))


def lib(cl: LocalCluster, fn) -> object:  # noqa: ANN001
    async def go() -> object:
        async with Client.from_cluster_dir(cl.dir) as c:
            return await fn(c)

    return asyncio.run(go())


@pytest.fixture
def shared(fresh_cluster: LocalCluster) -> Iterator[Mount]:
    """A mount of the test's own cluster that other users may use (allow_other), where
    they can reach it (pytest's own directories are root's alone)."""
    where = Path(tempfile.mkdtemp(prefix="shoal-quota-"))
    where.chmod(0o755)
    try:
        yield from mount_on(fresh_cluster, where, "allow_other")
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.mark.parametrize("kill", [
    pytest.param(("nid00060", "nid00061", ["MGS", "scratch-MDT0000"]), id="mds-failover"),
    pytest.param(("nid00062", "nid00063", ["scratch-OST0000", "scratch-OST0002"]),
                 id="oss-failover"),
])
def test_a_user_past_the_limits_gets_edquot_through_the_mount(
        fresh_cluster: LocalCluster, shared: Mount,
        kill: tuple[str, str, list[str]]) -> None:
    cl = fresh_cluster
    load = Load(cl, clients=4, duration=7.0)

    async def setup(c: Client) -> None:
        await c.mkdir("/quser")
        await c.chown("/quser", UID, UID)
        assert await quota.set_quota(c, "u", UID, bhard=HARD_KIB, ihard=IHARD) == []

    lib(cl, setup)
    load.wait_writing()
    d = shared.path / "quser"
    node, backup, moved = kill
    ctl = shared.path.parent / "ctl"
    ctl.mkdir()
    ctl.chmod(0o777)
    writer = start_as_user(WRITER, str(d / "big"), str(ctl))
    try:
        wait_for("4 MiB synced",
                 lambda: (ctl / "reached").exists() or writer.poll() is not None)
        assert writer.poll() is None, result(writer)
        assert cl.kill_node(node)
        (ctl / "killed").touch()
        wait_for(f"{moved} on {backup}", served_by(cl, backup, moved), timeout=40)
        out = result(writer)
    finally:
        if writer.poll() is None:  # the test failed: no program left on the mount
            writer.kill()
            writer.wait()
    assert out["written"] > 4 * MiB, out  # it went on after the kill
    assert out["errno"] == errno.EDQUOT, (out, shared.log_text()[-3000:])
    assert out["synced"] >= 4 * MiB, out
    st = (d / "big").stat()
    assert st.st_uid == UID and st.st_gid == UID

    # the limit still holds: another file stops at it too
    again = as_user(WRITER, str(d / "again"))
    assert again["errno"] == errno.EDQUOT, again
    # and so does the inode limit
    made = as_user(CREATOR, str(d))
    assert made["errno"] == errno.EDQUOT, made
    assert_clean(load.result())

    async def after(c: Client) -> tuple[quota.QuotaReport, dict, bytes, bytes]:
        await c.sync_all()
        r = await quota.get_quota(c, "u", UID)
        drift = await quota.check(c)
        return r, drift, await c.read_file("/quser/big"), await c.read_file("/quser/again")

    r, drift, big, again_data = lib(cl, after)
    assert r.unreachable == [], r
    assert out["synced"] // 1024 <= r.kbytes <= HARD_KIB, (out, r)
    assert r.inodes == IHARD, r
    assert all(v == [] for v in drift.values()), drift
    assert "Traceback" not in shared.log_text()
    # what an fsync acknowledged reads back; nothing after it is other than what was written
    want = b"".join(chunk(i) for i in range(out["written"] // MiB))
    assert big[:out["synced"]] == want[:out["synced"]]
    assert len(big) <= len(want)
    # a refused write does not make the file longer, even one the program was told of only
    # at its fsync or close (as on NFS and Lustre): every byte of it landed
    assert len(big) <= HARD_KIB * 1024, len(big)
    for pos in range(out["synced"], len(big), 4096):  # holes where a write was refused
        page = big[pos:pos + 4096]
        assert page in (want[pos:pos + 4096], bytes(len(page))), pos
    assert again["synced"] == 0 or again_data[:again["synced"]] == \
        b"".join(chunk(i) for i in range(again["synced"] // MiB))
