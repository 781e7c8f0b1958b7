"""write_conf / read_conf against real stores: diff, idempotence, validation, races."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from config_racing import BarrierStore, racers

from shoal.config.fs_defs import parse_fs_defs
from shoal.config.model import FileSystemDef
from shoal.config.tables import generate, read_tables
from shoal.config.write_conf import (
    GENERATION_KEY,
    config_generation,
    fs_generation_key,
    fs_key,
    read_conf,
    target_config_key,
    write_conf,
)
from shoal.errors import CompareFailed, ConfigError, NotFound
from shoal.store.base import Store


@pytest.fixture
def scratch(example_path: Path) -> FileSystemDef:
    fs, _ = parse_fs_defs(example_path)
    return fs


def home_of(fs: FileSystemDef, setting: str = "1M") -> FileSystemDef:
    """A second file system on the same nodes, sharing the MGS, with its own devices."""
    targets = []
    for t in fs.targets:
        if t.kind == "MGT":
            targets.append(dataclasses.replace(t, fs="home"))
        else:
            targets.append(
                dataclasses.replace(
                    t,
                    name=t.name.replace("scratch-", "home-"),
                    fs="home",
                    devices=tuple((n, f"home/{d}") for n, d in t.devices),
                )
            )
    return dataclasses.replace(
        fs, name="home", targets=tuple(targets), settings={"STRIPE_SIZE": setting}
    )


async def config_keys(store: Store) -> dict[str, bytes]:
    kvs, _ = await store.range("/shoal/config/")
    return {kv.key: kv.value for kv in kvs}


async def test_write_then_read_back(store: Store, scratch: FileSystemDef) -> None:
    diff = await write_conf(store, [scratch])
    assert diff.revision is not None
    assert sorted(diff.added) == sorted(
        [fs_key("scratch")] + [target_config_key("scratch", t.name) for t in scratch.targets]
    )
    assert not diff.changed and not diff.removed
    rendered = diff.render()
    assert "+ /shoal/config/scratch/targets/scratch-OST0003 " in rendered
    record = json.loads(diff.added[target_config_key("scratch", "scratch-OST0001")])
    assert record == {
        "name": "scratch-OST0001",
        "kind": "OST",
        "index": 1,
        "devices": [["nid00063", "ost1"], ["nid00062", "ost1"]],
    }
    (back,) = await read_conf(store)
    assert back == scratch
    assert back.nodes == scratch.nodes  # NID_MAP order survives
    assert back.source == "store:/shoal/config/scratch/"
    assert await read_conf(store, "scratch") == [scratch]
    assert await config_generation(store) == 1
    keys = await config_keys(store)
    assert keys[fs_generation_key("scratch")] == b"1"


async def test_second_identical_write_changes_nothing(store: Store, scratch: FileSystemDef) -> None:
    await write_conf(store, [scratch])
    before_rev = await store.revision()
    before = await config_keys(store)
    diff = await write_conf(store, [scratch])
    assert diff.empty and not diff and diff.revision is None
    assert diff.render() == "no changes"
    assert await store.revision() == before_rev
    assert await config_keys(store) == before


async def test_a_change_shows_exactly_what_changed(store: Store, scratch: FileSystemDef) -> None:
    await write_conf(store, [scratch])
    ost1 = scratch.target("scratch-OST0001")
    flipped = dataclasses.replace(ost1, devices=tuple(reversed(ost1.devices)))
    new = scratch.with_targets(
        [*(t for t in scratch.targets if t.name not in (ost1.name, "scratch-OST0003")), flipped]
    )
    diff = await write_conf(store, [new])
    key = target_config_key("scratch", "scratch-OST0001")
    assert list(diff.changed) == [key]
    assert list(diff.removed) == [target_config_key("scratch", "scratch-OST0003")]
    assert not diff.added
    assert diff.render().splitlines() == [
        f"~ {key}",
        '    devices: [["nid00063", "ost1"], ["nid00062", "ost1"]] -> '
        '[["nid00062", "ost1"], ["nid00063", "ost1"]]',
        f"- {target_config_key('scratch', 'scratch-OST0003')} "
        + diff.removed[target_config_key("scratch", "scratch-OST0003")].decode(),
    ]
    (back,) = await read_conf(store)
    assert back == new
    assert back.target("scratch-OST0001").primary == "nid00062"
    assert await config_generation(store) == 2
    assert (await config_keys(store))[fs_generation_key("scratch")] == b"2"


async def test_dry_run_writes_nothing(store: Store, scratch: FileSystemDef) -> None:
    rev = await store.revision()
    diff = await write_conf(store, [scratch], dry_run=True)
    assert len(diff.added) == 1 + len(scratch.targets) and diff.revision is None
    assert await store.revision() == rev
    assert await config_keys(store) == {}


async def test_several_file_systems_and_prune(store: Store, scratch: FileSystemDef) -> None:
    home = home_of(scratch)
    await write_conf(store, [scratch, home])
    assert await read_conf(store) == [home, scratch]  # by name
    # writing one leaves the other alone
    diff = await write_conf(store, [scratch])
    assert diff.empty
    assert await read_conf(store, "home") == [home]
    diff = await write_conf(store, [scratch], prune=True)
    assert all(k.startswith("/shoal/config/home/") for k in diff.removed)
    assert len(diff.removed) == 1 + len(home.targets)
    assert await read_conf(store) == [scratch]
    assert fs_generation_key("home") not in await config_keys(store)
    with pytest.raises(NotFound, match="home is not configured"):
        await read_conf(store, "home")


async def test_invalid_configuration_writes_nothing(store: Store, scratch: FileSystemDef) -> None:
    await write_conf(store, [scratch])
    before = await config_keys(store)
    rev = await store.revision()
    clash = dataclasses.replace(
        home_of(scratch), targets=tuple(dataclasses.replace(t, fs="home") for t in scratch.targets)
    )
    with pytest.raises(ConfigError):
        await write_conf(store, [clash])  # targets named scratch-* in file system home
    other = home_of(scratch)
    mdt = other.target("home-MDT0000")
    bad = other.with_targets(
        [
            *(t for t in other.targets if t is not mdt),
            dataclasses.replace(mdt, devices=(("nid00060", "mdt0"),)),
        ]
    )
    with pytest.raises(
        ConfigError, match="device nid00060:mdt0 of home-MDT0000 is also used by scratch-MDT0000"
    ):
        await write_conf(store, [bad])
    lonely = dataclasses.replace(other, nids={"nid00060": "127.0.0.60"})
    with pytest.raises(ConfigError, match="unknown node nid00061"):
        await write_conf(store, [lonely])
    assert await store.revision() == rev
    assert await config_keys(store) == before


async def test_corrupt_tables_never_reach_the_store(
    store: Store, scratch: FileSystemDef, tmp_path: Path
) -> None:
    """`shoal config write` from tables: a bad table raises before the store is touched."""
    generate(scratch, tmp_path)
    services = tmp_path / "services.csv"
    services.write_text(services.read_text().replace("nid00063,ost3", "nid00099,ost3"))
    rev = await store.revision()
    with pytest.raises(ConfigError, match=r"services\.csv:12: unknown node nid00099"):
        await write_conf(store, read_tables(tmp_path))
    assert await store.revision() == rev
    assert await config_keys(store) == {}


async def test_read_conf_refuses_corrupt_or_incomplete_records(
    store: Store, scratch: FileSystemDef
) -> None:
    await write_conf(store, [scratch])
    key = target_config_key("scratch", "scratch-OST0002")
    await store.put(key, b"{not json")
    with pytest.raises(ConfigError) as info:
        await read_conf(store)
    assert str(info.value).startswith(f"{key}:0: unreadable target record")
    await store.delete(key)
    assert len((await read_conf(store))[0].osts) == 3  # a missing OST is still a valid fs
    for t in scratch.osts:
        await store.delete(target_config_key("scratch", t.name))
    with pytest.raises(ConfigError, match="missing OSTDEV: file system scratch has no OST"):
        await read_conf(store)
    (partial,) = await read_conf(store, strict=False)
    assert partial.osts == ()


# -- races --------------------------------------------------------------------------------


async def test_two_racing_writers_one_wins_and_nothing_partial(
    store_factory: Callable[[], Store], scratch: FileSystemDef
) -> None:
    a, b = racers(store_factory, 2)
    mine = [scratch]
    theirs = [scratch, home_of(scratch)]
    results = await asyncio.gather(
        write_conf(a, mine), write_conf(b, theirs), return_exceptions=True
    )
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1, results
    assert isinstance(failed[0], CompareFailed)
    assert "changed concurrently" in str(failed[0]) and "re-run" in str(failed[0])
    winner = mine if results[0] is not failed[0] else theirs
    reader = store_factory()
    assert await read_conf(reader) == sorted(winner, key=lambda fs: fs.name)
    assert await config_generation(reader) == 1
    # the loser re-runs: it now sees the winner's state and its own change applies
    loser = theirs if winner is mine else mine
    retry = await write_conf(reader, loser, prune=True)
    assert not retry.empty
    assert await read_conf(reader) == sorted(loser, key=lambda fs: fs.name)


async def test_racing_writers_on_an_existing_configuration(
    store_factory: Callable[[], Store], scratch: FileSystemDef
) -> None:
    setup = store_factory()
    await write_conf(setup, [scratch, home_of(scratch)])
    n = 4
    variants = [home_of(scratch, setting=f"{i + 2}M") for i in range(n)]  # all new
    stores = racers(store_factory, n)
    results = await asyncio.gather(
        *(write_conf(s, [v]) for s, v in zip(stores, variants, strict=True)),
        return_exceptions=True,
    )
    winners = [i for i, r in enumerate(results) if not isinstance(r, BaseException)]
    assert len(winners) == 1, results
    assert all(isinstance(r, CompareFailed) for i, r in enumerate(results) if i not in winners)
    assert await read_conf(setup, "home") == [variants[winners[0]]]
    assert await config_generation(setup) == 2


async def test_unsynchronised_writers_never_lose_a_committed_write(
    store_factory: Callable[[], Store], scratch: FileSystemDef
) -> None:
    """Many rounds without a barrier: whoever committed last is what the store holds."""
    stores = [store_factory() for _ in range(3)]
    await write_conf(stores[0], [scratch, home_of(scratch)])
    for round_ in range(5):
        variants = [home_of(scratch, setting=f"{round_ * len(stores) + i + 1}M")
                    for i in range(len(stores))]
        results = await asyncio.gather(
            *(write_conf(s, [v]) for s, v in zip(stores, variants, strict=True)),
            return_exceptions=True,
        )
        done = [
            (r.revision, v)
            for r, v in zip(results, variants, strict=True)
            if not isinstance(r, BaseException)
        ]
        assert done, results
        assert all(isinstance(r, CompareFailed) for r in results if isinstance(r, BaseException)), (
            results
        )
        assert await read_conf(stores[0], "home") == [max(done, key=lambda d: d[0] or 0)[1]]
    kv = await stores[0].get(GENERATION_KEY)
    assert kv is not None and int(kv.value) >= 1 + 5


async def test_a_hand_edit_behind_shoals_back_is_not_overwritten(
    store_factory: Callable[[], Store], scratch: FileSystemDef
) -> None:
    """Someone `etcdctl put`s a key between our read and our write, without bumping any
    marker: the key's own compare catches it."""
    other = store_factory()
    await write_conf(other, [scratch])
    key = target_config_key("scratch", "scratch-OST0001")
    foreign = (
        b'{"name": "scratch-OST0001", "kind": "OST", "index": 1, "devices": [["nid00062", "x"]]}'
    )

    async def meddle() -> None:
        await other.put(key, foreign)

    ost1 = scratch.target("scratch-OST0001")
    new = scratch.with_targets(
        [
            *(t for t in scratch.targets if t is not ost1),
            dataclasses.replace(ost1, devices=ost1.devices[:1]),
        ]
    )
    with pytest.raises(CompareFailed):
        await write_conf(BarrierStore(store_factory(), meddle), [new])
    kv = await other.get(key)
    assert kv is not None and kv.value == foreign


