"""Client behaviour against a real cluster: the replay list, commit pressure, the load tool."""

from __future__ import annotations

import asyncio
import json
import os

from shoal.client.client import Client
from shoal.client.fileio import File
from shoal.client.imports import Import
from tests.helpers import shoal
from tests.scenarios.harness import wait_for


async def _one_ost_file_committed(c: Client, path: str) -> tuple[File, Import]:
    """A file on one OST with 512 KiB written at 0 and committed, and that OST's import."""
    f = await c.open(path, os.O_RDWR | os.O_CREAT, stripe_count=1)
    ost = c.osts[f.layout.osts[0]]
    await f.write(os.urandom(512 << 10), 0)
    await f.fsync()
    assert not ost.replay
    return f, ost


def test_client_keeps_requests_until_committed_and_forces_commits(cluster):
    """Invariant 1 bookkeeping: uncommitted requests are held, and bounded by a limit."""

    async def go() -> None:
        limit = 2 << 20
        async with Client.from_cluster_dir(cluster.dir, max_uncommitted_bytes=limit) as c:
            f, ost = await _one_ost_file_committed(c, "/pressure")
            await f.write(os.urandom(512 << 10), 512 << 10)
            # the server commits once a second; right after the write it is still held
            assert ost.replay and ost.replay[-1].transno > ost.last_committed
            assert ost.uncommitted_bytes == 512 << 10
            for i in range(2, 16):
                await f.write(os.urandom(512 << 10), i * (512 << 10))
                # past the limit the client forced a commit instead of holding more
                assert c.uncommitted_bytes <= limit
            await f.close()
            await c.sync_all()
            assert not ost.replay and ost.uncommitted_bytes == 0
            assert all(e.transno > imp.last_committed for imp in c.imports for e in imp.replay)

    asyncio.run(go())


def test_replay_list_is_ordered_and_pruned_by_last_committed(cluster):
    async def go() -> None:
        async with Client.from_cluster_dir(cluster.dir) as c:
            for i in range(20):
                await c.mkdir(f"/ordered{i}")
            entries = [(e.transno, e.xid) for e in c.mdt.replay]
            assert entries == sorted(entries)
            await c.mdt.sync()
            assert c.mdt.replay == []

    asyncio.run(go())


def test_load_command_reports_verified_data(cluster):
    out = shoal("load", "--clients", "4", "--duration", "3", "--json",
                cluster_dir=cluster.dir, timeout=120).stdout
    summary = json.loads(out)
    assert summary["acked_writes"] > 0
    assert summary["verified"] >= summary["acked_writes"]
    assert summary["lost"] == 0 and summary["corrupt"] == 0 and summary["errors"] == 0
    assert set(summary) >= {"acked_writes", "verified", "lost", "corrupt", "errors",
                            "max_stall_s"}


def test_fs_commands_round_trip(cluster, tmp_path):
    d = cluster.dir
    shoal("fs", "mkdir", "-p", "/cli/a/b", cluster_dir=d)
    src = tmp_path / "x.txt"
    src.write_text("shoal\n")
    shoal("fs", "put", str(src), "/cli/a/b/x.txt", cluster_dir=d)
    assert shoal("fs", "cat", "/cli/a/b/x.txt", cluster_dir=d).stdout == "shoal\n"
    shoal("fs", "mv", "/cli/a/b/x.txt", "/cli/a/y.txt", cluster_dir=d)
    listing = shoal("fs", "ls", "/cli/a", cluster_dir=d).stdout.split()
    assert sorted(listing) == ["b", "y.txt"]
    stat = json.loads(shoal("fs", "stat", "--json", "/cli/a/y.txt", cluster_dir=d).stdout)
    assert stat["size"] == 6 and stat["type"] == "f"
    shoal("fs", "rm", "-r", "/cli", cluster_dir=d)
    gone = shoal("fs", "stat", "/cli", cluster_dir=d, check=False)
    assert gone.returncode == 3 and "ENOENT" in gone.stderr


def test_setstripe_on_directory_applies_to_new_files(cluster):
    d = cluster.dir
    shoal("fs", "mkdir", "/striped2", cluster_dir=d)
    shoal("lfs", "setstripe", "-c", "2", "-S", "128K", "/striped2", cluster_dir=d)

    async def go() -> dict:
        async with Client.from_cluster_dir(d) as c:
            await c.write_file("/striped2/f", b"x" * 300_000)
            assert await c.read_file("/striped2/f") == b"x" * 300_000
            return await c.getstripe("/striped2/f")

    layout = asyncio.run(go())
    assert layout["stripe_count"] == 2 and layout["stripe_size"] == 128 << 10
    out = shoal("lfs", "getstripe", "/striped2/f", cluster_dir=d).stdout
    assert "lmm_stripe_count:  2" in out and "lmm_stripe_size:   131072" in out


