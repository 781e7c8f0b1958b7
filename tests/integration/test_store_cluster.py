"""`shoal up` runs on the store: the layout is what the store holds (SQLite by default, a
local etcd with --store etcd), cluster.json records where it is, `shoal down` stops the
local etcd, and an unreachable store stops `shoal up` before anything starts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shoal.node.spec import ClusterSpec
from shoal.store.etcd_server import STATE_FILE, etcd_binary, free_ports
from tests.helpers import shoal, status_json

EXAMPLE = Path(__file__).resolve().parents[2] / "src" / "shoal" / "cluster" / "scratch.fs_defs"


def owners(cluster_dir: Path) -> dict[str, str | None]:
    st = status_json(cluster_dir)
    assert all(t["state"] == "UP" for t in st["targets"]), st["targets"]
    return {t["name"]: t["owner"] for t in st["targets"]}


def etcd_pids(cluster_dir: Path) -> list[int]:
    state = json.loads((cluster_dir / "etcd" / STATE_FILE).read_text())
    return [m["pid"] for m in state["members"]]


def alive(pid: int) -> bool:
    if pid <= 0:  # the state file says 0 for a member that was stopped
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_up_uses_the_store_config_edited_with_db(tmp_path: Path):
    d = tmp_path / "cluster"
    shoal("config", "write", str(EXAMPLE), cluster_dir=d)
    # hand edits: OST0001's primary becomes nid00062; stripes over two OSTs by default
    shoal("db", "failover", "add", "scratch-OST0001", "nid00062", "nid00063", cluster_dir=d)
    shoal("db", "filesystem", "update", "scratch", "--set", "STRIPE_COUNT=2", cluster_dir=d)
    try:
        out = shoal("up", cluster_dir=d).stdout
        assert "the configuration it holds" in out
        spec = ClusterSpec.load(d)
        assert spec.store_url == f"sqlite://{d.resolve() / 'store.db'}"
        assert spec.stripe_count == 2
        assert spec.target("scratch-OST0001").nodes == ["nid00062", "nid00063"]
        assert owners(d)["scratch-OST0001"] == "nid00062"
        assert status_json(d)["store"] == spec.store_url
        # the failover agents keep the owner keys in the store
        fo = json.loads(shoal("foadmin", "--json", cluster_dir=d).stdout)
        t = {x["target"]: x for x in fo["targets"]}
        assert (t["scratch-OST0001"]["owner"], t["scratch-OST0001"]["owner_source"]) == (
            "nid00062", "store")
    finally:
        shoal("down", cluster_dir=d)


@pytest.mark.etcd
def test_up_on_local_etcd_layout_from_etcd_and_down_stops_it(tmp_path: Path):
    if etcd_binary() is None:
        pytest.skip("etcd not on PATH: apt-get install etcd-server (make venv does)")
    d = tmp_path / "cluster"
    pids: list[int] = []
    try:
        out = shoal("up", "--store", "etcd", "--etcd-members", "3", cluster_dir=d).stdout
        url = ClusterSpec.load(d).store_url
        assert url.startswith("etcd://127.0.0.1:") and url.count(",") == 2
        assert f"layout from store {url}" in out
        assert set(owners(d)) == {"MGS", "scratch-MDT0000", "scratch-OST0000",
                                  "scratch-OST0001", "scratch-OST0002", "scratch-OST0003"}
        assert not (d / "store.db").exists()  # the store is etcd, not the SQLite default
        shown = shoal("config", "show", "--store", url).stdout
        assert 'OSTDEV[1]="nid00063:ost1 nid00062:ost1"' in shown
        # commands in --dir find the etcd store through cluster.json
        shoal("db", "failover", "add", "scratch-OST0001", "nid00062", "nid00063", cluster_dir=d)
        pids = etcd_pids(d)
        assert len(pids) == 3 and all(alive(p) for p in pids)

        stopped = shoal("down", cluster_dir=d).stdout
        assert "etcd member etcd0" in stopped
        assert not any(alive(p) for p in pids)
        res = shoal("config", "show", "--store", url + "?timeout=0.5", check=False)
        assert res.returncode == 1 and "unreachable" in res.stderr

        # up again on the same directory: the same etcd members and data come back and
        # the layout is the edited one from etcd
        shoal("up", cluster_dir=d)
        assert ClusterSpec.load(d).store_url == url
        assert owners(d)["scratch-OST0001"] == "nid00062"
        pids = etcd_pids(d)
        assert len(pids) == 3 and all(alive(p) for p in pids)
    finally:
        shoal("down", cluster_dir=d)
    assert not any(alive(p) for p in pids)


def test_up_refuses_an_unreachable_store(tmp_path: Path):
    (port,) = free_ports(1)
    d = tmp_path / "cluster"
    res = shoal("up", "--store", f"etcd://127.0.0.1:{port}?timeout=0.5", cluster_dir=d,
                check=False)
    assert res.returncode == 1
    assert f"etcd://127.0.0.1:{port}" in res.stderr and "unreachable" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (d / "cluster.json").exists() and not (d / "run").exists()

    res = shoal("up", "--store", "sqlite", "--etcd-members", "3", cluster_dir=d, check=False)
    assert res.returncode == 2 and "--etcd-members goes with --store etcd" in res.stderr
