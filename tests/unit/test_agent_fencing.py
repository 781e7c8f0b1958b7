"""The agent's fencing in two halves (agent/fencing.py), with the test fence agent
(tests/fence_agents/fence_shoal_test, an external program) and a real SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.agent.fencing import Fencer
from shoal.agent.records import fenced_key
from shoal.fence import AgentFenceDriver, FenceFailed
from shoal.store.sqlite import SQLiteStore
from tests.unit.fence_helpers import TEST_AGENT

NODE = "nid00062"


def fencer(tmp_path: Path, store: SQLiteStore, mode: str = "normal",
           ttl: float = 2.0) -> tuple[Fencer, Path]:
    state = tmp_path / "power"
    state.write_text("on")
    opts = {"state_file": str(state), "mode": mode}
    return Fencer("nid00063", store, ttl,
                  lambda node: AgentFenceDriver(str(TEST_AGENT), opts, node=node)), state


def calls(state: Path) -> list[str]:
    return [line.split()[0] for line in Path(f"{state}.calls").read_text().splitlines()]


async def test_the_order_returns_before_the_check_and_the_check_is_awaited_later(
        tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "s.db") as store:
        f, state = fencer(tmp_path, store)
        off = await f.power_off(NODE, "boot-1")
        assert off.ok and off.detail.startswith("off (") and "status" not in off.detail
        assert state.read_text() == "off"
        assert f.fenced_recently(NODE, "boot-1") and not f.fenced_recently(NODE, "boot-2")
        checked = await f.verified(NODE)
        assert checked is not None and "status off" in checked.detail
        assert calls(state) == ["action=off", "action=status"]
        assert await store.get(fenced_key(NODE)) is not None  # recorded once checked


async def test_takeovers_of_several_targets_share_one_fence(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "s.db") as store:
        f, state = fencer(tmp_path, store)
        first = await f.power_off(NODE, "boot-1")
        assert await f.power_off(NODE, "boot-1") is first
        await f.verified(NODE)
        assert await f.verified(NODE) is not None
        assert calls(state) == ["action=off", "action=status"]


async def test_a_check_that_finds_the_node_on_fails_the_fence_and_forgets_it(
        tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "s.db") as store:
        f, state = fencer(tmp_path, store, mode="claim_on")  # off "succeeds", stays on
        await f.power_off(NODE, "boot-1")
        with pytest.raises(FenceFailed, match="status check says on"):
            await f.verified(NODE)
        assert not f.fenced_recently(NODE, "boot-1")
        assert await store.get(fenced_key(NODE)) is None
        await f.power_off(NODE, "boot-1")  # a new attempt orders it off again
        with pytest.raises(FenceFailed):
            await f.verified(NODE)
        assert calls(state).count("action=off") == 2


async def test_a_failed_order_raises_and_leaves_no_fence(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "s.db") as store:
        f, _state = fencer(tmp_path, store, mode="fail_off")
        with pytest.raises(FenceFailed):
            await f.power_off(NODE, "boot-1")
        assert not f.fenced_recently(NODE, "boot-1")
        assert await f.verified(NODE) is None


async def test_a_fence_older_than_a_ttl_is_done_again(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "s.db") as store:
        f, state = fencer(tmp_path, store, ttl=0.0)
        await f.power_off(NODE, "boot-1")
        await f.verified(NODE)
        await f.power_off(NODE, "boot-1")
        await f.verified(NODE)
        assert calls(state).count("action=off") == 2