def _objects(cluster_dir) -> int:
    return sum(1 for p in (cluster_dir / "devices").glob("ost*/objects/*/*") if p.is_file())


def test_close_waits_for_object_destroys_already_on_their_way(cluster, caplog):
    """Unlinked files' objects are destroyed in the background, in batches. Closing the
    client while a batch is in flight must wait for it: closing the imports under it
    leaked the objects ("object destroy failed ... import closed")."""

    async def go() -> int:
        async with Client.from_cluster_dir(cluster.dir) as c:
            await c.mkdir("/leak")
            before = _objects(cluster.dir)
            for i in range(150):
                f = await c.open(f"/leak/f{i}", os.O_RDWR | os.O_CREAT, stripe_count=4)
                await f.write(b"x" * 10, 0)
                await f.close()
            await c.sync_all()  # the OSTs make the object files when they commit
            assert _objects(cluster.dir) > before
            await asyncio.gather(*(c.unlink(f"/leak/f{i}") for i in range(150)))
            while c.destroyer.queued:  # until the background flush has taken the batch
                # (one loop turn at a time: with every import connected at mount, the
                # batch's replies can come back within a millisecond)
                await asyncio.sleep(0)
            assert c.destroyer.flushing
        return before

    before = asyncio.run(go())
    assert "object destroy failed" not in caplog.text
    # the OSTs remove the files when the destroys commit
    wait_for("objects destroyed", lambda: _objects(cluster.dir) == before, timeout=10)


def test_commits_are_asked_for_at_half_the_limit_without_stopping_the_writer(cluster):
    async def go() -> None:
        limit = 4 << 20
        async with Client.from_cluster_dir(cluster.dir, max_uncommitted_bytes=limit) as c:
            f, ost = await _one_ost_file_committed(c, "/half-limit")
            for i in range(1, 6):
                await f.write(os.urandom(512 << 10), i * (512 << 10))
            # 2.5 MiB held: past half the limit a commit is on its way, and the writes
            # returned without waiting for it
            assert c.uncommitted_bytes == 5 * (512 << 10)
            assert c.pressure.asked(ost)
            await c.pressure.settle()
            assert ost.uncommitted_bytes == 0 and not ost.replay
            await f.close()
            await c.unlink("/half-limit")

    asyncio.run(go())


def test_o_append_from_two_clients_lands_every_record_once(cluster):
    """The library's O_APPEND takes its offset from the MDT, as the mount's does: two
    clients appending to one file through descriptors opened before either wrote."""

    async def go() -> list[bytes]:
        async with Client.from_cluster_dir(cluster.dir) as a, \
                Client.from_cluster_dir(cluster.dir) as b:
            fa = await a.open("/appended", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            fb = await b.open("/appended", os.O_WRONLY | os.O_APPEND)

            async def drive(f: File, tag: str) -> None:
                for i in range(100):
                    await f.write(f"{tag}{i:03d}\n".encode())

            await asyncio.gather(drive(fa, "a"), drive(fb, "b"))
            await fa.close()
            await fb.close()
            return (await a.read_file("/appended")).splitlines()

    lines = asyncio.run(go())
    assert sorted(lines) == sorted(f"{t}{i:03d}".encode() for t in "ab" for i in range(100))


def test_a_path_that_is_not_utf8_gets_a_clear_error_and_changes_nothing(cluster, tmp_path):
    """Issue 17: `shoal fs put f $'/x\\xff'` printed a Python traceback."""
    local = tmp_path / "f"
    local.write_bytes(b"data")
    for args in (("fs", "put", str(local), "/bad-\udcff"), ("fs", "mkdir", "/bad-\udcfe")):
        out = shoal(*args, cluster_dir=cluster.dir, check=False)
        assert out.returncode == 2  # a usage mistake
        assert "EILSEQ" in out.stderr and "is not valid UTF-8" in out.stderr
        assert "Traceback" not in out.stdout + out.stderr
    listing = shoal("fs", "ls", "/", cluster_dir=cluster.dir).stdout
    assert "bad-" not in listing


def test_a_wrong_key_is_reported_within_seconds_as_such(cluster, tmp_path):
    """Another cluster's key: the MGS drops every hello it cannot verify, and the client says
    so instead of retrying for ever (issue 17)."""
    import shutil
    import subprocess
    import sys
    import time

    from shoal.node.spec import write_key

    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(cluster.dir / "cluster.json", other / "cluster.json")
    write_key(other)  # same layout, another key
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "shoal", "fs", "ls", "/", "--dir", str(other)],
                          capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    assert proc.returncode == 1
    assert "key is most likely not the cluster's" in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr, proc.stderr
    assert took < 60  # before: it retried until recovery_timeout (300 s) or for ever
