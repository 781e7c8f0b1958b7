"""When a partner's silence is death: the partner watch's rule, apart from its sockets.

The watch pings each partner over one connection and notes every answer. That connection
alone is no proof of anything: after a link flaps, TCP's retransmission backoff can keep it
waiting for a second and more while the host is back and well. So once a partner has been
silent for PROBE_FROM s, the watch also pings it on fresh connections, a new one every
PROBE_EVERY s, each with its own short deadline. A fresh connection to a live host answers
in milliseconds; any answer ends the silence.

The partner is gone (to be fenced at once, if its leases went unrenewed as well) only when
it has been silent for SILENT_FENCE s *and* fresh probes have gone unanswered for
PROBE_WINDOW s without a break. The window is longer than a flap's down phase plus one
probe's deadline, so a link that comes back within it is heard; and the probing starts
PROBE_WINDOW before SILENT_FENCE, so a dead host is found gone no later than before.
"""

from __future__ import annotations

from dataclasses import dataclass

# A partner that has not answered for this long is silent: paused, cut off or without power,
# not merely busy (a live one answers within the watch's ping interval and a loop stall).
# Its lease runs out 1.33 s or more after it falls silent.
SILENT = 1.0
# Silent this long, with fresh probes unanswered for PROBE_WINDOW: gone. A pause of 1 s is
# silent for at most 1 s plus one ping interval.
SILENT_FENCE = 1.3
# A flap's link is down 0.5 s (workload/torture_rig.py); a fresh probe begun just before it
# fails FRESH_PROBE s later, so unanswered probes span at most 0.5 + FRESH_PROBE s.
PROBE_WINDOW = 0.8
PROBE_FROM = SILENT_FENCE - PROBE_WINDOW
PROBE_EVERY = 0.1  # seconds between fresh probes while silent
FRESH_PROBE = 0.25  # a fresh probe's deadline: a live host answers one in milliseconds
# Once found gone and dealt with (or refused by the store's evidence), a partner that stays
# silent for hours (powered off) is probed only this often
PROBE_SLOWLY = 0.5
# Leases unrenewed this long (with the silence) say the partner is cut off from the store too
UNRENEWED = 1.0


def unrenewed(ttl: float, left: list[float | None]) -> bool:
    """Whether leases of TTL `ttl` that read `left` (whole seconds, truncated, as etcd
    answers; None: gone) have all gone unrenewed for UNRENEWED s: each has less than
    ttl - UNRENEWED left, so reads at most ttl - UNRENEWED - 1. A gone lease says nothing
    (its keys are gone too: the takeover is under way)."""
    return bool(left) and all(x is not None and x <= ttl - UNRENEWED - 1 for x in left)


@dataclass
class Silence:
    """What the watch knows of one partner's silence (times: monotonic seconds)."""

    heard: float | None = None  # its last answer, on the watch's connection or a fresh one
    probing_since: float | None = None  # the first fresh probe sent since that answer
    last_probe: float | None = None

    def answered(self, now: float) -> None:
        self.heard = now if self.heard is None else max(self.heard, now)
        self.probing_since = None

    def silent_for(self, now: float) -> float:
        """0 until it has answered once: no evidence either way."""
        return 0.0 if self.heard is None else max(0.0, now - self.heard)

    def probe_due(self, now: float) -> bool:
        """Whether to send a fresh probe now."""
        silent = self.silent_for(now)
        if silent < PROBE_FROM:
            return False
        if self.last_probe is None or self.probing_since is None:
            return True
        every = PROBE_SLOWLY if silent >= SILENT_FENCE + PROBE_WINDOW else PROBE_EVERY
        return now - self.last_probe >= every

    def probed(self, now: float) -> None:
        self.last_probe = now
        if self.probing_since is None:
            self.probing_since = now

    def gone(self, now: float) -> bool:
        return (self.silent_for(now) >= SILENT_FENCE and self.probing_since is not None
                and now - self.probing_since >= PROBE_WINDOW)
