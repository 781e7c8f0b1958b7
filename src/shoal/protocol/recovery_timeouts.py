"""Every timeout of the recovery path, in one place, sans I/O (time is an argument).

Two clocks bound a recovery, and they must agree or a client loses what it had to replay:

- the target's window (server): soft and hard limits, shrunk by IR. A client still replaying
  is evicted only at the hard limit, so that is the deadline a replaying client works to;
- the client's RPC timeouts: replays and the final ping ("replay_done") wait for their reply
  as long as AT says a request takes, and are resent (after a reconnect) when none came.

Lustre's replay-single 62 is what happens when they disagree: a replay's reply was lost, the
client waited max(AT, at_max) = 30 s for it, as long as the whole hard window, and its resend
came after the window had closed and evicted it with all it had to replay. So here:

- a replay or final ping waits at most `replay_timeout()`: AT's request timeout, but never
  more than half of what is left of the window, so a resend still lands inside it;
- a request the window holds (a replay waiting for its turn, a final ping, an ordinary
  request waiting for the end) is kept alive by early replies the target sends every
  EARLY_PERIOD, each stretching the client's deadline by EARLY_PERIOD.
  A held request therefore never times out while it is held, and once its reply is sent (and
  perhaps lost) the client notices within its own timeout, not at the window's end.

`window_deadline()` is what the target tells a connecting client about its window: the seconds
left to the hard limit (a connect reply carries them, so no clocks need to agree).
"""

from __future__ import annotations

# Window defaults, in seconds. Lustre's soft/hard are 300/900 s; Shoal recovers in seconds.
# SOFT_TIMEOUT is the window without IR: a client that is not told where the target went finds
# it through its own request timeout (AT: at_min 1 s plus margin) and connect attempts round
# robin over the failover NIDs (2 s each), about 10 s in all.
SOFT_TIMEOUT = 10.0
# With IR the MGS tells every client at once (budget 0.3 s) and reports dead clients, so the
# window normally closes long before soft expiry; soft expiry only waits for a client that
# is silent yet not known dead. Lustre shrinks the window to soft * ir_factor / 10 (factor
# 1-10, default 5) with a floor; here 10 s * 5 / 10 = 5 s, floor 2 s (a loaded client that
# is alive still answers IR within a couple of seconds).
IR_FACTOR = 5
IR_MIN_SOFT = 2.0
# IR reaches only the clients connected to the MGS. A client whose server falls silent (a power
# cut, a hang: no socket closes) while it is idle notices at its next ping, every ping
# interval, and then spends up to REACH_MARGIN more: the ping's timeout (2 s), the pinger's
# next look (1 s) and a connect to the silent NID before the backup's (2 s). A window that
# cannot count on IR lasts at least that long (11 s with pings every 5 s), or it evicts such a
# client with what it had to replay (Lustre's windows, 300 s against 25 s pings, are long
# enough by far).
REACH_MARGIN = 6.0
# The hard limit bounds a connected client that stalls mid-replay and holds the queue; 3x
# the soft window, as Lustre's 900/300.
HARD_TIMEOUT = 30.0

# How often a recovering target stretches the requests it holds (and by how much each time):
# often enough that a loop stall of a second does not look like a lost reply to a client whose
# timeout is at its floor.
EARLY_PERIOD = 1.0
# A replay's timeout never drops below this, even at the very end of a window: below it a
# loaded machine would time out replies that are merely late.
MIN_REPLAY_TIMEOUT = 0.5


def reach(ping_every: float) -> float:
    """How long a live client may take to notice on its own that its server fell silent:
    its next ping, then REACH_MARGIN to time it out and find the backup."""
    return ping_every + REACH_MARGIN


def soft_window(soft: float, ir: bool, ir_factor: int = IR_FACTOR,
                reach_s: float = 0.0) -> float:
    """The soft window actually used. With IR: Lustre's shrink, max(floor, soft * ir_factor
    / 10). Without it (IR off, or the MGS not yet known to every client): at least `reach_s`,
    the time an idle client takes to notice by itself."""
    if not ir:
        return max(soft, reach_s)
    return min(soft, max(IR_MIN_SOFT, soft * ir_factor / 10))


def ir_ready(mgs_up_since: float | None, now: float, reach_s: float) -> bool:
    """Whether an IR notice reaches every live client: the MGS has served in its place for
    `reach_s`, so every client has noticed a move of the MGS and reconnected to it (Lustre's
    MGS keeps IR in IR_STARTUP for its ir_timeout after a start). `mgs_up_since`: when the
    MGS last became UP (None: it is not UP)."""
    return mgs_up_since is not None and now - mgs_up_since >= reach_s


def window_deadline(hard_deadline: float, now: float) -> float:
    """Seconds left until the window's hard limit: what a connect reply tells the client."""
    return max(0.0, hard_deadline - now)


def replay_timeout(at_timeout: float, now: float, window_end: float | None) -> float:
    """How long a client waits for the reply to a replay or its final ping before it resends.

    `at_timeout` is the import's AT request timeout, `window_end` the window's hard limit on
    the client's clock (None: the server did not say, as an older one would not)."""
    if window_end is None:
        return max(MIN_REPLAY_TIMEOUT, at_timeout)
    return max(MIN_REPLAY_TIMEOUT, min(at_timeout, (window_end - now) / 2))


__all__ = ["EARLY_PERIOD", "HARD_TIMEOUT", "IR_FACTOR", "IR_MIN_SOFT", "MIN_REPLAY_TIMEOUT",
           "REACH_MARGIN", "SOFT_TIMEOUT", "ir_ready", "reach", "replay_timeout",
           "soft_window", "window_deadline"]