async def test_large_file_systems_fit_in_one_transaction(
    store_factory: Callable[[], Store], scratch: FileSystemDef
) -> None:
    """A change to one target of a 200-OST file system compares a handful of keys, not all
    of them (etcd refuses more than 128 operations in a transaction by default)."""
    s = store_factory()

    def with_osts(count: int) -> FileSystemDef:
        mgs, mdt = scratch.mgs, scratch.mdts[0]
        assert mgs is not None
        osts = [
            dataclasses.replace(
                scratch.osts[0],
                name=f"scratch-OST{i:04x}",
                index=i,
                devices=(("nid00062", f"ost{i}"), ("nid00063", f"ost{i}")),
            )
            for i in range(count)
        ]
        return scratch.with_targets([mgs, mdt, *osts])

    await write_conf(s, [with_osts(100)])
    await write_conf(s, [with_osts(200)])  # 100 more: under the limit on its own
    big = with_osts(200)
    ost7 = big.target("scratch-OST0007")
    changed = big.with_targets(
        [
            *(t for t in big.targets if t is not ost7),
            dataclasses.replace(ost7, devices=ost7.devices[::-1]),
        ]
    )
    diff = await write_conf(s, [changed])
    assert list(diff.changed) == [target_config_key("scratch", "scratch-OST0007")]
    (back,) = await read_conf(s)
    assert len(back.osts) == 200 and back.target("scratch-OST0007").primary == "nid00063"
