"""A real local cluster: `shoal up`, the CLI, the client library, restart durability."""

from __future__ import annotations

import asyncio
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.client.client import Client
from shoal.client.sync import SyncClient
from shoal.errors import (
    Exists,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NotADirectory,
    NotEmpty,
    NotFound,
)
from tests.helpers import shoal, status_json


def test_status_json_lists_nodes_and_targets(cluster):
    st = status_json(cluster.dir)
    assert {n["name"]: n["state"] for n in st["nodes"]} == {
        "nid00060": "alive", "nid00061": "alive", "nid00062": "alive", "nid00063": "alive"}
    targets = {t["name"]: t for t in st["targets"]}
    assert set(targets) == {"MGS", "scratch-MDT0000", "scratch-OST0000", "scratch-OST0001",
                            "scratch-OST0002", "scratch-OST0003"}
    assert targets["scratch-OST0001"]["owner"] == "nid00063"
    assert targets["scratch-OST0001"]["nodes"] == ["nid00063", "nid00062"]
    assert all(t["state"] == "UP" and t["epoch"] >= 1 for t in targets.values())


def test_key_file_is_private(cluster):
    mode = stat.S_IMODE(os.stat(cluster.dir / "key").st_mode)
    assert mode == 0o600


def test_put_get_round_trip_striped(cluster, tmp_path: Path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(5 * (1 << 20) + 12345))
    shoal("fs", "put", str(src), "/cli-put.bin", cluster_dir=cluster.dir)
    dst = tmp_path / "dst.bin"
    shoal("fs", "get", "/cli-put.bin", str(dst), cluster_dir=cluster.dir)
    assert dst.read_bytes() == src.read_bytes()
    out = shoal("lfs", "getstripe", "/cli-put.bin", cluster_dir=cluster.dir).stdout
    assert "lmm_stripe_count:  4" in out
    assert "lmm_stripe_size:   1048576" in out
    assert "obdidx" in out
    ls = shoal("fs", "ls", "-l", "/", cluster_dir=cluster.dir).stdout
    assert "cli-put.bin" in ls and str(src.stat().st_size) in ls


def test_lfs_df_shows_every_target(cluster):
    out = shoal("lfs", "df", cluster_dir=cluster.dir).stdout
    for name in ("scratch-MDT0000_UUID", "scratch-OST0000_UUID", "scratch-OST0003_UUID",
                 "filesystem_summary:"):
        assert name in out


def _df_rows(out: str) -> dict[str, list[str]]:
    return {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.split()}


def test_lfs_df_counts_add_up_for_the_mdt_too(cluster):
    """Lustre's columns: total = used + available (within what the filesystem reserves),
    percentages 0-100, the MDT's blocks shown (it showed 0 blocks, and with -i a negative
    Used and a Use% of -10,277,094%)."""
    for flags in ([], ["-i"]):
        rows = _df_rows(shoal("lfs", "df", *flags, cluster_dir=cluster.dir).stdout)
        for name in ("scratch-MDT0000_UUID", "scratch-OST0000_UUID", "filesystem_summary:"):
            total, used, avail = (int(x) for x in rows[name][1:4])
            pct = int(rows[name][4].rstrip("%"))
            assert total > 0 and used >= 0 and avail >= 0, (flags, rows[name])
            assert used + avail <= total and 0 <= pct <= 100, (flags, rows[name])
        if flags:  # the MDT's inodes: the files made so far are among the used
            assert int(rows["scratch-MDT0000_UUID"][2]) >= 1


def test_status_keeps_whole_names_when_not_on_a_terminal(cluster):
    out = shoal("status", cluster_dir=cluster.dir, columns=None).stdout  # a pipe
    for name in ("scratch-MDT0000", "scratch-OST0000", "scratch-OST0003"):
        assert name in out, out
    assert "…" not in out


