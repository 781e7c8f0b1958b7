"""Alerts: the events an administrator must hear of, pushed through the hooks the site set.

An alert is an event emitted with `alert=True` (a failed fence, a target left DOWN, an
aborted takeover, a superseded owner, a sick target, an eviction storm ...), a detect that
starts a failover, and an owner that keeps serving on its partners' word because the store
is unreachable.
Each goes, with its whole record as JSON, to ALERT_COMMAND (on its standard input),
ALERT_WEBHOOK (POSTed) and the local syslog (ALERT_SYSLOG), as configured. Hooks run in the
background and never hold the agent up: each is bounded (HOOK_TIMEOUT), at most
MAX_RUNNING run at once, and an alert past that is logged and dropped, not queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import logging.handlers
import shlex
import urllib.request
from collections import deque
from dataclasses import asdict
from typing import Any

from shoal.agent.records import Event

log = logging.getLogger(__name__)

HOOK_TIMEOUT = 10.0
MAX_RUNNING = 8
ALERT_KINDS = frozenset({"owner_failsafe"})  # alerts whatever their data says


class StormWatch:
    """Evictions in a sliding window: a storm once `count` fall within `window` seconds
    (many clients lost at once: a switch, a rack, a network partition), said once until
    a whole window passes without one."""

    def __init__(self, count: int = 10, window: float = 10.0) -> None:
        self.count = count
        self.window = window
        self._times: deque[float] = deque()
        self._raised = False

    def evicted(self, now: float) -> int:
        """Another eviction at `now`: how many fell in the window, if this one makes a
        storm to tell of; else 0."""
        times = self._times
        if times and now - times[-1] > self.window:
            self._raised = False  # calm for a whole window: the next storm is news again
        times.append(now)
        while times and now - times[0] > self.window:
            times.popleft()
        if len(times) >= self.count and not self._raised:
            self._raised = True
            return len(times)
        return 0


def is_alert(event: Event) -> bool:
    data = event.data
    return (bool(data.get("alert")) or event.kind in ALERT_KINDS
            or (event.kind == "detect" and bool(data.get("failover"))))


def alert_json(event: Event) -> bytes:
    return json.dumps({"alert": event.kind, **asdict(event)}, default=str).encode()


class Alerts:
    def __init__(self, settings: dict[str, Any]) -> None:
        command = settings.get("ALERT_COMMAND")
        self.command = shlex.split(str(command)) if command else None
        self.webhook = str(settings["ALERT_WEBHOOK"]) if settings.get("ALERT_WEBHOOK") else None
        self.syslog = bool(settings.get("ALERT_SYSLOG"))
        self._running: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.dropped = 0

    @property
    def configured(self) -> bool:
        return bool(self.command or self.webhook or self.syslog)

    def event(self, event: Event) -> None:
        """EventLog's hook: every event emitted; the alerts among them go out."""
        if not self.configured or not is_alert(event):
            return
        if len(self._running) >= MAX_RUNNING:
            self.dropped += 1
            log.warning("alert %s %s dropped: %d hooks still running", event.kind,
                        event.target, len(self._running))
            return
        task = asyncio.get_running_loop().create_task(self._send(event))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _send(self, event: Event) -> None:
        body = alert_json(event)
        hooks = []
        if self.command:
            hooks.append(self._run_command(self.command, body))
        if self.webhook:
            hooks.append(asyncio.to_thread(_post, self.webhook, body))
        if self.syslog:
            hooks.append(asyncio.to_thread(_syslog, body))
        for result in await asyncio.gather(*hooks, return_exceptions=True):
            if isinstance(result, BaseException):
                log.warning("alert %s %s: a hook failed: %s", event.kind, event.target, result)
        self.sent += 1  # sent, whatever became of it

    @staticmethod
    async def _run_command(argv: list[str], body: bytes) -> None:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        try:
            async with asyncio.timeout(HOOK_TIMEOUT):
                await proc.communicate(body)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        if proc.returncode:
            raise OSError(f"{argv[0]} exited with {proc.returncode}")

    async def close(self) -> None:
        """Let the alerts on their way finish (briefly): a stopping node's last words."""
        if self._running:
            await asyncio.wait(list(self._running), timeout=HOOK_TIMEOUT + 1.0)


def _post(url: str, body: bytes) -> None:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=HOOK_TIMEOUT) as r:  # noqa: S310 - the site's
        r.read()


def _syslog(body: bytes) -> None:
    handler = logging.handlers.SysLogHandler(
        address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON)
    try:
        handler.emit(logging.LogRecord("shoal", logging.WARNING, __file__, 0,
                                       "shoal alert: %s", (body.decode(),), None))
    finally:
        handler.close()
