"""What the failover agents keep in the store (agent/records.py) and how `shoal status` reads
it back (agent/status.py): JSON round trips, values that are not records, key parsing, and the
state a target is shown in."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from shoal.agent.records import (
    EVENTS_PREFIX,
    STATES,
    Event,
    FenceRecord,
    HandoverRequest,
    LocationRecord,
    NodeRecord,
    OwnerRecord,
    StateRecord,
    alive_key,
    dump,
    fenced_key,
    load,
    location_key,
    owner_key,
    request_key,
    split_node_key,
    split_target_key,
    state_key,
)
from shoal.agent.status import STALE_FAILOVER, read_status, target_state
from shoal.node.spec import ClusterSpec, TargetSpec
from shoal.store import open_store
from shoal.store.base import target_key

RECORDS = [
    NodeRecord("oss0", "127.0.0.62", 4242, "b00t1d", 1_700_000_000.25),
    OwnerRecord("oss0", "127.0.0.62", "b00t1d", 7),
    StateRecord("FAILING_OVER", "oss0", 1_700_000_001.5, epoch=3, reason="oss0 died",
                clean=False, to="oss1", boot_id="b00t1d"),
    StateRecord("UP", "oss1", 12.0),
    LocationRecord("scratch-OST0000", "oss1", "127.0.0.63:7988", 4, 99),
    FenceRecord("oss0", "oss1", "local", 1_700_000_002.0, detail="pid 4242 killed"),
    HandoverRequest("oss1", "admin", 1_700_000_003.0),
    HandoverRequest("", "admin", 1_700_000_003.0, reason="maintenance"),
    Event(1_700_000_004.0, "oss1", "take", "scratch-OST0000", "took it",
          {"seconds": 0.42, "fenced": ["oss0"], "nested": {"a": 1}}),
    Event(1.0, "oss1", "boot"),
]


# -- dump / load ----------------------------------------------------------------------------

@pytest.mark.parametrize("rec", RECORDS, ids=lambda r: type(r).__name__)
def test_dump_load_round_trip(rec: object) -> None:
    raw = dump(rec)
    assert isinstance(raw, bytes)
    assert load(type(rec), raw) == rec
    # plain, sorted JSON: what `shoal store get` shows a person
    data = json.loads(raw)
    assert isinstance(data, dict) and list(data) == sorted(data)
    assert dump(load(type(rec), raw)) == raw


def test_load_fills_defaults_and_ignores_unknown_fields() -> None:
    # an older writer (fewer fields) and a newer one (more fields) are both read
    old = load(StateRecord, b'{"state": "UP", "node": "oss0", "since": 5.0}')
    assert old == StateRecord("UP", "oss0", 5.0)
    assert old is not None and old.clean is False and old.to == "" and old.epoch == 0
    new = load(OwnerRecord, json.dumps({"node": "oss0", "nid": "n", "boot_id": "b",
                                        "lease": 3, "added_in_v2": [1, 2]}).encode())
    assert new == OwnerRecord("oss0", "n", "b", 3)
    ev = load(Event, b'{"time": 1.0, "node": "oss0", "kind": "boot"}')
    assert ev is not None and ev.data == {} and ev.target == ""


@pytest.mark.parametrize("raw", [
    b"",
    b"UP",
    b"not json",
    b"{",
    b'{"state": "UP", "node": "oss0", "si',  # torn
    b"\xff\xfe\x00\x01",
    b"null",
    b"42",
    b'"UP"',
    b'["UP", "oss0", 1.0]',
    b"{}",
    b'{"state": "UP"}',  # required fields missing
    b'{"foo": 1, "bar": 2}',  # some other tool's JSON
    b'{"target": "scratch-OST0000", "node": "oss1"}',  # a LocationRecord cut short
])
def test_load_of_garbage_or_foreign_values_is_none(raw: bytes) -> None:
    assert load(StateRecord, raw) is None


def test_load_of_another_record_kind_is_none() -> None:
    # the fields do not fit: an OwnerRecord where a StateRecord belongs, and back
    assert load(StateRecord, dump(OwnerRecord("oss0", "n", "b", 3))) is None
    assert load(OwnerRecord, dump(StateRecord("UP", "oss0", 1.0))) is None
    assert load(NodeRecord, dump(FenceRecord("oss0", "oss1", "local", 1.0))) is None


@pytest.mark.parametrize("raw", [
    b'{"state": "FAILING_OVER", "node": "oss0", "since": "yesterday"}',
    b'{"state": "DOWN", "node": "oss0", "since": 1.0, "clean": true, "to": ["oss1"]}',
    b'{"state": ["UP"], "node": {"a": 1}, "since": 1.0}',
])
def test_load_of_a_record_with_wrongly_typed_fields_is_none(raw: bytes) -> None:
    assert load(StateRecord, raw) is None


# -- keys ----------------------------------------------------------------------------------

def test_key_builders_and_splitters_agree() -> None:
    t = "scratch-OST0003"
    for key, leaf in [(owner_key(t), "owner"), (state_key(t), "state"),
                      (location_key(t), "location"), (request_key(t), "request"),
                      (target_key(t, "admin_state"), "admin_state")]:
        assert split_target_key(key) == (t, leaf)
        assert split_node_key(key) is None
    assert split_node_key(alive_key("nid00060")) == ("nid00060", "alive")
    assert split_node_key(fenced_key("nid00060")) == ("nid00060", "fenced")
    assert split_target_key(alive_key("nid00060")) is None


@pytest.mark.parametrize("key,expected", [
    ("/shoal/targets/scratch-MDT0000/owner", ("scratch-MDT0000", "owner")),
    ("/shoal/targets/t/a/b", ("t", "a/b")),
    ("/shoal/targets/scratch-MDT0000", None),  # no leaf
    ("/shoal/targets/scratch-MDT0000/", None),
    ("/shoal/targets//owner", None),  # no target
    ("/shoal/targets/", None),
    ("/shoal/targetsX/t/owner", None),
    ("/shoal/nodes/oss0/alive", None),
    ("/other/targets/t/owner", None),
    ("", None),
])
def test_split_target_key(key: str, expected: tuple[str, str] | None) -> None:
    assert split_target_key(key) == expected


@pytest.mark.parametrize("key,expected", [
    ("/shoal/nodes/oss0/alive", ("oss0", "alive")),
    ("/shoal/nodes/oss0/fenced", ("oss0", "fenced")),
    ("/shoal/nodes/oss0", None),
    ("/shoal/nodes//alive", None),
    ("/shoal/nodesX/oss0/alive", None),
    ("/shoal/targets/t/owner", None),
    (EVENTS_PREFIX + "123-oss0-1", None),
])
def test_split_node_key(key: str, expected: tuple[str, str] | None) -> None:
    assert split_node_key(key) == expected


# -- target_state: what `shoal status` shows ----------------------------------------------------

NOW = 1_700_000_000.0
OWNER0 = OwnerRecord("oss0", "127.0.0.62", "b", 1)


def s(state: str, node: str = "oss0", age: float = 1.0) -> StateRecord:
    return StateRecord(state, node, NOW - age)


@pytest.mark.parametrize("owner,state,admin,shown", [
    # an owner key: the state record says how far it got, if it is the owner's
    (OWNER0, s("UP"), "enabled", "UP"),
    (OWNER0, s("RECOVERING"), "enabled", "RECOVERING"),
    (OWNER0, s("UP", node="oss1"), "enabled", "FAILING_OVER"),  # the old owner's record
    (OWNER0, s("RECOVERING", node="oss1"), "enabled", "FAILING_OVER"),
    (OWNER0, s("FAILING_OVER"), "enabled", "FAILING_OVER"),  # taken, not yet started
    (OWNER0, s("DOWN"), "enabled", "FAILING_OVER"),
    (OWNER0, None, "enabled", "FAILING_OVER"),
    # no owner
    (None, s("STOPPED"), "enabled", "STOPPED"),
    (None, s("UP"), "stopped", "STOPPED"),  # stopped by the administrator
    (None, None, "stopped", "STOPPED"),
    (None, s("FAILING_OVER", age=1.0), "enabled", "FAILING_OVER"),
    (None, s("FAILING_OVER", age=STALE_FAILOVER - 0.1), "enabled", "FAILING_OVER"),
    (None, s("FAILING_OVER", age=STALE_FAILOVER), "enabled", "DOWN"),  # stale: stuck
    (None, s("FAILING_OVER", age=STALE_FAILOVER + 60), "enabled", "DOWN"),
    (None, s("UP"), "enabled", "DOWN"),  # the owner's lease is gone: it died
    (None, s("RECOVERING"), "enabled", "DOWN"),
    (None, s("DOWN"), "enabled", "DOWN"),
    (None, None, "enabled", "DOWN"),
])
def test_target_state(owner: OwnerRecord | None, state: StateRecord | None, admin: str,
                      shown: str) -> None:
    assert target_state(owner, state, admin, now=NOW) == shown
    assert shown in STATES


# -- read_status on a real store ---------------------------------------------------------

def spec(tmp_path: Path) -> ClusterSpec:
    nids = {"oss0": "127.0.0.62", "oss1": "127.0.0.63"}
    return ClusterSpec(
        fs="scratch", port=7988, nids=nids, store_url=f"sqlite://{tmp_path / 's.db'}",
        targets=[TargetSpec(f"scratch-OST000{i}", "OST", i, nodes, {n: f"/dev/ost{i}"
                                                                    for n in nodes})
                 for i, nodes in enumerate([["oss0", "oss1"], ["oss1", "oss0"]])])


async def test_read_status_from_a_real_store(tmp_path: Path) -> None:
    sp = spec(tmp_path)
    store = open_store(sp.store_url)
    try:
        now = time.time()
        lease = await store.grant_lease(30.0)
        await store.put(alive_key("oss1"), dump(NodeRecord("oss1", "127.0.0.63", 1, "bb", now)),
                        lease=lease.id)
        await store.put(fenced_key("oss0"), dump(FenceRecord("oss0", "oss1", "local", now)))
        # OST0000 failed over from oss0 to oss1 and is recovering there
        rev = await store.put(owner_key("scratch-OST0000"),
                              dump(OwnerRecord("oss1", "127.0.0.63", "bb", lease.id)),
                              lease=lease.id)
        await store.put(state_key("scratch-OST0000"),
                        dump(StateRecord("RECOVERING", "oss1", now, epoch=2)))
        # OST0001 was stopped by the administrator
        await store.put(state_key("scratch-OST0001"), dump(StateRecord("STOPPED", "oss1", now)))
        await store.put(target_key("scratch-OST0001", "admin_state"), b"stopped")
        await store.put(EVENTS_PREFIX + "00000000000000000001-oss1-0",
                        dump(Event(now, "oss1", "take", "scratch-OST0000", "took it")))
        st = await read_status(store, sp)
    finally:
        await store.close()
    nodes = {n["name"]: n for n in st["nodes"]}
    assert nodes["oss1"]["state"] == "alive" and nodes["oss1"]["boot_id"] == "bb"
    assert nodes["oss0"]["state"] == "fenced" and nodes["oss0"]["fenced_by"] == "oss1"
    t0, t1 = st["targets"]
    assert (t0["name"], t0["owner"], t0["state"], t0["epoch"]) == \
        ("scratch-OST0000", "oss1", "RECOVERING", 2)
    assert t0["backup"] == ["oss0"] and t0["token"] == rev
    assert (t1["owner"], t1["state"], t1["admin_state"]) == (None, "STOPPED", "stopped")
    assert [e["kind"] for e in st["events"]] == ["take"]
    assert st["stopping"] is False


async def test_read_status_survives_a_hand_edited_event(tmp_path: Path) -> None:
    sp = spec(tmp_path)
    store = open_store(sp.store_url)
    try:
        await store.put(EVENTS_PREFIX + "00000000000000000001-admin-0",
                        b'{"time": "noon", "node": "admin", "kind": "note"}')
        await store.put(EVENTS_PREFIX + "00000000000000000002-oss1-0",
                        dump(Event(time.time(), "oss1", "boot")))
        st = await read_status(store, sp)
    finally:
        await store.close()
    assert [e["kind"] for e in st["events"]] == ["boot"]
