"""The command line with hostile or mistaken arguments (issue 17): every one ends with a
one-line reason and a non-zero exit, never a Python traceback, and changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

BAD = os.fsdecode(b"/bad-\xff-name")  # not UTF-8: a surrogate escape on the way in


def cases(d: Path, tmp: Path) -> list[list[str]]:
    binary = tmp / "binary.fs_defs"
    binary.write_bytes(os.urandom(2000))
    c = ["--dir", str(d)]
    return [
        ["fs", "put", str(tmp / "no-such-file"), "/x", *c],
        ["fs", "get", "/no/such", str(tmp / "out"), *c],
        ["fs", "ls", BAD, *c],
        ["fs", "stat", "", *c],
        ["fs", "cat", "/" + "x" * 5000, *c],
        ["fs", "rm", "/", *c],
        ["fs", "mv", "/", "/inside", *c],
        ["lfs", "setstripe", "-c", "-7", "/x", *c],
        ["lfs", "setstripe", "-S", "3", "/x", *c],
        ["ctl", "set_param", "no-equals-sign", *c],
        ["ctl", "get_param", "'; rm -rf /", *c],
        ["failover", "scratch-OST9999", *c],
        ["failback", "../../etc/passwd", *c],
        ["events", "--last", "-5", *c],
        ["format", "no-such-target", *c],
        ["node", "run", "no-such-node", *c],
        ["node", "kill", "no-such-node", *c],
        ["status", "--dir", str(tmp / "no-cluster-here")],
        ["config", "write", str(binary), "--store", str(tmp / "s.db")],
        ["config", "write", "/dev/null", "--store", str(tmp / "s.db")],
        ["config", "show", "--store", "etcd://[::1", *c],
        ["up", "--fs-defs", "/etc/passwd", "--dir", str(tmp / "up")],
        ["keygen", "/proc/no/such/dir/key"],
        ["load", "--clients", "-1", *c],
        ["mount", str(tmp / "no-such-dir"), *c],
        ["rig", "exec", "--dir", str(tmp / "no-rig"), "h", "--", "true"],
    ]


def run(args: list[str]) -> tuple[list[str], subprocess.CompletedProcess[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    proc = subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True,
                          text=True, errors="replace", timeout=120, env=env)
    return args, proc


@pytest.mark.timeout(300)
def test_hostile_arguments_get_a_reason_never_a_traceback(cluster, tmp_path: Path) -> None:
    before = sorted(p.name for p in (cluster.dir / "devices").iterdir())
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, cases(cluster.dir, tmp_path)))
    bad = [(a, p.returncode, (p.stderr + p.stdout)[-800:]) for a, p in results
           if p.returncode == 0 or "Traceback" in p.stderr + p.stdout
           or not (p.stderr.strip() or p.stdout.strip())]
    assert not bad, "\n\n".join(f"{a}: exit {rc}\n{out}" for a, rc, out in bad)
    assert sorted(p.name for p in (cluster.dir / "devices").iterdir()) == before
    assert not (tmp_path / "s.db").exists()  # refused input wrote no store


def test_exit_codes_tell_a_mistake_from_a_missing_thing_from_a_failure(cluster,
                                                                      tmp_path: Path) -> None:
    """0 done, 1 failed, 2 a usage or configuration mistake, 3 not found (README)."""
    c = ["--dir", str(cluster.dir)]
    other = tmp_path / "other"
    other.mkdir()
    (other / "cluster.json").write_text((cluster.dir / "cluster.json").read_text())
    from shoal.node.spec import write_key
    write_key(other)
    expect = {
        ("fs", "stat", "/no/such/file", *c): 3,
        ("failover", "scratch-OST9999", *c): 3,
        ("ctl", "set_param", "no-equals-sign", *c): 2,
        ("load", "--clients", "-1", *c): 2,
        ("config", "show", "--store", "mysql://db:3306"): 2,
        ("fs", "ls", "/", "--dir", str(other)): 1,  # a wrong key: it failed
        ("fs", "ls", "/", *c): 0,
    }
    with ThreadPoolExecutor(4) as pool:
        got = {tuple(a): p.returncode for a, p in pool.map(run, [list(a) for a in expect])}
    assert got == expect

