"""Adaptive timeouts (AT), as Lustre's ptlrpc estimates them; sans I/O (time is an argument).

An estimate remembers the worst value seen in each of AT_BINS bins, each covering
at_history / AT_BINS seconds; the estimate is the maximum over the bins still within
at_history, clamped to [at_min, at_max]. So one slow reply raises the timeout at once, and it
falls back only after at_history seconds without anything as slow (lustre/ptlrpc/client.c,
at_measured()).

The client keeps two estimates per import: the service time the server reports in each reply,
and the network latency it sees around it (now - sent - reported service). A request's
timeout is Lustre's at_est2timeout(service) = est + est/4 + pad, and its deadline is
sent + timeout + network latency. A server that is still busy with a request near its deadline
sends an early reply asking for at_extra + (time already waited) more seconds.

Defaults are for seconds, not Lustre's minutes (whose at_min 5 / at_max 600 / history 600
suit WAN-ish clusters of thousands of nodes with 300 s recovery windows):
- at_min 1 s: a loopback or LAN RPC is served in milliseconds, but on a shared 2-core machine
  a busy event loop or a group commit stalls replies for a large fraction of a second; a
  floor of 1 s (timeout >= 1 + 0.25 + pad) keeps those from looking like dead servers.
- at_max 30 s: no single Shoal operation (a forced commit of the uncommitted-bytes limit
  included) should take longer; past it the server is sick, and the health check calls a
  service unhealthy when a request waited longer than at_max.
- at_history 60 s: long enough to remember a burst of slow commits across the next few, short
  enough that a failover or a load spike stops inflating timeouts a minute later.
- at_early_margin 1 s, at_extra 3 s: early replies go out one second before a deadline and buy
  three more, so a request held through a sub-second recovery window needs one at most.
- timeout_pad 2 s: Lustre's constant "+ 5" in est + est/4 + 5, scaled down with the rest; it
  covers the reply's trip and scheduling delays on both ends when the estimate is tiny.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shoal.errors import InvalidArgument

AT_BINS = 4


@dataclass(frozen=True, slots=True)
class ATParams:
    at_min: float = 1.0
    at_max: float = 30.0  # 0 disables AT (as in Lustre): fixed timeouts are used instead
    at_history: float = 60.0
    at_early_margin: float = 1.0
    at_extra: float = 3.0
    timeout_pad: float = 2.0

    def __post_init__(self) -> None:
        if min(self.at_min, self.at_max, self.at_history, self.at_early_margin,
               self.at_extra, self.timeout_pad) < 0:
            raise InvalidArgument("adaptive timeout parameters must not be negative")
        if self.at_max and self.at_min > self.at_max:
            raise InvalidArgument(f"at_min {self.at_min} > at_max {self.at_max}")
        if self.at_history <= 0:
            raise InvalidArgument("at_history must be positive")

    @property
    def enabled(self) -> bool:
        return self.at_max > 0


@dataclass(slots=True)
class AdaptiveEstimate:
    """Lustre's struct adaptive_timeout."""

    history: float
    floor: float = 0.0
    ceiling: float = 0.0  # 0: no ceiling
    initial: float = 0.0
    bins: list[float] = field(default_factory=lambda: [0.0] * AT_BINS)
    binstart: float | None = None  # None: nothing measured yet, the estimate is `initial`
    current: float = 0.0
    worst: float = 0.0
    worst_time: float = 0.0

    def __post_init__(self) -> None:
        self.current = self._clamp(self.initial)

    @property
    def binlimit(self) -> float:
        return self.history / AT_BINS

    def _clamp(self, value: float) -> float:
        if self.ceiling:
            value = min(value, self.ceiling)
        return max(value, self.floor)

    def measured(self, now: float, value: float) -> float:
        """Take one sample; returns the new estimate."""
        if value <= 0:
            return self.current  # as Lustre: a 0 is no information (and never a timeout)
        if self.binstart is None:
            # the first sample replaces the initial guess instead of joining it
            self.bins = [value] + [0.0] * (AT_BINS - 1)
            self.binstart = now
            current = value
        else:
            shift = self._shift(now)
            if shift:
                self._age(shift)
            self.bins[0] = max(self.bins[0], value)
            current = max(self.bins)
        if value >= self.worst:
            self.worst, self.worst_time = value, now
        self.current = self._clamp(current)
        return self.current

    def _shift(self, now: float) -> int:
        assert self.binstart is not None
        # a clock that steps back keeps us in the current bin rather than rewriting history
        return max(0, int((now - self.binstart) // self.binlimit))

    def _age(self, shift: int) -> None:
        assert self.binstart is not None
        keep = self.bins[:max(0, AT_BINS - shift)]
        self.bins = [0.0] * (AT_BINS - len(keep)) + keep
        self.binstart += shift * self.binlimit

    def estimate(self, now: float) -> float:
        """The estimate at `now`. Unlike Lustre, bins age with time and not only when a new
        sample arrives, so a slow spell is forgotten after at_history even if no reply (no
        sample) has come since."""
        if self.binstart is None:
            return self.current
        shift = self._shift(now)
        if not shift:
            return self.current
        alive = self.bins[:max(0, AT_BINS - shift)]
        return self._clamp(max(alive, default=0.0))

    def render(self, name: str, now: float) -> str:
        """`<name> : cur X  worst Y (at T, 0d0h00m03s ago) b0 b1 b2 b3`, as Lustre prints it.

        Values are seconds with three decimals: Shoal's estimates are sub-second, and
        Lustre's whole seconds would print them all as 0 or 1."""
        bins = self._aged_bins(now)
        worst_at = int(self.worst_time)
        ago = _dhms(now - self.worst_time) if self.worst_time else _dhms(0)
        return (f"{name:<10} : cur {_s(self.estimate(now))}  worst {_s(self.worst)} "
                f"(at {worst_at}, {ago} ago) " + " ".join(_s(b) for b in bins))

    def _aged_bins(self, now: float) -> list[float]:
        if self.binstart is None:
            return list(self.bins)
        shift = min(self._shift(now), AT_BINS)
        return [0.0] * shift + self.bins[:AT_BINS - shift]


def _s(value: float) -> str:
    return f"{value:6.3f}"


def _dhms(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 86400}d{s % 86400 // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


@dataclass(slots=True)
class ImportTimeouts:
    """One import's AT state: service estimate, network latency and the last reply."""

    params: ATParams = field(default_factory=ATParams)
    service: AdaptiveEstimate = field(init=False)
    network: AdaptiveEstimate = field(init=False)
    last_reply: float | None = None
    timeouts: int = 0  # attempts that got no reply in time
    longest_wait: float = 0.0  # the longest any of those attempts was given

    def __post_init__(self) -> None:
        p = self.params
        self.service = AdaptiveEstimate(p.at_history, floor=p.at_min, ceiling=p.at_max,
                                        initial=p.at_min)
        # the network estimate has no floor: at_min and the pad already cover small values
        self.network = AdaptiveEstimate(p.at_history, ceiling=p.at_max)

    def reply_received(self, now: float, sent: float, service_estimate: float) -> None:
        """A reply to a request sent at `sent` reported `service_estimate` (0: none).

        Callers skip replies to resends and replays: like Lustre's server, which does not
        measure those, their times say nothing about normal service."""
        self.last_reply = now
        if service_estimate > 0:
            self.service.measured(now, service_estimate)
        self.network.measured(now, now - sent - service_estimate)

    def timed_out(self, waited: float) -> None:
        """An attempt given `waited` seconds got no reply: counted, never measured. A
        timeout says a request or its reply was lost (or the server is gone), not how long
        service takes, so it leaves both estimates alone (Lustre measures only replies)."""
        self.timeouts += 1
        self.longest_wait = max(self.longest_wait, waited)

    def service_timeout(self, now: float) -> float:
        """Lustre's at_est2timeout: est + est/4 + pad."""
        est = self.service.estimate(now)
        return est + est / 4 + self.params.timeout_pad

    def request_timeout(self, now: float) -> float:
        """How long to wait for a reply to a request sent now (deadline = now + this)."""
        return self.service_timeout(now) + self.network.estimate(now)

    def attempt_timeout(self, now: float, fixed: float | None = None) -> float:
        """How long an attempt sent at `now` waits for its reply: a first send and every
        resend alike (`fixed`: the client's fixed request_timeout, AT off).

        Not longer for a request that timed out already: its loss is no news about the
        server's service time, so the estimate that made the first wait right makes the
        resend's right too, and a second loss costs one more such wait instead of a doubled
        one (3 + 6.5 + 13 s for three losses in a row before). As in Lustre, a server that
        is slow says so itself: its reported estimates raise this timeout, and a request it
        holds is kept alive by early replies, not by a client guessing longer waits."""
        return fixed if fixed is not None else self.request_timeout(now)

    def render(self, now: float) -> str:
        """The `timeouts` parameter, as `lctl get_param osc.*.timeouts` prints it."""
        lines = []
        if self.last_reply is not None:
            lines.append(f"{'last reply':<10} : {int(self.last_reply)}, "
                         f"{_dhms(now - self.last_reply)} ago")
        else:
            lines.append(f"{'last reply':<10} : 0, never")
        lines.append(self.network.render("network", now))
        lines.append(self.service.render("service", now))
        return "\n".join(lines)


def early_reply_due(now: float, deadline: float, params: ATParams) -> bool:
    """Server side: should a request still being served get an early reply now?"""
    return params.enabled and deadline - now <= params.at_early_margin


def early_reply_extra(now: float, arrived: float, params: ATParams) -> float:
    """Server side: how many more seconds an early reply asks the client to wait."""
    return params.at_extra + max(0.0, now - arrived)


def shortest_timeout(params: ATParams) -> float:
    """The least a client using these parameters waits for a reply (service and network
    estimates at their floors): a server that knows no client's timeout plans with this."""
    return params.at_min + params.at_min / 4 + params.timeout_pad


@dataclass(slots=True)
class EarlyReplies:
    """Server side: the early replies that keep one request alive while it is served.

    A client resends a request whose reply is late, so it must be told when one is merely
    slow (a forced commit, a read from a slow disk): resends cannot make that faster, and
    since a timeout no longer lengthens the resend's wait, only early replies stop a slow
    service from being resent for ever (Lustre's ptlrpc_at_send_early_reply). The server
    does not know the client's deadline; it plans with the earliest one possible, arrival +
    shortest_timeout(), and moves it by each early reply's extra, as the client does. It
    never stretches a request past at_max from arrival: that long, the service is sick
    (the health check says so) and the client's own timeout should end the wait."""

    arrived: float
    params: ATParams = field(default_factory=ATParams)
    deadline: float = field(init=False)

    def __post_init__(self) -> None:
        self.deadline = self.arrived + shortest_timeout(self.params)

    @property
    def next_check(self) -> float | None:
        """When an early reply may be due (None: never again)."""
        if not self.params.enabled or self.deadline - self.arrived >= self.params.at_max:
            return None
        return self.deadline - self.params.at_early_margin

    def due(self, now: float) -> float:
        """The extra seconds an early reply sent now asks for; 0: none is due."""
        if self.next_check is None or not early_reply_due(now, self.deadline, self.params):
            return 0.0
        extra = early_reply_extra(now, self.arrived, self.params)
        extra = min(extra, self.arrived + self.params.at_max - self.deadline)
        self.deadline += extra
        return extra


__all__ = ["AT_BINS", "ATParams", "AdaptiveEstimate", "EarlyReplies", "ImportTimeouts",
           "early_reply_due", "early_reply_extra", "shortest_timeout"]
