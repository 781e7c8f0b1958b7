"""Random sequences of writes, checked step by step against a dict model, on both backends.

Every return value (revision or None/False), the final range and the watch history must match
what the model predicts, including exact revision numbers: each effective write moves the
store revision by exactly one, and writes that change nothing do not move it.
"""

from __future__ import annotations

import asyncio
import uuid
from contextlib import aclosing
from dataclasses import dataclass, replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.store import EventType, Store, open_store

KEYS = ["a", "b", "c/d", "c/e"]
keys = st.sampled_from(KEYS)
values = st.binary(max_size=6)
how = st.sampled_from(["current", "stale", "zero"])

ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), keys, values),
        st.tuples(st.just("create"), keys, values),
        st.tuples(st.just("cas"), keys, values, how),
        st.tuples(st.just("delete"), keys, st.sampled_from(["any", "current", "stale"])),
        st.tuples(
            st.just("txn"),
            st.lists(st.tuples(keys, how), max_size=2),
            st.lists(st.tuples(keys, values), max_size=2, unique_by=lambda kv: kv[0]),
            st.lists(keys, max_size=2, unique=True),
        ),
    ),
    max_size=25,
)


@dataclass(frozen=True)
class Rec:
    value: bytes
    create: int
    mod: int
    version: int


class Model:
    def __init__(self, rev: int) -> None:
        self.rev = rev
        self.kv: dict[str, Rec] = {}
        self.events: list[tuple[EventType, str, bytes, int, int]] = []

    def mod_of(self, key: str) -> int:
        rec = self.kv.get(key)
        return rec.mod if rec else 0

    def expected_mod(self, key: str, how: str) -> int:
        """The mod_revision argument a caller passes: right, wrong, or 'must be absent'."""
        current = self.mod_of(key)
        return {"current": current, "stale": current - 1 if current else 7, "zero": 0}[how]

    def put(self, key: str, value: bytes) -> None:
        old = self.kv.get(key)
        rec = (
            replace(old, value=value, mod=self.rev, version=old.version + 1)
            if old
            else Rec(value, self.rev, self.rev, 1)
        )
        self.kv[key] = rec
        self.events.append((EventType.PUT, key, value, self.rev, rec.create))

    def delete(self, key: str) -> None:
        rec = self.kv.pop(key)
        self.events.append((EventType.DELETE, key, b"", self.rev, rec.create))


async def run_ops(url: str, steps: list[tuple]) -> None:  # type: ignore[type-arg]
    ns = f"/model/{uuid.uuid4().hex[:10]}/"
    store: Store = open_store(url)
    try:
        model = Model(await store.revision())
        start = model.rev
        for step in steps:
            op, key = step[0], step[1]
            k = ns + key if isinstance(key, str) else None
            if op == "put":
                model.rev += 1
                model.put(key, step[2])
                assert await store.put(k, step[2]) == model.rev  # type: ignore[arg-type]
            elif op in ("create", "cas"):
                expect = 0 if op == "create" else model.expected_mod(key, step[3])
                ok = model.mod_of(key) == expect
                if op == "create":
                    got = await store.create(k, step[2])  # type: ignore[arg-type]
                else:
                    got = await store.compare_and_swap(k, step[2], mod_revision=expect)  # type: ignore[arg-type]
                if ok:
                    model.rev += 1
                    model.put(key, step[2])
                assert got == (model.rev if ok else None), step
            elif op == "delete":
                mod = None if step[2] == "any" else model.expected_mod(key, step[2])
                ok = key in model.kv and (mod is None or mod == model.mod_of(key))
                assert await store.delete(k, mod_revision=mod) is ok, step  # type: ignore[arg-type]
                if ok:
                    model.rev += 1
                    model.delete(key)
            else:
                _, cmps, puts, dels = step
                dels = [d for d in dels if d not in {p for p, _ in puts}]
                compares = [(c, model.expected_mod(c, h)) for c, h in cmps]
                ok = all(model.mod_of(c) == m for c, m in compares)
                got = await store.transaction(
                    [(ns + c, m) for c, m in compares],
                    [(ns + p, v) for p, v in puts],
                    [ns + d for d in dels],
                )
                if ok and (puts or any(d in model.kv for d in dels)):
                    model.rev += 1
                    for p, v in puts:
                        model.put(p, v)
                    for d in dels:
                        if d in model.kv:
                            model.delete(d)
                assert got == (model.rev if ok else None), step

        kvs, rev = await store.range(ns)
        assert rev == model.rev
        assert [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) for kv in kvs] == [
            (ns + key, r.value, r.create, r.mod, r.version) for key, r in sorted(model.kv.items())
        ]
        if model.events:
            got_events = []
            async with aclosing(store.watch(ns, start + 1)) as events:
                async for ev in events:
                    got_events.append((ev.type, ev.key.removeprefix(ns), ev.value, ev.revision,
                                       ev.create_revision))
                    if len(got_events) == len(model.events):
                        break
            assert got_events == model.events
    finally:
        await store.close()


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=ops)
def test_random_writes_match_dict_model(store_url: str, steps: list[tuple]) -> None:  # type: ignore[type-arg]
    asyncio.run(asyncio.wait_for(run_ops(store_url, steps), 60))
