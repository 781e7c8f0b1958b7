"""What a simulated failover reports: the phases (named as `shoal bench failover` names
them, workload/failover_phases.py), counters, and per-client times for the timeline plot."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# the marks a failover passes, in order; each phase ends at its mark and starts at the
# previous one. detect_s .. notify_s are failover_phases.PHASES' names; the bench's
# recover_s (notice sent -> window closed) is reconnect_s + replay_s here, and resume_s
# (window closed -> the last client's first completed I/O) makes the phases add up to total_s
PHASES = ("detect_s", "fence_s", "take_s", "start_s", "notify_s", "reconnect_s", "replay_s",
          "resume_s")


@dataclass
class Marks:
    """Virtual times (seconds after the death) at which each phase ended."""

    detect: float = 0.0
    fenced: float = 0.0
    taken: float = 0.0
    started: float = 0.0
    notified: float = 0.0
    reconnected: float = 0.0  # the last live client's connect accepted
    recovered: float = 0.0  # the last window closed
    resumed: float = 0.0  # the last live client's first I/O on the new instance done


def tile(marks: Marks) -> dict[str, float]:
    """Per-phase seconds: each from the previous mark (or the latest one before it), so
    that they add up to the total. A mark past the end is cut there: the MGS may still be
    sending notices when the last client, which found the backup by its own timeout, is
    back (100,000 clients); `ir_fanout_s` in the JSON keeps the whole fan-out."""
    out: dict[str, float] = {}
    prev = 0.0
    seq = (marks.detect, marks.fenced, marks.taken, marks.started, marks.notified,
           marks.reconnected, marks.recovered, marks.resumed)
    for name, at in zip(PHASES, seq, strict=True):
        at = min(at, marks.resumed)
        out[name] = round(max(0.0, at - prev), 4)
        prev = max(prev, at)
    out["recover_s"] = round(out["reconnect_s"] + out["replay_s"], 4)
    return out


@dataclass
class Counters:
    replays: int = 0  # replays run by the new instance
    reconstructed: int = 0  # replays answered without running (already run)
    connects: int = 0  # connect attempts, all NIDs
    connect_timeouts: int = 0
    busy: int = 0  # connects refused with EBUSY
    evicted_live: int = 0  # live clients the window evicted
    lost_replays: int = 0  # acknowledged requests those evictions threw away
    dead_evicted: int = 0  # dead clients evicted (declared dead, or at soft expiry)
    soft_expired: bool = False
    hard_expired: bool = False


@dataclass
class RunResult:
    preset: str
    fault: str
    clients: int
    imports: int
    marks: Marks
    counters: Counters
    server_busy_s: float
    server_max_wait_s: float
    events: int
    wall_s: float
    connected_at: list[float] = field(default_factory=list, repr=False)
    replayed_at: list[float] = field(default_factory=list, repr=False)
    resumed_at: list[float] = field(default_factory=list, repr=False)
    converged: bool = True  # every live client resumed before the run was cut

    @property
    def phases(self) -> dict[str, float]:
        return tile(self.marks)

    @property
    def total_s(self) -> float:
        return round(self.marks.resumed, 4)

    def to_json(self) -> dict[str, Any]:
        c = self.counters
        return {"preset": self.preset, "fault": self.fault, "clients": self.clients,
                "imports": self.imports, "total_s": self.total_s,
                "converged": self.converged, **self.phases,
                "recovered_s": round(self.marks.recovered, 4),
                "ir_fanout_s": round(self.marks.notified - self.marks.started, 4),
                "replays": c.replays, "reconstructed": c.reconstructed,
                "connects": c.connects, "connect_timeouts": c.connect_timeouts,
                "busy": c.busy, "evicted_live": c.evicted_live,
                "lost_replays": c.lost_replays, "dead_evicted": c.dead_evicted,
                "soft_expired": c.soft_expired, "hard_expired": c.hard_expired,
                "server_busy_s": round(self.server_busy_s, 3),
                "server_max_wait_s": round(self.server_max_wait_s, 3),
                "events": self.events, "wall_s": round(self.wall_s, 2)}
