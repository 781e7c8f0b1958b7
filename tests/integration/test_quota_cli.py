"""`shoal lfs setquota|quota|project|quotacheck` on a real cluster (issue 23): limits shown in
lfs quota's columns, usage after a user writes, `*` past a limit, one row per target with
-v, projects set and listed as lfs project does, mistakes refused in one line. Ids 7000-7999
and paths under /qcli are this file's alone."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from shoal.cli.quota_cmds import INACCURATE, format_report, parse_grace, parse_limit
from shoal.client import quota
from shoal.client.client import Client
from shoal.protocol import quota as q
from tests.helpers import shoal

MiB = 1 << 20
HEADER = ("     Filesystem  kbytes   quota   limit   grace   files   quota   limit   grace")
GRACE = re.compile(r"([0-9]+[wdhms])+")
pytestmark = pytest.mark.timeout(240)


def lfs(cluster, *args: str, check: bool = True):  # noqa: ANN001, ANN201
    return shoal("lfs", *args, cluster_dir=cluster.dir, check=check)


def admin(cluster, body):  # noqa: ANN001, ANN201
    """Run `body(client)` with a root client of the cluster."""

    async def go():  # noqa: ANN202
        async with Client.from_cluster_dir(cluster.dir) as c:
            return await body(c)

    return asyncio.run(go())


def as_user(cluster, uid: int, body):  # noqa: ANN001, ANN201
    async def go():  # noqa: ANN202
        async with Client.from_cluster_dir(cluster.dir, uid=uid, gid=uid) as c:
            await body(c)
            await c.sync_all()

    asyncio.run(go())


def target_names(cluster) -> list[str]:  # noqa: ANN001
    """The MDT's name, then the OSTs' (scratch-MDT0000, scratch-OST0000, ...)."""

    async def names(c: Client) -> list[str]:
        return [c.mdt.target, *(c.osts[i].target for i in sorted(c.osts))]

    return admin(cluster, names)


def fs_row(out: str) -> list[str]:
    """The /scratch row of `lfs quota`, split into its nine columns."""
    lines = out.splitlines()
    assert lines[1] == HEADER, out
    return lines[2].split()


def test_limits_and_usage_in_lfs_columns_with_a_star_past_the_soft_limit(cluster) -> None:
    uid = 7001
    admin(cluster, lambda c: c.makedirs("/qcli/use"))
    lfs(cluster, "setquota", "-u", str(uid), "-b", "2M", "-B", "1g", "-i", "1", "-I", "2k")
    out = lfs(cluster, "quota", "-u", str(uid)).stdout
    assert out.splitlines()[0] == f"Disk quotas for usr {uid} (uid {uid}):"
    # exactly lfs's widths: %15s, then " %7s%c %6s %7s %7s" for blocks and for inodes
    assert out.splitlines()[2] == ("       /scratch       0    2048 1048576       -       0"
                                   "       1    2048       -"), out

    as_user(cluster, uid, lambda c: c.write_file("/qcli/use/a", os.urandom(3 * MiB)))
    row = fs_row(lfs(cluster, "quota", "-u", str(uid)).stdout)
    assert row[0] == "/scratch"
    assert row[1].endswith("*") and int(row[1][:-1]) >= 3072  # past the 2048 KiB soft limit
    assert row[2:4] == ["2048", "1048576"]
    assert row[5:8] == ["1", "1", "2048"]  # one file: at the inode soft limit, not past it

    as_user(cluster, uid, lambda c: c.create("/qcli/use/b"))
    deadline = time.monotonic() + 20
    while True:  # the block grace starts once the OSTs tell the master (their next sync)
        row = fs_row(lfs(cluster, "quota", "-u", str(uid)).stdout)
        if GRACE.fullmatch(row[4]) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert GRACE.fullmatch(row[4]) and row[4].startswith("6d23h"), row  # of the 1w default
    assert row[5] == "2*" and GRACE.fullmatch(row[8]), row  # the inode grace runs at once

    data = json.loads(lfs(cluster, "quota", "-u", str(uid), "--json").stdout)
    assert data["kbytes"] == int(row[1][:-1]) and data["inodes"] == 2
    assert data["over"] == {"blocks": True, "inodes": True}
    assert data["limits"]["bhard"] == 1 << 20 and data["limits"]["ihard"] == 2048


def test_verbose_lists_every_target_and_the_grants(cluster) -> None:
    uid = 7101
    admin(cluster, lambda c: c.makedirs("/qcli/verbose"))
    lfs(cluster, "setquota", "-u", str(uid), "-B", "100M")
    as_user(cluster, uid, lambda c: c.write_file("/qcli/verbose/f", os.urandom(2 * MiB),
                                                 stripe_count=-1))
    targets = target_names(cluster)
    lines = lfs(cluster, "quota", "-v", "-u", str(uid)).stdout.splitlines()
    assert lines[1] == HEADER and lines[2].split()[0] == "/scratch"
    rows = {}
    for name in targets:
        assert lines.count(f"{name}_UUID") == 1, lines
        rows[name] = lines[lines.index(f"{name}_UUID") + 1].split()
    mdt, osts = rows[targets[0]], [rows[t] for t in targets[1:]]
    assert mdt == ["0", "-", "0", "-", "1", "-", "0", "-"]  # its one inode
    kbytes = [int(r[0].rstrip("*")) for r in osts]
    granted = [int(r[2]) for r in osts]
    assert all(r[1] == "-" and r[3:] == ["-"] * 5 for r in osts), osts
    assert sum(kbytes) == int(lines[2].split()[1]) >= 2048
    assert all(g >= k for g, k in zip(granted, kbytes, strict=True))  # a grant covers usage
    assert sum(g > 0 for g in granted) >= 2  # striped over all OSTs: each asked for a grant
    assert lines[-1] == ("Total allocated inode limit: 0, total allocated block limit: "
                         f"{sum(granted)}")


def test_project_set_and_listed_as_lfs_project_does(cluster) -> None:
    async def tree(c: Client) -> None:
        await c.makedirs("/qcli/proj/a")
        await c.create("/qcli/proj/f")

    admin(cluster, tree)
    lfs(cluster, "project", "-p", "7301", "-s", "/qcli/proj/a")
    assert lfs(cluster, "project", "-d", "/qcli/proj/a").stdout == " 7301 P /qcli/proj/a\n"
    assert lfs(cluster, "project", "/qcli/proj").stdout.splitlines() == [
        " 7301 P /qcli/proj/a", "    0 - /qcli/proj/f"]

    async def inside(c: Client) -> None:  # what is made in /qcli/proj/a takes its project
        await c.create("/qcli/proj/a/new")
        await c.mkdir("/qcli/proj/a/sub")

    as_user(cluster, 7302, inside)
    assert lfs(cluster, "project", "/qcli/proj/a").stdout.splitlines() == [
        " 7301 - /qcli/proj/a/new", " 7301 P /qcli/proj/a/sub"]

    lfs(cluster, "project", "-p", "7303", "-s", "-r", "/qcli/proj")
    assert lfs(cluster, "project", "-r", "/qcli/proj").stdout.splitlines() == [
        " 7303 P /qcli/proj/a", " 7303 - /qcli/proj/a/new", " 7303 P /qcli/proj/a/sub",
        " 7303 - /qcli/proj/f"]
    assert lfs(cluster, "project", "-d", "/qcli/proj").stdout == " 7303 P /qcli/proj\n"
    assert fs_row(lfs(cluster, "quota", "-p", "7303").stdout)[5] == "5"  # the tree's inodes
    assert fs_row(lfs(cluster, "quota", "-p", "7301").stdout)[5] == "0"  # moved, all of it

    lfs(cluster, "project", "-C", "-r", "/qcli/proj/a")
    assert lfs(cluster, "project", "-r", "/qcli/proj/a").stdout.splitlines() == [
        "    0 - /qcli/proj/a/new", "    0 - /qcli/proj/a/sub"]
    assert lfs(cluster, "project", "-d", "/qcli/proj/a").stdout == "    0 - /qcli/proj/a\n"


def test_grace_periods_set_and_shown_as_lfs_prints_them(cluster) -> None:
    try:
        lfs(cluster, "setquota", "-t", "-g", "--block-grace", "1w2d", "--inode-grace", "3600")
        out = lfs(cluster, "quota", "-t", "-g").stdout
        assert out == "Block grace time: 1w2d; Inode grace time: 1h\n"
        lfs(cluster, "setquota", "-t", "-g", "-b", "90")  # lfs's -t form; inodes unchanged
        out = lfs(cluster, "quota", "-t", "-g").stdout
        assert out == "Block grace time: 1m30s; Inode grace time: 1h\n"
        assert lfs(cluster, "quota", "-t", "-u").stdout.startswith("Block grace time: 1w;")
    finally:
        lfs(cluster, "setquota", "-t", "-g", "--block-grace", "1w", "--inode-grace", "1w")


def test_mistakes_get_one_clean_line_and_change_nothing(cluster) -> None:
    cases = {  # arguments: (exit code, what the line says)
        ("setquota", "-u", "no-such-user-qcli", "-B", "1M"): (3, "no such user"),
        ("setquota", "-B", "1M"): (2, "-u USER, -g GROUP or -p PROJID"),
        ("setquota", "-u", "7401", "-B", "10X"): (2, "not a limit: '10X'"),
        ("setquota", "-u", "7401", "-B", "-5"): (2, "cannot be negative"),
        ("setquota", "-u", "-5", "-B", "1M"): (2, "cannot be negative"),
        ("setquota", "-u", "7401", "-I", "2.5"): (2, "not a whole number"),
        ("setquota", "-u", "0", "-B", "1M"): (1, "id 0 is never limited"),
        ("setquota", "-u", "root", "-B", "1M"): (1, "id 0 is never limited"),
        ("setquota", "-u", "7401", "-b", "2M", "-B", "1M"): (2, "above the hard one"),
        ("setquota", "-u", "7401"): (2, "nothing to set"),
        ("setquota", "-t", "-u", "--block-grace", "1x"): (2, "not a time"),
        ("quota", "-u", "no-such-user-qcli"): (3, "no such user"),
        ("quota", "-p", "abc"): (2, "a project id is a number"),
        ("quota", "-u"): (2, "needs an id"),
        ("project", "-p", "7401", "-s", "/qcli/no-such"): (3, "no such file"),
        ("project", "-d", "-r", "/qcli"): (2, "-d lists a directory itself"),
    }
    with ThreadPoolExecutor(4) as pool:
        got = dict(zip(cases, pool.map(lambda a: lfs(cluster, *a, check=False), cases),
                       strict=True))
    for args, (code, says) in cases.items():
        p = got[args]
        assert (p.returncode, p.stdout) == (code, ""), (args, p.returncode, p.stdout)
        lines = p.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("shoal: ") and says in lines[0], \
            (args, p.stderr)
    assert fs_row(lfs(cluster, "quota", "-u", "7401").stdout)[1:9] == [
        "0", "0", "0", "-", "0", "0", "0", "-"]  # nothing refused was set


def test_quotacheck_finds_no_drift(cluster) -> None:
    admin(cluster, lambda c: c.makedirs("/qcli/check"))
    as_user(cluster, 7501, lambda c: c.write_file("/qcli/check/f", os.urandom(MiB)))
    n = len(target_names(cluster))
    assert lfs(cluster, "quotacheck").stdout == f"no drift on {n} targets\n"
    assert lfs(cluster, "quota_check").stdout == f"no drift on {n} targets\n"
    drift = json.loads(lfs(cluster, "quotacheck", "--json").stdout)
    assert len(drift) == n and all(rows == [] for rows in drift.values())


# -- without a cluster: the parsing and the layout of what lfs would print ----------------------
def test_sizes_and_times_are_read_as_lfs_reads_them() -> None:
    assert parse_limit("1024", "-B", inodes=False) == 1024  # KiB
    assert parse_limit("10M", "-B", inodes=False) == 10240
    assert parse_limit("1g", "-B", inodes=False) == 1 << 20
    assert parse_limit("2T", "-B", inodes=False) == 2 << 30
    assert parse_limit("1.1m", "-B", inodes=False) == 1127  # up to the KiB above
    assert parse_limit("5000", "-I", inodes=True) == 5000
    assert parse_limit("2k", "-I", inodes=True) == 2048
    assert parse_limit("1m", "-I", inodes=True) == 1 << 20
    assert parse_grace("1w2d3h4m5s", "g") == 604800 + 2 * 86400 + 3 * 3600 + 4 * 60 + 5
    assert parse_grace("90", "g") == 90 and parse_grace("2h", "g") == 7200
    assert parse_grace("1h2", "g") == 3602  # a bare number last: seconds, as lfs reads it
    for bad in ("", "h", "1h2x", "1x", "0", "-1", "1.5h"):
        with pytest.raises(Exception, match="not a time|more than 0"):
            parse_grace(bad, "g")


def test_a_target_that_did_not_answer_is_shown_as_lfs_shows_it() -> None:
    r = quota.QuotaReport("g", 7601, q.Limits(bhard=4096), q.DEFAULT_GRACE, q.DEFAULT_GRACE,
                          1000.0, [quota.TargetUsage("scratch-MDT0000", 0, 3, -1),
                                   quota.TargetUsage("scratch-OST0000", 4096, 0, 5120)],
                          ["scratch-OST0001"])
    lines = format_report(r, "staff", "scratch", verbose=True)
    assert lines[0] == "Disk quotas for grp staff (gid 7601):"
    assert lines[2] == ("       /scratch  [4096]*      0    4096       -       3       0"
                        "       0       -")
    assert lines[5:9] == ["scratch-OST0000_UUID",
                          "                   4096       -    5120       -       -       -"
                          "       -       -",
                          "scratch-OST0001_UUID", "                (did not answer)"]
    assert lines[-2:] == ["Total allocated inode limit: 0, total allocated block limit: 5120",
                          INACCURATE]
