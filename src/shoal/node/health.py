"""Health of a node's services, as Lustre's health_check reports it.

A service is unhealthy when its device cannot be written or statfs'd, when its journal has
uncommitted work but has not committed for many commit intervals, or when a request has been
waiting far longer than any request should. The event-loop lag is measured here too: a loop
that stalls cannot answer anyone, whatever the device says.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from shoal.target.base import TargetService

LAG_PERIOD = 0.25  # how often the loop-lag probe runs
DEVICE_PERIOD = 2.0  # how often each device gets a write test
MAX_LAG = 5.0  # a loop late by this much serves nobody
MAX_REQUEST_AGE = 30.0  # a request waiting this long means the service is stuck
COMMIT_GRACE = 10.0  # uncommitted work older than commit_interval + this: journal stuck


@dataclass
class HealthMonitor:
    services: dict[str, TargetService]
    loop_lag: float = 0.0
    max_loop_lag: float = 0.0
    device_errors: dict[str, str] = field(default_factory=dict)
    inflight: dict[int, tuple[str, float]] = field(default_factory=dict)  # id -> (target, t0)
    forced_sick: dict[str, str] = field(default_factory=dict)  # fail_loc / admin

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._lag_probe())
            tg.create_task(self._device_probe())

    async def _lag_probe(self) -> None:
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(LAG_PERIOD)
            self.loop_lag = max(0.0, time.monotonic() - t0 - LAG_PERIOD)
            self.max_loop_lag = max(self.max_loop_lag, self.loop_lag)

    async def _device_probe(self) -> None:
        while True:
            for name, svc in list(self.services.items()):
                problem = await asyncio.to_thread(svc.check_device)
                if problem:
                    self.device_errors[name] = problem
                else:
                    self.device_errors.pop(name, None)
            await asyncio.sleep(DEVICE_PERIOD)

    def problem(self, name: str) -> str | None:
        """Why the named service is unhealthy, or None."""
        svc = self.services.get(name)
        if svc is None:
            return "not served here"
        if name in self.forced_sick:
            return self.forced_sick[name]
        if name in self.device_errors:
            return self.device_errors[name]
        since = svc.uncommitted_since
        if (since is not None and not svc.no_commit
                and (age := time.time() - since) > svc.commit_interval + COMMIT_GRACE):
            return f"journal has not committed changes made {age:.0f}s ago"
        oldest = min((t0 for tgt, t0 in self.inflight.values() if tgt == name), default=None)
        if oldest is not None and time.monotonic() - oldest > MAX_REQUEST_AGE:
            return f"a request has waited {time.monotonic() - oldest:.0f}s"
        if self.loop_lag > MAX_LAG:
            return f"event loop lagging {self.loop_lag:.1f}s"
        return None

    def report(self) -> str:
        """`healthy`, or `NOT HEALTHY` preceded by each unhealthy device, as Lustre prints."""
        lines = [f"device {n} reported unhealthy: {p}"
                 for n in sorted(self.services) if (p := self.problem(n))]
        return "\n".join([*lines, "NOT HEALTHY"]) if lines else "healthy"
