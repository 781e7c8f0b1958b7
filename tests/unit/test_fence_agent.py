"""Fencing with the fence-agent driver: tests/fence_agents/fence_shoal_test, an external
program speaking the ClusterLabs stdin protocol with its power state in a file, and Debian's
fence_dummy when the fence-agents package is installed.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from shoal.errors import ConfigError, InvalidArgument
from shoal.fence import AgentFenceDriver, FenceFailed, make_driver
from shoal.fence.agent import parse_status
from tests.unit.fence_helpers import TEST_AGENT, alive

FENCE_DUMMY = Path("/usr/sbin/fence_dummy")


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
