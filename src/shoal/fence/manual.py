"""Manual fencing: an administrator powers the node off and says so (`shoal fence confirm`).

For sites without a power controller Shoal can drive (Lustre's manual failover, Pacemaker's
fence_ack_manual). The driver raises an alert (a log line at WARNING, the optional
`on_alert` hook, and the key `/shoal/nodes/<node>/fence_request`, which `shoal fence status`
shows), then waits on a store watch for `/shoal/nodes/<node>/fence_confirm` to be written
at a revision newer than the moment it started waiting, so a confirmation left over from an
earlier fence never counts for this one. It deletes (consumes) the confirmation it used and
its request. No confirmation within the timeout (default one hour; None waits for ever) is
a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from shoal.errors import StoreError, StoreUnreachable
from shoal.fence.base import FenceDriver, FenceResult, PowerState
from shoal.store.base import ROOT, Compacted, EventType, Store

log = logging.getLogger("shoal.fence")

DEFAULT_TIMEOUT: float | None = 3600.0
STORE_RETRY = 1.0  # seconds between tries while the store is unreachable


def fence_confirm_key(node: str) -> str:
    return f"{ROOT}/nodes/{node}/fence_confirm"


def fence_request_key(node: str) -> str:
    return f"{ROOT}/nodes/{node}/fence_request"


def confirmation_value(by: str | None = None) -> bytes:
    """What `shoal fence confirm` writes: who confirmed, from where, when."""
    return json.dumps({"by": by or default_who(), "host": socket.gethostname(),
                       "at": datetime.now(UTC).isoformat(timespec="seconds")}).encode()


def default_who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _describe(raw: bytes) -> str:
    try:
        data: Any = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")[:200]
    if isinstance(data, dict):
        return f"by {data.get('by', '?')}@{data.get('host', '?')} at {data.get('at', '?')}"
    return str(data)[:200]


class _StoreClosed(StoreError):
    """The watch ended because the store object was closed under us."""


class ManualFenceDriver(FenceDriver):
    name = "manual"

    def __init__(self, store: Store, *, timeout: float | None = DEFAULT_TIMEOUT,
                 requester: str = "", on_alert: Callable[[str], None] | None = None) -> None:
        if timeout is not None and not timeout > 0:
            raise ValueError(f"manual fence timeout must be positive or None, not {timeout!r}")
        self.store = store
        self.timeout = timeout
        self.requester = requester  # the node asking, shown to the administrator
        self.on_alert = on_alert

    def alert_text(self, node: str) -> str:
        wait = "no time limit" if self.timeout is None else f"{self.timeout:.0f}s"
        return (f"MANUAL FENCE NEEDED: power off {node} (make sure it cannot write to its "
                f"devices), then run `shoal fence confirm {node}`; waiting ({wait})"
                + (f" on {self.requester}" if self.requester else ""))

    async def fence(self, node: str, instance: str = "") -> FenceResult:
        started = time.monotonic()
        key = fence_confirm_key(node)
        try:
            since = await self.store.revision()
            await self.store.put(fence_request_key(node), json.dumps({
                "requester": self.requester, "since_revision": since,
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
                "timeout": self.timeout}).encode())
        except StoreUnreachable as exc:
            raise self._failed(node, started, f"cannot post the fence request: {exc}") \
                from None
        text = self.alert_text(node)
        log.warning("%s", text)
        if self.on_alert is not None:
            self.on_alert(text)
        try:
            if self.timeout is None:
                confirmed = await self._wait(key, since)
            else:
                confirmed = await asyncio.wait_for(self._wait(key, since), self.timeout)
        except TimeoutError:
            await self._withdraw(node)
            raise self._failed(node, started, f"no `shoal fence confirm {node}` within "
                                              f"{self.timeout:.0f}s") from None
        except _StoreClosed as exc:
            raise self._failed(node, started, str(exc)) from None
        except BaseException:
            # cancelled: take the request down so no administrator acts on a stale alert
            await self._withdraw(node)
            raise
        # Consume it: the next fence of this node needs its own confirmation.
        with contextlib.suppress(StoreUnreachable):
            await self.store.delete(key, mod_revision=confirmed[0])
        await self._withdraw(node)
        return self._ok(node, started, f"confirmed {_describe(confirmed[1])}")

    async def _withdraw(self, node: str) -> None:
        with contextlib.suppress(StoreUnreachable):
            await self.store.delete(fence_request_key(node))

    async def _wait(self, key: str, since: int) -> tuple[int, bytes]:
        """(mod_revision, value) of the first write of `key` after revision `since`.

        Rides out an unreachable store (a long wait should not fail on a blip) and a watch
        that fell behind the kept history; raises _StoreClosed if the store was closed."""
        start = since + 1
        while True:
            try:
                async with contextlib.aclosing(self.store.watch(key, start)) as events:
                    async for ev in events:
                        if ev.key == key and ev.type is EventType.PUT and ev.revision > since:
                            return ev.revision, ev.value
                        start = ev.revision + 1
                raise _StoreClosed("the store was closed while waiting for a confirmation")
            except Compacted:
                # History is gone: the key's current state says whether it was confirmed.
                try:
                    kvs, at = await self.store.range(key)
                except StoreUnreachable as exc:
                    log.warning("manual fence: store unreachable (%s), retrying", exc)
                else:
                    for kv in kvs:
                        if kv.key == key and kv.mod_revision > since:
                            return kv.mod_revision, kv.value
                    start = at + 1
                    continue
            except StoreUnreachable as exc:
                log.warning("manual fence: store unreachable (%s), retrying", exc)
            await asyncio.sleep(STORE_RETRY)

    async def status(self, node: str) -> PowerState:
        # Only the administrator knows; a confirmation is consumed by the fence it was for.
        return "unknown"
