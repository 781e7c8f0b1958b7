"""Fencing: every driver against real things.

- local: real process groups (`sh` with `sleep` children in a new session), running and
  SIGSTOPped, killed and checked gone through /proc;
- fence-agent: tests/fence_agents/fence_shoal_test, an external program speaking the
  ClusterLabs stdin protocol with its power state in a file, and Debian's fence_dummy when
  the fence-agents package is installed;
- manual: a real SQLite store, confirmed by the real `shoal fence confirm` command;
- configuration: FENCE_METHOD / FENCE[node] / FENCE_TIMEOUT, and the errors for bad ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.errors import ConfigError, InvalidArgument
from shoal.fence import (
    AgentFenceDriver,
    FenceFailed,
    LocalFenceDriver,
    ManualFenceDriver,
    driver_for_node,
    fence_confirm_key,
    fence_method,
    fence_request_key,
    fence_timeout,
    make_driver,
    parse_method,
    validate_settings,
)
from shoal.fence.agent import parse_status
from shoal.fence.procs import group_members, live_group_members, read_stat, wait_group_gone
from shoal.node.spec import ClusterSpec
from shoal.store import open_store
from tests.helpers import shoal

TEST_AGENT = Path(__file__).resolve().parents[1] / "fence_agents" / "fence_shoal_test"
FENCE_DUMMY = Path("/usr/sbin/fence_dummy")


# -- local: real process groups --------------------------------------------------------------
class Group:
    """A node stand-in: `sh` leading its own session with two `sleep` children."""

    def __init__(self, script: str = "sleep 600 & sleep 600 & wait", members: int = 3) -> None:
        self.proc = subprocess.Popen(["sh", "-c", script], start_new_session=True)
        self.pgid = self.proc.pid
        deadline = time.monotonic() + 5
        while len(live_group_members(self.pgid)) < members:
            assert time.monotonic() < deadline, "group did not start"
            time.sleep(0.01)
        self.pids = [st.pid for st in live_group_members(self.pgid)]

    def cleanup(self) -> None:
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=5)


@pytest.fixture
def groups() -> Iterator[list[Group]]:
    made: list[Group] = []
    yield made
    for g in made:
        g.cleanup()


def local_dir(tmp_path: Path) -> Path:
    d = tmp_path / "cluster"
    (d / "run").mkdir(parents=True)
    return d


def write_pid(cluster_dir: Path, node: str, pid: int) -> Path:
    path = cluster_dir / "run" / f"{node}.pid"
    path.write_text(f"{pid}\n")
    return path


def alive(pid: int) -> bool:
    st = read_stat(pid)
    return st is not None and not st.gone


async def test_local_kills_whole_group_and_verifies(tmp_path: Path, groups: list[Group]):
    d = local_dir(tmp_path)
    g = Group()
    groups.append(g)
    assert len(g.pids) == 3
    write_pid(d, "nid00062", g.pgid)
    driver = LocalFenceDriver(d)
    assert await driver.status("nid00062") == "on"

    result = await driver.fence("nid00062")

    assert result.ok and result.node == "nid00062" and result.method == "local"
    assert f"process group {g.pgid}" in result.detail
    assert not [p for p in g.pids if alive(p)], "a member survived the fence"
    assert result.seconds < 0.5, f"fencing took {result.seconds:.3f}s (budget 0.2s)"
    assert await driver.status("nid00062") == "off"
    # fencing again is a success: the node is off
    again = await driver.fence("nid00062")
    assert again.ok and "already off" in again.detail


async def test_local_kills_a_stopped_group(tmp_path: Path, groups: list[Group]):
    d = local_dir(tmp_path)
    g = Group()
    groups.append(g)
    write_pid(d, "nid00063", g.pgid)
    os.killpg(g.pgid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while not all(st.stopped for st in live_group_members(g.pgid)):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    driver = LocalFenceDriver(d)
    assert await driver.status("nid00063") == "on"  # paused is not off: it can wake up

    result = await driver.fence("nid00063")

    assert result.ok
    assert not [p for p in g.pids if alive(p)]
    assert result.seconds < 0.5


async def test_local_kills_children_whose_leader_is_gone(tmp_path: Path, groups: list[Group]):
    d = local_dir(tmp_path)
    # the leader exits at once, its sleep child stays in the group
    proc = subprocess.Popen(["sh", "-c", "sleep 600 & echo $!"], start_new_session=True,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    proc.wait(timeout=5)
    try:
        assert alive(child) and read_stat(child).pgrp == proc.pid  # type: ignore[union-attr]
        write_pid(d, "nid00060", proc.pid)
        driver = LocalFenceDriver(d)
        assert await driver.status("nid00060") == "on"
        assert (await driver.fence("nid00060")).ok
        assert not alive(child)
    finally:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


async def test_local_already_off_cases(tmp_path: Path):
    d = local_dir(tmp_path)
    driver = LocalFenceDriver(d)
    # never started
    r = await driver.fence("nid00060")
    assert r.ok and "no pid file" in r.detail
    # started and exited (reaped)
    proc = subprocess.Popen(["true"], start_new_session=True)
    proc.wait()
    write_pid(d, "nid00061", proc.pid)
    r = await driver.fence("nid00061")
    assert r.ok and "no live process" in r.detail
    assert await driver.status("nid00061") == "off"


async def test_local_leaves_a_reused_pid_alone(tmp_path: Path, groups: list[Group]):
    """A pid file older than the process now holding that pid: the node died long ago and
    its pid went to someone else, who must not be killed."""
    d = local_dir(tmp_path)
    g = Group("sleep 600", members=1)
    groups.append(g)
    path = write_pid(d, "nid00062", g.pgid)
    old = time.time() - 100
    os.utime(path, (old, old))
    driver = LocalFenceDriver(d)
    r = await driver.fence("nid00062")
    assert r.ok and "started after" in r.detail
    assert g.proc.poll() is None and alive(g.pgid), "an unrelated process was killed"


async def test_local_unverifiable_is_a_failure(tmp_path: Path):
    d = local_dir(tmp_path)
    (d / "run" / "nid00062.pid").write_text("")  # a start interrupted while writing it
    driver = LocalFenceDriver(d)
    with pytest.raises(FenceFailed) as info:
        await driver.fence("nid00062")
    assert info.value.result is not None and not info.value.result.ok
    assert "not a pid" in str(info.value) and info.value.errno_name == "EIO"
    assert await driver.status("nid00062") == "unknown"
    # not a local cluster's directory: a missing pid file proves nothing
    nowhere = LocalFenceDriver(tmp_path / "elsewhere")
    with pytest.raises(FenceFailed, match="not a local cluster"):
        await nowhere.fence("nid00062")


async def test_wait_group_gone_times_out_on_a_live_group(groups: list[Group]):
    g = Group()
    groups.append(g)
    t0 = time.monotonic()
    survivors = await wait_group_gone(g.pgid, 0.1)
    assert time.monotonic() - t0 >= 0.1
    assert sorted(s.pid for s in survivors) == sorted(g.pids)
    os.killpg(g.pgid, signal.SIGKILL)
    assert await wait_group_gone(g.pgid, 2.0) == []
    # the leader is our child and not yet reaped: a zombie, still listed, counted gone
    assert g.pgid in [st.pid for st in group_members(g.pgid) if st.gone]


# -- fence agents ----------------------------------------------------------------------------
def agent(tmp_path: Path, mode: str = "normal", *, timeout: float = 5.0,
          state: str | None = "on", **extra: str) -> tuple[AgentFenceDriver, Path]:
    state_file = tmp_path / "power"
    if state is not None:
        state_file.write_text(state)
    opts = {"state_file": str(state_file), "mode": mode, **extra}
    return AgentFenceDriver(str(TEST_AGENT), opts, node="nid00062", timeout=timeout), state_file


def calls(state_file: Path) -> list[str]:
    return Path(f"{state_file}.calls").read_text().splitlines()


async def test_agent_fences_and_verifies(tmp_path: Path):
    driver, state = agent(tmp_path, ip="10.0.0.62", username="admin", password="s3cret",
                          plug="{node}")
    assert await driver.status("nid00062") == "on"

    result = await driver.fence("nid00062")

    assert result.ok and result.method == "fence-agent:fence_shoal_test"
    assert state.read_text() == "off"
    log = calls(state)
    assert [line.split()[0] for line in log] == ["action=status", "action=off", "action=status"]
    assert "nodename=nid00062" in log[1] and "ip=10.0.0.62" in log[1]
    assert "password=s3cret" in log[1] and "plug=nid00062" in log[1]
    assert "s3cret" not in result.detail and "s3cret" not in repr(driver)
    assert await driver.status("nid00062") == "off"


async def test_agent_hang_is_a_timeout_failure_and_the_agent_is_killed(tmp_path: Path):
    driver, state = agent(tmp_path, "hang", timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(FenceFailed, match="timed out") as info:
        await driver.fence("nid00062")
    assert 0.5 <= time.monotonic() - t0 < 3.0
    assert info.value.result is not None and not info.value.result.ok
    sleeper = int(Path(f"{state}.hang").read_text())
    deadline = time.monotonic() + 2
    while alive(sleeper):  # the agent's child went with its process group
        assert time.monotonic() < deadline, "the hung agent's child was left running"
        await asyncio.sleep(0.01)
    assert state.read_text() == "on"


async def test_agent_status_hang_after_off_is_a_failure(tmp_path: Path):
    driver, state = agent(tmp_path, "hang_status", timeout=0.5)
    with pytest.raises(FenceFailed, match="says unknown"):
        await driver.fence("nid00062")
    assert state.read_text() == "off"  # it did power off; we just could not verify it


async def test_agent_claiming_success_while_on_is_a_failure(tmp_path: Path):
    driver, state = agent(tmp_path, "claim_on")
    with pytest.raises(FenceFailed, match="status check says on"):
        await driver.fence("nid00062")
    assert state.read_text() == "on"


async def test_agent_failing_off_is_a_failure_with_its_message(tmp_path: Path):
    driver, _ = agent(tmp_path, "fail_off")
    with pytest.raises(FenceFailed, match="exit 1: Failed: Unable to connect/login"):
        await driver.fence("nid00062")


async def test_agent_status_text_without_exit_code(tmp_path: Path):
    driver, state = agent(tmp_path, "text_status")
    assert (await driver.fence("nid00062")).ok
    assert state.read_text() == "off"


async def test_agent_refuses_another_node(tmp_path: Path):
    driver, state = agent(tmp_path)
    with pytest.raises(InvalidArgument, match="configured to fence nid00062"):
        await driver.fence("nid00063")
    assert state.read_text() == "on"


async def test_agent_missing_binary(tmp_path: Path):
    with pytest.raises(ConfigError, match="fence_no_such_agent.*not installed"):
        AgentFenceDriver("fence_no_such_agent")
    with pytest.raises(ConfigError, match=r"FENCE\[nid00062\].*fence_no_such_agent"):
        make_driver("fence-agent:fence_no_such_agent ip=1.2.3.4", cluster_dir=tmp_path,
                    store=None, settings={"FENCE[nid00062]": "x"}, node="nid00062")
    with pytest.raises(ConfigError, match="no such executable"):
        AgentFenceDriver(str(tmp_path / "fence_gone"))
    # removed after it was configured: the fence fails, clearly
    copy = tmp_path / "fence_copy"
    copy.write_bytes(TEST_AGENT.read_bytes())
    copy.chmod(0o755)
    driver = AgentFenceDriver(str(copy), {"state_file": str(tmp_path / "p")})
    copy.unlink()
    with pytest.raises(FenceFailed, match="cannot run"):
        await driver.fence("nid00062")
    assert await driver.status("nid00062") == "unknown"


def test_parse_status_table():
    assert parse_status(2, "Status: OFF\n") == "off"
    assert parse_status(2, "") == "off"
    assert parse_status(0, "Status: ON\n") == "on"
    assert parse_status(0, "") == "on"
    assert parse_status(0, "Status: OFF\n") == "off"
    assert parse_status(2, "Status: ON\n") == "unknown"  # they disagree
    assert parse_status(0, "Status: ON\nStatus: OFF\n") == "unknown"
    assert parse_status(1, "Status: OFF\n") == "unknown"  # the call failed
    assert parse_status(None, "") == "unknown"


@pytest.mark.skipif(not FENCE_DUMMY.exists(), reason="Debian's fence-agents is not installed")
async def test_debian_fence_dummy(tmp_path: Path):
    status_file = tmp_path / "dummy.status"
    status_file.write_text("on")  # fence_dummy compares the whole file: no newline
    driver = AgentFenceDriver("fence_dummy", {"status_file": str(status_file)},
                              node="nid00062", timeout=10)
    assert driver.path == FENCE_DUMMY
    assert await driver.status("nid00062") == "on"
    result = await driver.fence("nid00062")
    assert result.ok and result.method == "fence-agent:fence_dummy"
    assert status_file.read_text() == "off"
    assert await driver.status("nid00062") == "off"
    # its "fail" type never sees the power go off: the agent gives up and says so
    failing = AgentFenceDriver("fence_dummy", {"type": "fail", "power_timeout": "1"},
                               node="nid00062", timeout=10)
    with pytest.raises(FenceFailed, match="exit 1: .*Timed out waiting to power OFF"):
        await failing.fence("nid00062")


# -- manual ----------------------------------------------------------------------------------
async def wait_for_key(store, key: str, timeout: float = 10.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while await store.get(key) is None:
        assert time.monotonic() < deadline, f"{key} never appeared"
        await asyncio.sleep(0.02)


async def run_shoal(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shoal", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_manual_fence_confirmed_by_the_cli(tmp_path: Path):
    url = f"sqlite://{tmp_path / 'store.db'}"
    alerts: list[str] = []
    async with open_store(url) as store:
        # an old confirmation must not count for this fence
        await store.put(fence_confirm_key("nid00061"), b'{"by": "yesterday"}')
        driver = ManualFenceDriver(store, timeout=60, requester="nid00060",
                                   on_alert=alerts.append)
        task = asyncio.create_task(driver.fence("nid00061"))
        await wait_for_key(store, fence_request_key("nid00061"))
        await asyncio.sleep(0.2)
        assert not task.done(), "a stale confirmation was taken for this fence"
        assert alerts and "shoal fence confirm nid00061" in alerts[0]

        rc, out = await run_shoal("fence", "confirm", "nid00061", "--by", "alice",
                                  "--store", url, "--dir", str(tmp_path))
        assert rc == 0, out
        assert "requested by nid00060" in out

        result = await asyncio.wait_for(task, 10)
        assert result.ok and result.method == "manual"
        assert "by alice@" in result.detail
        # consumed: the next fence needs its own confirmation; the alert is taken down
        assert await store.get(fence_confirm_key("nid00061")) is None
        assert await store.get(fence_request_key("nid00061")) is None


async def test_manual_fence_times_out(tmp_path: Path):
    async with open_store(f"sqlite://{tmp_path / 'store.db'}") as store:
        driver = ManualFenceDriver(store, timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(FenceFailed, match="no `shoal fence confirm nid00061` within"):
            await driver.fence("nid00061")
        assert time.monotonic() - t0 >= 0.5
        assert await store.get(fence_request_key("nid00061")) is None
        assert await driver.status("nid00061") == "unknown"


async def test_confirm_without_a_waiting_fence_is_refused(tmp_path: Path):
    url = f"sqlite://{tmp_path / 'store.db'}"
    async with open_store(url) as store:
        await store.put("/shoal/x", b"1")
        rc, out = await run_shoal("fence", "confirm", "nid00061", "--store", url)
        assert rc == 1 and "no manual fence of nid00061 is waiting" in out
        assert await store.get(fence_confirm_key("nid00061")) is None
        rc, out = await run_shoal("fence", "confirm", "nid00061", "--store", url, "--force")
        assert rc == 0, out
        kv = await store.get(fence_confirm_key("nid00061"))
        assert kv is not None and set(json.loads(kv.value)) == {"by", "host", "at"}


# -- configuration ---------------------------------------------------------------------------
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
    assert rc == 1 and "no node 'nid00099'" in out


def test_cli_fence_failure_exits_nonzero(tmp_path: Path):
    d = local_dir(tmp_path)
    (tmp_path / "p").write_text("on")
    ClusterSpec(fs="t", port=1, nids={"nid00062": "127.0.0.62"}, targets=[],
                settings={"FENCE_METHOD": f"fence-agent:{TEST_AGENT} state_file={tmp_path}/p "
                                          "mode=claim_on"}).save(d)
    proc = shoal("fence", "nid00062", "--dir", str(d), check=False)
    assert proc.returncode == 1
    assert "EIO" in proc.stderr and "status check says on" in proc.stderr
