"""Hand edits (`shoal db ...`) and failover admin (`shoal foadmin`) against real stores."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from config_racing import BarrierStore, racers

from shoal.config import db, foadmin
from shoal.config.fs_defs import parse_fs_defs
from shoal.config.model import FileSystemDef
from shoal.config.tables import FailoverRow, ServiceRow
from shoal.config.write_conf import config_generation, read_conf, target_config_key, write_conf
from shoal.errors import CompareFailed, ConfigError, Exists, InvalidArgument, NotFound
from shoal.store.base import Store

NIDS = {"nid00060": "127.0.0.60", "nid00061": "127.0.0.61", "nid00062": "127.0.0.62"}


@pytest.fixture
def scratch(example_path: Path) -> FileSystemDef:
    fs, _ = parse_fs_defs(example_path)
    return fs


async def value(store: Store, key: str) -> bytes | None:
    kv = await store.get(key)
    return kv.value if kv is not None else None


async def build_by_hand(store: Store) -> None:
    await db.add_filesystem(store, "work", nids=NIDS, auto_failover=True, settings={"X": "1"})
    await db.add_service(store, "work", "MGS", "nid00060", "mgt")
    await db.add_service(store, "work", "MGS", "nid00061", "mgt")
    await db.add_service(store, "work", "work-MDT0000", "nid00060", "mdt0")
    await db.add_service(store, "work", "work-OST0000", "nid00062", "/data/ost0")
    await db.set_failover(store, "work", "work-OST0000", ["nid00062", "nid00061"])


async def test_a_file_system_built_by_hand_equals_its_fs_defs(store: Store) -> None:
    await build_by_hand(store)
    (fs,) = await read_conf(store)  # strict: complete and valid
    assert fs.name == "work" and fs.auto_failover is True and fs.settings == {"X": "1"}
    assert [t.name for t in fs.targets] == ["MGS", "work-MDT0000", "work-OST0000"]
    assert fs.target("MGS").nodes == ("nid00060", "nid00061")
    # the new backup of OST0000 took the primary's (shared) device path
    assert fs.target("work-OST0000").devices == (
        ("nid00062", "/data/ost0"),
        ("nid00061", "/data/ost0"),
    )
    assert await db.list_services(store) == [
        ServiceRow("work", "MGS", "MGT", 0, "nid00060", "mgt"),
        ServiceRow("work", "MGS", "MGT", 0, "nid00061", "mgt"),
        ServiceRow("work", "work-MDT0000", "MDT", 0, "nid00060", "mdt0"),
        ServiceRow("work", "work-OST0000", "OST", 0, "nid00062", "/data/ost0"),
        ServiceRow("work", "work-OST0000", "OST", 0, "nid00061", "/data/ost0"),
    ]
    assert await db.list_failover(store, "work") == [
        FailoverRow("work", "MGS", "nid00060", ("nid00061",)),
        FailoverRow("work", "work-MDT0000", "nid00060", ()),
        FailoverRow("work", "work-OST0000", "nid00062", ("nid00061",)),
    ]
    assert [f.name for f in await db.list_filesystems(store)] == ["work"]
    assert await config_generation(store) == 6


async def test_half_built_file_systems_are_stored_but_not_served(store: Store) -> None:
    await db.add_filesystem(store, "work", nids=NIDS)
    await db.add_service(store, "work", "work-OST0001", "nid00062", "ost1")
    with pytest.raises(ConfigError, match="missing MGSDEV"):
        await read_conf(store)  # what `shoal up` calls
    (partial,) = await read_conf(store, strict=False)
    assert [t.name for t in partial.targets] == ["work-OST0001"]


async def test_edits_are_validated_and_refused_whole(store: Store) -> None:
    await build_by_hand(store)
    rev = await store.revision()
    with pytest.raises(ConfigError, match="unknown node nid00099"):
        await db.add_service(store, "work", "work-OST0001", "nid00099", "ost1")
    with pytest.raises(
        ConfigError, match="device nid00060:mdt0 is used by both work-MDT0000 and work-OST0001"
    ):
        await db.add_service(store, "work", "work-OST0001", "nid00060", "mdt0")
    with pytest.raises(InvalidArgument, match="does not belong to file system work"):
        await db.add_service(store, "work", "scratch-OST0001", "nid00060", "x")
    with pytest.raises(InvalidArgument, match="not a target name"):
        await db.add_service(store, "work", "work-OST1", "nid00060", "x")
    with pytest.raises(Exists):
        await db.add_service(store, "work", "MGS", "nid00060", "mgt2")
    with pytest.raises(Exists):
        await db.add_filesystem(store, "work", nids=NIDS)
    with pytest.raises(ConfigError, match="bad file system name"):
        await db.add_filesystem(store, "far_too_long", nids=NIDS)
    with pytest.raises(NotFound):
        await db.remove_service(store, "work", "work-OST0009")
    with pytest.raises(NotFound):
        await db.remove_service(store, "work", "MGS", "nid00062")
    with pytest.raises(NotFound):
        await db.set_failover(store, "nope", "MGS", ["nid00060"])
    with pytest.raises(InvalidArgument):
        await db.set_failover(store, "work", "MGS", ["nid00060", "nid00060"])
    with pytest.raises(ConfigError, match="unknown node nid00061"):
        await db.update_filesystem(store, "work", remove_nodes=["nid00061"])  # still in use
    assert await store.revision() == rev


async def test_remove_edits(store: Store) -> None:
    await build_by_hand(store)
    diff = await db.remove_failover(store, "work", "MGS")
    assert list(diff.changed) == [target_config_key("work", "MGS")]
    assert (await read_conf(store))[0].target("MGS").nodes == ("nid00060",)
    assert (await db.remove_failover(store, "work", "MGS")).empty  # nothing left to drop
    await db.remove_service(store, "work", "work-OST0000", "nid00062")
    (fs,) = await read_conf(store)
    assert fs.target("work-OST0000").devices == (("nid00061", "/data/ost0"),)  # backup promoted
    diff = await db.remove_service(store, "work", "work-OST0000", "nid00061")
    assert list(diff.removed) == [target_config_key("work", "work-OST0000")]  # last node: gone
    await db.update_filesystem(store, "work", auto_failover=False, nids={"nid00063": "::1"})
    (fs,) = await read_conf(store, strict=False)
    assert fs.auto_failover is False and fs.nids["nid00063"] == "::1"
    diff = await db.remove_filesystem(store, "work")
    assert diff.removed and not diff.added
    assert await db.list_filesystems(store) == []
    kvs, _ = await store.range("/shoal/config/work/")
    assert kvs == []
    with pytest.raises(NotFound):
        await db.remove_filesystem(store, "work")


async def test_racing_hand_edits_one_wins(store_factory: Callable[[], Store]) -> None:
    setup = store_factory()
    await build_by_hand(setup)
    a, b = racers(store_factory, 2)
    results = await asyncio.gather(
        db.add_service(a, "work", "work-OST0001", "nid00062", "ost1"),
        db.set_failover(b, "work", "work-MDT0000", ["nid00060", "nid00061"]),
        return_exceptions=True,
    )
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], CompareFailed), results
    (fs,) = await read_conf(setup)
    if isinstance(results[0], CompareFailed):
        assert [t.name for t in fs.osts] == ["work-OST0000"]
        assert fs.target("work-MDT0000").nodes == ("nid00060", "nid00061")
    else:
        assert [t.name for t in fs.osts] == ["work-OST0000", "work-OST0001"]
        assert fs.target("work-MDT0000").nodes == ("nid00060",)


async def test_a_hand_edit_racing_write_conf(
    store_factory: Callable[[], Store], scratch: FileSystemDef
) -> None:
    setup = store_factory()
    await write_conf(setup, [scratch])
    writer = store_factory()

    async def admin_writes_meanwhile() -> None:
        await db.set_failover(writer, "scratch", "scratch-OST0000", ["nid00063", "nid00062"])

    slow = BarrierStore(store_factory(), admin_writes_meanwhile)
    with pytest.raises(CompareFailed):
        await db.remove_failover(slow, "scratch", "scratch-OST0001")
    (fs,) = await read_conf(setup)
    assert fs.target("scratch-OST0000").primary == "nid00063"
    assert fs.target("scratch-OST0001").nodes == ("nid00063", "nid00062")


# -- foadmin ------------------------------------------------------------------------------


async def test_failover_admin_settings(store: Store, scratch: FileSystemDef) -> None:
    await write_conf(store, [scratch])
    s = await foadmin.read_failover_settings(store)
    assert s.auto_failover(scratch, "scratch-OST0000", to_node="nid00063")
    assert s.admin_state("scratch-OST0000") == "enabled"

    await foadmin.set_auto_failover(store, "scratch-OST0000", False)
    await foadmin.set_node_auto_failover(store, "nid00061", False)
    await foadmin.set_admin_state(store, "scratch-OST0002", "stopped")
    assert await value(store, "/shoal/settings/auto_failover/scratch-OST0000") == b"disabled"
    assert await value(store, "/shoal/settings/auto_failover_node/nid00061") == b"disabled"
    assert await value(store, "/shoal/targets/scratch-OST0002/admin_state") == b"stopped"
    assert await foadmin.get_admin_state(store, "scratch-OST0002") == "stopped"
    assert await foadmin.get_admin_state(store, "scratch-OST0003") == "enabled"

    s = await foadmin.read_failover_settings(store)
    assert s.targets == {"scratch-OST0000": False} and s.nodes == {"nid00061": False}
    assert s.admin_states == {"scratch-OST0002": "stopped"}
    assert not s.auto_failover(scratch, "scratch-OST0000")
    assert s.auto_failover(scratch, "scratch-OST0001")
    assert not s.auto_failover(scratch, "scratch-OST0002")  # stopped
    assert not s.auto_failover(scratch, "MGS", to_node="nid00061")  # node switched off
    assert not s.auto_failover(scratch, "MGS", from_node="nid00061")
    assert s.auto_failover(scratch, "MGS", from_node="nid00060")

    # per-target enable beats the file system's AUTO_FAILOVER=no; None reverts to it
    off = scratch.__class__(scratch.name, scratch.nids, scratch.targets, False, {})
    await foadmin.set_auto_failover(store, "scratch-OST0001", True)
    s = await foadmin.read_failover_settings(store)
    assert s.auto_failover(off, "scratch-OST0001") and not s.auto_failover(off, "scratch-OST0003")
    await foadmin.set_auto_failover(store, "scratch-OST0001", None)
    await foadmin.set_node_auto_failover(store, "nid00061", None)
    s = await foadmin.read_failover_settings(store)
    assert "scratch-OST0001" not in s.targets and s.nodes == {}

    with pytest.raises(NotFound):
        await foadmin.set_auto_failover(store, "scratch-OST0099", False)
    with pytest.raises(InvalidArgument):
        await foadmin.set_admin_state(store, "scratch-OST0001", "paused")
    with pytest.raises(NotFound):
        await foadmin.set_admin_state(store, "nope-OST0001", "stopped")
    with pytest.raises(InvalidArgument):
        await foadmin.set_node_auto_failover(store, "bad/node", False)
