"""The agent's picture of the cluster: the store's node and target keys, kept current by a
watch, read without a round trip on every decision."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TypeVar

from shoal.agent.records import (
    EVENTS_PREFIX,
    FenceRecord,
    HandoverRequest,
    LocationRecord,
    NodeRecord,
    OwnerRecord,
    StateRecord,
    alive_key,
    fenced_key,
    fs_down_key,
    load,
    location_key,
    owner_key,
    request_key,
    state_key,
    stopping_key,
)
from shoal.errors import StoreError
from shoal.store.base import ROOT, Compacted, EventType, KeyValue, Store, settings_key, target_key

log = logging.getLogger(__name__)

R = TypeVar("R")
RETRY = 0.2  # seconds between attempts while the store is unreachable


class ClusterView:
    def __init__(self) -> None:
        self.kvs: dict[str, KeyValue] = {}
        self.revision = 0
        self.loaded = asyncio.Event()

    # -- reading -----------------------------------------------------------------------
    def _rec(self, cls: type[R], key: str) -> R | None:
        kv = self.kvs.get(key)
        return load(cls, kv.value) if kv is not None else None

    def owner(self, target: str) -> tuple[OwnerRecord, KeyValue] | None:
        kv = self.kvs.get(owner_key(target))
        rec = load(OwnerRecord, kv.value) if kv is not None else None
        return (rec, kv) if rec is not None and kv is not None else None

    def state(self, target: str) -> StateRecord | None:
        return self._rec(StateRecord, state_key(target))

    def location(self, target: str) -> LocationRecord | None:
        return self._rec(LocationRecord, location_key(target))

    def request(self, target: str) -> HandoverRequest | None:
        return self._rec(HandoverRequest, request_key(target))

    def alive(self, node: str) -> NodeRecord | None:
        return self._rec(NodeRecord, alive_key(node))

    def fenced(self, node: str) -> FenceRecord | None:
        return self._rec(FenceRecord, fenced_key(node))

    def stopping(self, fs: str) -> bool:
        """`fs` is being stopped (`shoal down` of a local cluster) or kept down."""
        return stopping_key(fs) in self.kvs or self.fs_down(fs)

    def fs_down(self, fs: str) -> bool:
        return fs_down_key(fs) in self.kvs

    def setting(self, *parts: str) -> str | None:
        kv = self.kvs.get(settings_key(*parts))
        return kv.value.decode(errors="replace") if kv is not None else None

    def admin_state(self, target: str) -> str:
        kv = self.kvs.get(target_key(target, "admin_state"))
        return kv.value.decode(errors="replace") if kv is not None else "enabled"

    # -- keeping current ---------------------------------------------------------------
    def _apply(self, key: str, kv: KeyValue | None) -> None:
        if kv is None:
            self.kvs.pop(key, None)
        else:
            self.kvs[key] = kv

    async def follow(self, store: Store, on_change: Callable[[str], None]) -> None:
        """Load every key, then apply the watch's events forever; re-read after compaction or
        while the store is unreachable (the view goes stale, decisions that need the store
        fail on their own writes)."""
        while True:
            try:
                kvs, rev = await store.range(ROOT + "/")
                self.kvs = {kv.key: kv for kv in kvs if not kv.key.startswith(EVENTS_PREFIX)}
                self.revision = rev
                self.loaded.set()
                on_change("")
                async for ev in store.watch(ROOT + "/", rev + 1):
                    if ev.key.startswith(EVENTS_PREFIX):
                        continue
                    self.revision = ev.revision
                    if ev.type is EventType.DELETE:
                        self._apply(ev.key, None)
                    else:
                        prev = self.kvs.get(ev.key)
                        version = (prev.version + 1) if prev is not None else 1
                        self._apply(ev.key, KeyValue(ev.key, ev.value, ev.create_revision,
                                                     ev.revision, version, 0))
                    on_change(ev.key)
            except Compacted:
                log.info("watch fell behind compaction: re-reading the store")
            except StoreError as exc:
                log.warning("store watch: %s", exc)
                await asyncio.sleep(RETRY)
