"""Fencing configuration: FENCE_METHOD / FENCE[node] / FENCE_TIMEOUT, the errors for bad
ones, the driver each node gets; and the `shoal fence` admin command on a local cluster
directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shoal.errors import ConfigError
from shoal.fence import (
    AgentFenceDriver,
    LocalFenceDriver,
    ManualFenceDriver,
    driver_for_node,
    fence_method,
    fence_timeout,
    make_driver,
    parse_method,
    validate_settings,
)
from shoal.node.spec import ClusterSpec
from shoal.store import open_store
from tests.helpers import shoal
from tests.unit.fence_helpers import TEST_AGENT, Group, alive, local_dir, run_shoal, write_pid


def test_method_rule(tmp_path: Path):
    settings = {"FENCE_METHOD": "manual", "FENCE[nid00062]": "local"}
    assert fence_method(settings, "nid00062") == "local"
    assert fence_method(settings, "nid00063") == "manual"
    assert fence_method({}, "nid00062", cluster_dir=local_dir(tmp_path)) == "local"
    with pytest.raises(ConfigError, match=r"no fence method for nid00062.*FENCE\[nid00062\]"):
        fence_method({}, "nid00062", cluster_dir=tmp_path / "real-deployment")


def test_parse_method():
    m = parse_method('fence-agent:fence_ipmilan ip=10.0.0.62 username=admin '
                     'password="a b" lanplus=1')
    assert (m.kind, m.agent) == ("fence-agent", "fence_ipmilan")
    assert m.options == {"ip": "10.0.0.62", "username": "admin", "password": "a b",
                         "lanplus": "1"}
    assert "a b" not in m.describe() and "password=***" in m.describe()
    assert parse_method(" Manual ").kind == "manual"
    bad = {
        "fence_ipmilan ip=1": "did you mean fence-agent:fence_ipmilan",
        "stonith": "unknown fence method 'stonith'",
        "fence-agent:": "needs an agent name",
        "fence-agent:ip=1": "must be followed by the agent's name",
        "fence-agent:fence_x lanplus": "has no value",
        "fence-agent:fence_x action=reboot": "set by Shoal",
        "fence-agent:fence_x ip=1 ip=2": "given twice",
        "fence-agent:fence_x ip='1": "No closing quotation",
        'fence-agent:fence_x ip="1\n2"': "one line",
        "fence-agent:bin/fence_x": "absolute path",
        "": "empty fence method",
    }
    for text, reason in bad.items():
        with pytest.raises(ConfigError, match=reason):
            parse_method(text, where="FENCE[nid00062]")


def test_timeouts():
    assert fence_timeout({}, "n", "local") == 1.0
    assert fence_timeout({}, "n", "manual") == 3600.0
    s = {"FENCE_TIMEOUT": "5", "FENCE_TIMEOUT[m]": "none"}
    assert fence_timeout(s, "n", "fence-agent") == 5.0
    assert fence_timeout(s, "m", "manual") is None
    with pytest.raises(ConfigError, match="only a manual fence may wait for ever"):
        fence_timeout(s, "m", "local")
    for value in ("abc", "0", "-1", "nan", "inf"):
        with pytest.raises(ConfigError, match="FENCE_TIMEOUT"):
            fence_timeout({"FENCE_TIMEOUT": value}, "n", "local")


async def test_make_driver_picks_and_checks(tmp_path: Path):
    d = local_dir(tmp_path)
    settings = {"FENCE[nid00062]": f"fence-agent:{TEST_AGENT} state_file={tmp_path}/p",
                "FENCE_TIMEOUT[nid00062]": "7", "FENCE_TIMEOUT": "0.3"}
    local = driver_for_node("nid00060", cluster_dir=d, store=None, settings=settings)
    assert isinstance(local, LocalFenceDriver) and local.timeout == 0.3
    ag = driver_for_node("nid00062", cluster_dir=d, store=None, settings=settings)
    assert isinstance(ag, AgentFenceDriver) and ag.timeout == 7.0 and ag.node == "nid00062"
    with pytest.raises(ConfigError, match="manual fencing needs the cluster store"):
        make_driver("manual", cluster_dir=d, store=None, settings={}, node="nid00060")
    async with open_store(f"sqlite://{tmp_path / 'store.db'}") as store:
        man = make_driver("manual", cluster_dir=d, store=store,
                          settings={"FENCE_TIMEOUT": "forever"}, node="nid00060")
        assert isinstance(man, ManualFenceDriver) and man.timeout is None
    # local fencing of a node that is not on this machine would take "no pid file" for off
    ClusterSpec(fs="t", port=1, nids={"nid00060": "127.0.0.60", "nid00070": "10.1.0.70"},
                targets=[]).save(d)
    make_driver("local", cluster_dir=d, store=None, settings={}, node="nid00060")
    with pytest.raises(ConfigError, match="nid00070 is at 10.1.0.70, not a loopback"):
        make_driver("local", cluster_dir=d, store=None, settings={}, node="nid00070")


def test_validate_settings():
    nodes = ["nid00060", "nid00061"]
    validate_settings({"FENCE_METHOD": "manual", "FENCE[nid00061]": "local",
                       "FENCE_TIMEOUT[nid00060]": "none", "STRIPE_SIZE": "1"}, nodes)
    with pytest.raises(ConfigError) as info:
        validate_settings({"FENCE[nid00099]": "local", "FENCE_METOD": "local",
                           "FENCE[nid00060]": "fence_ipmilan", "FENCE_TIMEOUT": "none",
                           "FENCE_METHOD[nid00061]": "manual"}, nodes)
    msg = str(info.value)
    assert "FENCE[nid00099]: no node 'nid00099'" in msg
    assert "FENCE_METOD: unknown fence setting" in msg
    assert "did you mean fence-agent:fence_ipmilan" in msg
    assert "FENCE_TIMEOUT=none: only a manual fence" in msg  # nid00061 is local
    assert "a node's method is FENCE[nid00061]" in msg


# -- the admin command on a local cluster directory -----------------------------------------
async def test_cli_fence_status_and_off(tmp_path: Path, groups: list[Group]):
    d = local_dir(tmp_path)
    ClusterSpec(fs="t", port=1, nids={"nid00062": "127.0.0.62", "nid00063": "127.0.0.63"},
                targets=[], settings={"auto_failover": True,
                                      "FENCE[nid00063]": f"fence-agent:{TEST_AGENT} "
                                                         f"state_file={tmp_path}/p63"}).save(d)
    g = Group()
    groups.append(g)
    write_pid(d, "nid00062", g.pgid)

    rc, out = await run_shoal("fence", "status", "nid00062", "--dir", str(d), "--json")
    assert rc == 0, out
    st = json.loads(out)
    assert (st["method"], st["power"], st["request"]) == ("local", "on", None)

    rc, out = await run_shoal("fence", "nid00062", "--dir", str(d))
    assert rc == 0, out
    assert "nid00062 fenced (local)" in out
    assert not [p for p in g.pids if alive(p)]

    rc, out = await run_shoal("fence", "off", "nid00063", "--dir", str(d), "--json")
    assert rc == 0, out
    assert json.loads(out)["method"] == "fence-agent:fence_shoal_test"
    assert (tmp_path / "p63").read_text() == "off"

    rc, out = await run_shoal("fence", "nid00099", "--dir", str(d))
    assert rc == 3 and "no node 'nid00099'" in out


def test_cli_fence_failure_exits_nonzero(tmp_path: Path):
    d = local_dir(tmp_path)
    (tmp_path / "p").write_text("on")
    ClusterSpec(fs="t", port=1, nids={"nid00062": "127.0.0.62"}, targets=[],
                settings={"FENCE_METHOD": f"fence-agent:{TEST_AGENT} state_file={tmp_path}/p "
                                          "mode=claim_on"}).save(d)
    proc = shoal("fence", "nid00062", "--dir", str(d), check=False)
    assert proc.returncode == 1
    assert "EIO" in proc.stderr and "status check says on" in proc.stderr


def test_a_daemon_refuses_local_fencing_of_a_node_on_another_host(tmp_path) -> None:
    # a daemon's state directory has no cluster.json: the node's address decides
    with pytest.raises(ConfigError, match="nid00071 is at 10.1.0.71, not a loopback address "
                                          "nor one of this host's"):
        make_driver("local", cluster_dir=tmp_path, store=None, settings={}, node="nid00071",
                    address="10.1.0.71")
    assert make_driver("local", cluster_dir=tmp_path, store=None, settings={},
                       node="nid00072", address="127.0.9.2") is not None
