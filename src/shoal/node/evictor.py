"""The node's ping evictor: notes every client's requests and evicts silent clients from the
targets served here (the rule, and why, in protocol/ping_evict.py)."""

from __future__ import annotations

import asyncio
import logging
import time

from shoal.errors import InvalidArgument
from shoal.protocol.ping_evict import PingEvictor, check_interval, ping_interval
from shoal.target.base import TargetService
from shoal.target.recovery import TargetRecovery

log = logging.getLogger(__name__)


class NodeEvictor:
    def __init__(self, services: dict[str, TargetService],
                 recovery: dict[str, TargetRecovery]) -> None:
        # the node's own dicts: targets come and go in them as the node starts and stops them
        self.services = services
        self.recovery = recovery
        self.rule = PingEvictor()
        self.heard = self.rule.heard  # the request path writes here directly: it is hot
        self.evictions = 0
        # target -> (the service instance, when it began serving: its window closed)
        self._since: dict[str, tuple[TargetService, float]] = {}
        self._wake = asyncio.Event()

    @property
    def timeout(self) -> float:
        return self.rule.timeout

    @property
    def ping_interval(self) -> float:
        """What clients are told: ping this node at least this often when idle."""
        return ping_interval(self.rule.timeout)

    def set_timeout(self, value: object, name: str) -> None:
        """From the fs_defs setting or set_param `name`: seconds, 0 (off) or more."""
        try:
            self.rule.set_timeout(float(value))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise InvalidArgument(f"{name}={value}: seconds, 0 or more") from None
        self._wake.set()  # the next check follows the new timeout, not the old interval

    def check(self, now: float) -> list[tuple[str, str]]:
        """Evict every silent client with state on a target served here and out of its
        recovery window; the (target, client) pairs evicted."""
        done: list[tuple[str, str]] = []
        for name in [n for n in self._since if n not in self.services]:
            del self._since[name]
        last = self.rule.last_check
        if self.rule.node_was_away(now):
            log.warning("ping evictor: this node was away for %.1f s; every client gets a "
                        "whole timeout from now", now - (last if last is not None else now))
            self._since.clear()
        for name, svc in list(self.services.items()):
            rec = self.recovery.get(name)
            if rec is None or rec.recovering:
                continue
            began = self._since.get(name)
            if began is None or began[0] is not svc:
                began = self._since[name] = (svc, now)
            for client in self.rule.expired(svc.known_clients, now, began[1]):
                silent = self.rule.silent_for(client, now, began[1])
                rec.evict(client, f"nothing heard from it for {silent:.0f} s "
                                  f"(ping eviction timeout {self.rule.timeout:g} s)")
                done.append((name, client))
        self.evictions += len(done)
        self.rule.prune(now)
        return done

    async def run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(check_interval(self.rule.timeout)):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            self.check(time.monotonic())
