"""The Store contract, run against every backend (the `store` fixture is parametrized).

What base.Store promises is pinned here: global monotonic revisions, create_revision as a
fencing token, create/CAS/delete/transaction semantics, leases that take their keys with
them, ordered watches with no gaps, Compacted for lost history, and clear bad-input errors.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import aclosing

import pytest

from shoal.errors import InvalidArgument, LeaseExpired, StoreError
from shoal.store import Compacted, EventType, Store, open_store
from tests.store.watching import take


async def wait_until(cond: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():  # type: ignore[misc]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


# -- keys and revisions ----------------------------------------------------------------
async def test_get_absent_is_none(store: Store, ns: str) -> None:
    assert await store.get(ns + "missing") is None


async def test_put_then_get(store: Store, ns: str) -> None:
    rev = await store.put(ns + "a", b"one")
    kv = await store.get(ns + "a")
    assert kv is not None
    assert (kv.key, kv.value, kv.version, kv.lease) == (ns + "a", b"one", 1, 0)
    assert kv.create_revision == kv.mod_revision == rev
    assert await store.revision() >= rev


async def test_overwrite_keeps_create_revision(store: Store, ns: str) -> None:
    r1 = await store.put(ns + "a", b"one")
    r2 = await store.put(ns + "a", b"two")
    assert r2 > r1
    kv = await store.get(ns + "a")
    assert kv is not None
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"two", r1, r2, 2)


async def test_revisions_strictly_increase(store: Store, ns: str) -> None:
    revs = [await store.put(f"{ns}k{i % 3}", str(i).encode()) for i in range(10)]
    assert revs == sorted(set(revs))
    assert await store.revision() >= revs[-1]


async def test_empty_value_is_a_value(store: Store, ns: str) -> None:
    await store.put(ns + "e", b"")
    kv = await store.get(ns + "e")
    assert kv is not None and kv.value == b""


async def test_range_by_prefix_sorted(store: Store, ns: str) -> None:
    for key in ("b", "a", "a/x", "ab", "é", "z"):
        await store.put(ns + "dir/" + key, key.encode())
    await store.put(ns + "dir", b"not under dir/")
    await store.put(ns + "dirx", b"not under dir/")
    last = await store.put(ns + "other/a", b"x")
    kvs, rev = await store.range(ns + "dir/")
    assert [kv.key for kv in kvs] == [ns + "dir/" + k for k in ("a", "a/x", "ab", "b", "z", "é")]
    assert [kv.value for kv in kvs] == [k.encode() for k in ("a", "a/x", "ab", "b", "z", "é")]
    assert rev >= last
    empty, _ = await store.range(ns + "nothing/")
    assert empty == []


async def test_deleted_then_recreated_key_gets_new_fencing_token(store: Store, ns: str) -> None:
    r1 = await store.put(ns + "owner", b"node1")
    assert await store.delete(ns + "owner")
    r2 = await store.put(ns + "owner", b"node2")
    kv = await store.get(ns + "owner")
    assert kv is not None
    assert kv.create_revision == r2 > r1
    assert kv.version == 1


# -- conditional writes ----------------------------------------------------------------
async def test_create_only_if_absent(store: Store, ns: str) -> None:
    rev = await store.create(ns + "c", b"first")
    assert rev is not None
    assert await store.create(ns + "c", b"second") is None
    kv = await store.get(ns + "c")
    assert kv is not None and kv.value == b"first" and kv.mod_revision == rev


async def test_compare_and_swap(store: Store, ns: str) -> None:
    key = ns + "cas"
    assert await store.compare_and_swap(key, b"x", mod_revision=5) is None  # absent
    assert await store.get(key) is None
    r1 = await store.compare_and_swap(key, b"v1", mod_revision=0)
    assert r1 is not None
    assert await store.compare_and_swap(key, b"lost", mod_revision=0) is None
    assert await store.compare_and_swap(key, b"lost", mod_revision=r1 - 1) is None
    r2 = await store.compare_and_swap(key, b"v2", mod_revision=r1)
    assert r2 is not None and r2 > r1
    assert await store.compare_and_swap(key, b"stale", mod_revision=r1) is None
    kv = await store.get(key)
    assert kv is not None and (kv.value, kv.mod_revision, kv.create_revision) == (b"v2", r2, r1)


async def test_delete(store: Store, ns: str) -> None:
    key = ns + "d"
    assert await store.delete(key) is False
    rev = await store.put(key, b"x")
    assert await store.delete(key, mod_revision=rev + 100) is False
    assert await store.get(key) is not None
    assert await store.delete(key, mod_revision=0) is False
    assert await store.delete(key, mod_revision=rev) is True
    assert await store.get(key) is None
    await store.put(key, b"y")
    assert await store.delete(key) is True
    assert await store.delete(key) is False


async def test_writes_that_change_nothing_do_not_bump_revision(store: Store, ns: str) -> None:
    # Tests run one at a time, so nobody else writes to the shared etcd meanwhile.
    before = await store.put(ns + "anchor", b"x")
    assert await store.delete(ns + "never") is False
    assert await store.transaction([], [], [ns + "never"]) == before
    assert await store.create(ns + "anchor", b"y") is None
    assert await store.transaction([(ns + "anchor", 0)], [(ns + "z", b"")], []) is None
    assert await store.revision() == before


async def test_transaction_all_or_nothing(store: Store, ns: str) -> None:
    ra = await store.put(ns + "a", b"a1")
    await store.put(ns + "gone", b"x")
    rev = await store.transaction(
        [(ns + "a", ra), (ns + "absent", 0)],
        [(ns + "a", b"a2"), (ns + "b", b"b1")],
        [ns + "gone"],
    )
    assert rev is not None and rev > ra
    a, b = await store.get(ns + "a"), await store.get(ns + "b")
    assert a is not None and b is not None
    assert (a.value, b.value, a.mod_revision, b.mod_revision) == (b"a2", b"b1", rev, rev)
    assert await store.get(ns + "gone") is None

    # One failing compare: nothing changes.
    failed = await store.transaction(
        [(ns + "a", rev), (ns + "b", ra)], [(ns + "a", b"a3"), (ns + "c", b"c")], [ns + "b"]
    )
    assert failed is None
    a2 = await store.get(ns + "a")
    assert a2 is not None and a2.value == b"a2"
    assert await store.get(ns + "c") is None and await store.get(ns + "b") is not None


async def test_transaction_rejects_duplicate_keys(store: Store, ns: str) -> None:
    with pytest.raises(InvalidArgument):
        await store.transaction([], [(ns + "a", b"1")], [ns + "a"])
    with pytest.raises(InvalidArgument):
        await store.transaction([], [(ns + "a", b"1"), (ns + "a", b"2")], [])
    assert await store.get(ns + "a") is None


@pytest.mark.parametrize("bad_key", ["", b"/bytes/key", None])
async def test_bad_keys_rejected(store: Store, bad_key: object) -> None:
    with pytest.raises(InvalidArgument):
        await store.put(bad_key, b"x")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        await store.get(bad_key)  # type: ignore[arg-type]


async def test_bad_values_and_ttls_rejected(store: Store, ns: str) -> None:
    with pytest.raises(InvalidArgument):
        await store.put(ns + "v", "text, not bytes")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        await store.grant_lease(0)
    with pytest.raises(InvalidArgument):
        await store.grant_lease(-1.0)
    assert await store.get(ns + "v") is None


# -- leases ----------------------------------------------------------------------------
async def test_lease_binds_keys_and_revoke_deletes_them(store: Store, ns: str) -> None:
    lease = await store.grant_lease(5)
    assert lease.ttl >= 5
    await store.put(ns + "alive", b"1", lease=lease.id)
    rev = await store.create(ns + "owner", b"me", lease=lease.id)
    assert rev is not None
    kv = await store.get(ns + "owner")
    assert kv is not None and kv.lease == lease.id
    assert await store.keepalive(lease.id) == lease.ttl

    await store.revoke_lease(lease.id)
    assert await store.get(ns + "alive") is None
    assert await store.get(ns + "owner") is None
    with pytest.raises(LeaseExpired):
        await store.keepalive(lease.id)
    with pytest.raises(LeaseExpired):
        await store.put(ns + "late", b"x", lease=lease.id)
    assert await store.get(ns + "late") is None
    await store.revoke_lease(lease.id)  # again: no error


async def test_put_without_lease_detaches_key(store: Store, ns: str) -> None:
    lease = await store.grant_lease(5)
    await store.put(ns + "k", b"leased", lease=lease.id)
    await store.put(ns + "k", b"free")
    await store.revoke_lease(lease.id)
    kv = await store.get(ns + "k")
    assert kv is not None and kv.value == b"free" and kv.lease == 0


async def test_lease_expires_and_watch_sees_delete(store: Store, ns: str) -> None:
    lease = await store.grant_lease(1)
    rev = await store.put(ns + "alive", b"1", lease=lease.id)
    granted = time.monotonic()
    async with aclosing(store.watch(ns, rev + 1)) as events:
        (ev,) = await take(events, 1, timeout=10)
    elapsed = time.monotonic() - granted
    assert (ev.type, ev.key, ev.value, ev.create_revision) == (
        EventType.DELETE, ns + "alive", b"", rev
    )
    assert ev.revision > rev
    assert lease.ttl - 0.2 <= elapsed < lease.ttl + 5  # never early; late only loosely bounded
    assert await store.get(ns + "alive") is None
    with pytest.raises(LeaseExpired):
        await store.keepalive(lease.id)


async def test_keepalive_keeps_key(store: Store, ns: str) -> None:
    lease = await store.grant_lease(1)
    await store.put(ns + "alive", b"1", lease=lease.id)
    end = time.monotonic() + 2 * lease.ttl
    while time.monotonic() < end:
        assert await store.keepalive(lease.id) == lease.ttl
        await asyncio.sleep(lease.ttl / 4)
    assert await store.get(ns + "alive") is not None
    await store.revoke_lease(lease.id)


# -- watches ---------------------------------------------------------------------------
async def test_watch_sees_puts_and_deletes_in_order(store: Store, ns: str) -> None:
    _, rev = await store.range(ns)
    async with aclosing(store.watch(ns + "w/", rev + 1)) as events:
        r1 = await store.put(ns + "w/a", b"1")
        await store.put(ns + "elsewhere", b"not watched")
        r2 = await store.put(ns + "w/a", b"2")
        await store.delete(ns + "w/a")
        r4 = await store.transaction([], [(ns + "w/b", b"b"), (ns + "w/c", b"c")], [])
        got = await take(events, 5)
    assert [(e.type, e.key, e.value) for e in got] == [
        (EventType.PUT, ns + "w/a", b"1"),
        (EventType.PUT, ns + "w/a", b"2"),
        (EventType.DELETE, ns + "w/a", b""),
        (EventType.PUT, ns + "w/b", b"b"),
        (EventType.PUT, ns + "w/c", b"c"),
    ]
    assert got[0].revision == r1 and got[1].revision == r2 and got[4].revision == r4
    assert got[3].revision == got[4].revision  # one transaction, one revision
    assert [e.create_revision for e in got[:3]] == [r1, r1, r1]
    assert [e.revision for e in got] == sorted(e.revision for e in got)


async def test_watch_replays_history_from_start_revision(store: Store, ns: str) -> None:
    revs = [await store.put(f"{ns}h{i}", str(i).encode()) for i in range(5)]
    async with aclosing(store.watch(ns, revs[2])) as events:
        got = await take(events, 3)
    assert [(e.key, e.revision) for e in got] == [(f"{ns}h{i}", revs[i]) for i in (2, 3, 4)]


async def test_watch_from_zero_starts_now(store: Store, ns: str) -> None:
    await store.put(ns + "old", b"before")
    async with aclosing(store.watch(ns, 0)) as events:
        first = asyncio.ensure_future(take(events, 1))
        await asyncio.sleep(0.3)  # let the watch start
        await store.put(ns + "new", b"after")
        (ev,) = await first
    assert ev.key == ns + "new"


async def test_two_watchers_see_the_same_sequence(store: Store, ns: str, another_store) -> None:  # noqa: ANN001
    other: Store = another_store()
    _, rev = await store.range(ns)
    async with aclosing(store.watch(ns, rev + 1)) as w1, aclosing(other.watch(ns, rev + 1)) as w2:
        for i in range(20):
            await (store if i % 2 else other).put(f"{ns}k{i % 4}", str(i).encode())
        a, b = await take(w1, 20), await take(w2, 20)
    assert a == b
    assert [e.value for e in a] == [str(i).encode() for i in range(20)]


async def test_watch_latency_is_small(store: Store, ns: str) -> None:
    _, rev = await store.range(ns)
    async with aclosing(store.watch(ns, rev + 1)) as events:
        waiter = asyncio.ensure_future(take(events, 1))
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        await store.put(ns + "k", b"v")
        await waiter
    assert time.monotonic() - t0 < 1.0  # loose: the bench reports the real number


async def test_watch_below_compaction_raises_compacted(store: Store, ns: str) -> None:
    first = await store.put(ns + "k", b"0")
    for i in range(5):
        last = await store.put(ns + "k", str(i).encode())
    await store.compact(last)
    with pytest.raises(Compacted) as err:
        async with aclosing(store.watch(ns, first)) as events:
            await take(events, 1)
    assert err.value.compact_revision >= last
    async with aclosing(store.watch(ns, last)) as events:  # the compaction point is kept
        (ev,) = await take(events, 1)
    assert ev.revision == last and ev.value == b"4"


# -- lifecycle -------------------------------------------------------------------------
async def test_close_ends_watches_and_refuses_calls(store_url: str, ns: str) -> None:
    store = open_store(store_url)
    rev = await store.put(ns + "k", b"v")
    events = store.watch(ns, rev + 1)
    pending = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0.2)
    await store.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, 5)
    with pytest.raises(StoreError, match="closed"):
        await store.get(ns + "k")
    await store.close()  # twice is fine