def test_events_follow_prints_every_event_as_one_line(cluster):
    """-f prints the old events as the new ones, aligned lines (it switched from a table to
    lines once following)."""
    proc = subprocess.Popen([sys.executable, "-m", "shoal", "events", "--dir",
                             str(cluster.dir), "-f", "--last", "3"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
    finally:
        proc.kill()
        proc.wait()
    for line in lines:
        assert "│" not in line and "┃" not in line, lines
        assert re.match(r"\d\d:\d\d:\d\d\.\d{3} +nid000\d\d +\w+", line), lines


def test_health_check(cluster):
    out = shoal("ctl", "get_param", "health_check", cluster_dir=cluster.dir).stdout
    assert "healthy" in out and "NOT HEALTHY" not in out
    stats = shoal("ctl", "get_param", "obdfilter.*.stats", cluster_dir=cluster.dir).stdout
    assert "obdfilter.scratch-OST0000.stats=" in stats


def test_service_timeouts_and_recovery_status_are_reported(cluster):
    with SyncClient.from_cluster_dir(cluster.dir) as c:
        c.write_file("/at-probe", b"x" * (4 << 20))  # 1 MiB stripes over all 4 OSTs
    out = shoal("ctl", "get_param", "obdfilter.*.timeouts", cluster_dir=cluster.dir).stdout
    # every OST served a write: its service estimate has a sample (worst > 0)
    lines = [ln for ln in out.splitlines() if "service" in ln]
    assert len(lines) == 4, out
    assert all(" 0.000 (at 0," not in ln for ln in lines), out
    rs = shoal("ctl", "get_param", "*.*.recovery_status", cluster_dir=cluster.dir).stdout
    assert "status: COMPLETE" in rs or "status: INACTIVE" in rs, rs


def test_namespace_errors_over_rpc(cluster):
    with SyncClient.from_cluster_dir(cluster.dir) as c:
        c.mkdir("/errs")
        c.write_file("/errs/f", b"hello")
        with pytest.raises(Exists):
            c.mkdir("/errs")
        with pytest.raises(NotFound):
            c.stat("/errs/nope")
        with pytest.raises(NotADirectory):
            c.mkdir("/errs/f/sub")
        with pytest.raises(NotEmpty):
            c.rmdir("/errs")
        with pytest.raises(IsADirectory):
            c.unlink("/errs")
        with pytest.raises(NameTooLong):
            c.create("/errs/" + "x" * 256)
        with pytest.raises(InvalidArgument):
            c.create("/errs/a\0b")
        with pytest.raises(InvalidArgument):
            c.create("relative")
        assert c.read_file("/errs/f") == b"hello"


def test_bad_path_on_cli_is_a_clear_error(cluster):
    proc = shoal("fs", "stat", "/no/such/file", cluster_dir=cluster.dir, check=False)
    assert proc.returncode == 3  # not found
    assert "ENOENT" in proc.stderr and "Traceback" not in proc.stderr


def test_file_ops_through_library(cluster):
    async def go() -> None:
        async with Client.from_cluster_dir(cluster.dir) as c:
            await c.mkdir("/lib")
            data = os.urandom(3 << 20)
            await c.write_file("/lib/a", data, stripe_count=2, stripe_size=1 << 20)
            assert await c.read_file("/lib/a") == data
            f = await c.open("/lib/a", os.O_RDWR)
            await f.write(b"XYZ", 1 << 20)
            await f.close()
            got = await c.read_file("/lib/a")
            assert got[(1 << 20):(1 << 20) + 3] == b"XYZ" and len(got) == len(data)
            await c.truncate("/lib/a", 100)
            assert await c.read_file("/lib/a") == data[:100]
            await c.rename("/lib/a", "/lib/b")
            await c.link("/lib/b", "/lib/c")
            assert (await c.stat("/lib/c")).nlink == 2
            await c.symlink("/lib/b", "/lib/s")
            assert await c.readlink("/lib/s") == "/lib/b"
            assert sorted(await c.listdir("/lib")) == ["b", "c", "s"]
            await c.unlink("/lib/b")
            assert await c.read_file("/lib/c") == data[:100]

    asyncio.run(go())


def test_restart_keeps_committed_data(fresh_cluster):
    """A clean stop commits; after the node restarts, in a new epoch, the data is all there."""
    data = os.urandom(2 << 20)
    with SyncClient.from_cluster_dir(fresh_cluster.dir) as c:
        c.write_file("/keep", data)
    before = {t["name"]: t["epoch"] for t in status_json(fresh_cluster.dir)["targets"]}
    for node in ("nid00062", "nid00060"):
        fresh_cluster.stop_node(node)
        fresh_cluster.start_node(node)
    asyncio.run(fresh_cluster.wait_serving(timeout=30))
    after = {t["name"]: t["epoch"] for t in status_json(fresh_cluster.dir)["targets"]}
    assert after["scratch-OST0000"] == before["scratch-OST0000"] + 1
    assert after["scratch-MDT0000"] == before["scratch-MDT0000"] + 1
    with SyncClient.from_cluster_dir(fresh_cluster.dir) as c:
        assert c.read_file("/keep") == data


def test_client_rides_through_node_restart_and_replays(fresh_cluster):
    """kill -9 loses the uncommitted tail on the server; the client replays it."""
    data = os.urandom(1 << 20)

    async def go() -> None:
        async with Client.from_cluster_dir(fresh_cluster.dir) as c:
            await c.write_file("/replayed", data, stripe_count=4)
            # the OSTs have not committed yet (commit interval 1 s): kill both OSS nodes now
            fresh_cluster.kill_node("nid00062")
            fresh_cluster.kill_node("nid00063")
            fresh_cluster.start_node("nid00062")
            fresh_cluster.start_node("nid00063")
            assert await c.read_file("/replayed") == data

    asyncio.run(go())
