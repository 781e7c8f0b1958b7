"""Ping eviction (Lustre's ping_evictor): a server evicts a client it has not heard from.

A client that dies between requests (killed, its node crashed or cut off) tells no server.
Without this rule its state stays on every target for good: its open files (an unlinked
file it had open is never destroyed), its last_rcvd slot, and, for the mount's page cache
(mount/handles.py), the MDT version of a file it was writing never moves, so a mount that
kept pages of that file shows them. So each node notes when it last heard from each client
(any request, a ping included) and evicts, from every target it serves, a client with state
there that it has not heard from for `timeout` seconds. Clients that have nothing to send
ping each node every `ping_interval(timeout)` seconds, which the node tells them at connect
and in every ping reply, so that a live client is never evicted for being idle.

Lustre pings every obd_timeout/4 (25 s) and evicts after 6 intervals missed (150 s);
Shoal keeps the 150 s default but pings 30 times per timeout (every 5 s): the ping is also
how an idle client notices that its server fell silent (a power cut, a hang), and a recovery
window that cannot count on IR waits that long for it (protocol/recovery_timeouts.py), where
Lustre's windows are long enough for its 25 s. A client that sends anything meanwhile does
not ping at all, so 200 idle clients cost a node 40 pings a second. A target just started (a
failover, a restart) counts from the moment its recovery window closed, since its clients
spent the time before reconnecting: the window already evicts those that do not come back.
So do all targets of a node that was itself away (paused, its event loop stalled) for half a
timeout or more: its clients were talking, it was not listening.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

DEFAULT_TIMEOUT = 150.0  # seconds; 0 turns eviction off
PINGS_PER_TIMEOUT = 30
MIN_PING_INTERVAL = 0.2
DEFAULT_PING_INTERVAL = DEFAULT_TIMEOUT / PINGS_PER_TIMEOUT  # before a node has said


def ping_interval(timeout: float) -> float:
    """How often an idle client pings a node whose eviction timeout is `timeout`."""
    if timeout <= 0:
        return DEFAULT_PING_INTERVAL  # nothing to keep alive for; pings stay cheap
    return max(MIN_PING_INTERVAL, timeout / PINGS_PER_TIMEOUT)


def check_interval(timeout: float) -> float:
    """How often the node looks for silent clients: late by at most a tenth of the timeout."""
    return max(MIN_PING_INTERVAL, timeout / 10) if timeout > 0 else 5.0


@dataclass
class PingEvictor:
    """When each client was last heard from, and which of them to evict. Times are the
    caller's (a monotonic clock); nothing here reads a clock."""

    timeout: float = DEFAULT_TIMEOUT
    heard: dict[str, float] = field(default_factory=dict)
    last_check: float | None = None

    def node_was_away(self, now: float) -> bool:
        """Call at every check: whether the node itself missed half a timeout or more since
        the last one, so that what it did not hear says nothing of its clients."""
        last, self.last_check = self.last_check, now
        if last is None or self.timeout <= 0:
            return False
        return now - last >= max(self.timeout / 2, 2 * check_interval(self.timeout))

    def heard_from(self, client: str, now: float) -> None:
        self.heard[client] = now

    def set_timeout(self, timeout: float) -> None:
        if not math.isfinite(timeout) or timeout < 0:
            raise ValueError(f"eviction timeout must be 0 (off) or more, not {timeout:g}")
        self.timeout = timeout

    def silent_for(self, client: str, now: float, since: float) -> float:
        """Seconds since the client was last heard, counting from `since` at the latest
        (the moment the target started serving it)."""
        return now - max(self.heard.get(client, since), since)

    def expired(self, clients: Iterable[str], now: float, since: float) -> list[str]:
        """The clients (of those with state on a target serving since `since`) to evict."""
        if self.timeout <= 0:
            return []
        return [c for c in clients if self.silent_for(c, now, since) > self.timeout]

    def prune(self, now: float) -> int:
        """Forget clients silent for longer than the timeout (every one with state is
        evicted by then; the rest, clients that closed, would only pile up); how many."""
        if self.timeout <= 0:
            return 0
        old = [c for c, t in self.heard.items() if now - t > self.timeout]
        for c in old:
            del self.heard[c]
        return len(old)

    def forget(self, client: str) -> None:
        """The client has no state left anywhere on the node (evicted everywhere)."""
        self.heard.pop(client, None)
