"""The client import's state machine: one client's connection to one target, sans I/O.

Rules of this file (the h11 `_state.py` discipline):

- Everything that changes an import's state lives here. client/imports.py sends, waits and
  reads clocks; it reports what happened as events (method calls) and acts on the state they
  return. It never assigns a state itself.
- The transitions are the TRANSITIONS table below: TRANSITIONS[state][event] -> next state.
  An event with no entry for the current state is a caller bug and raises ImportStateError;
  nothing is silently ignored. The table is the spec: `describe_transitions()` prints it.
- Time always comes in as an argument (`now`, in seconds); nothing here reads a clock, sleeps,
  or touches a socket, so the same code runs on sockets, under a fake clock and in a simulator.

Theory of operation (Lustre's ptlrpc import, lustre/ptlrpc/import.c):

    NEW --connect_start--> CONNECTING --connected--> FULL              (first connect)
                                      --connected_reconnect--> RECOVER (same server: resend)
                                      --connected_recovering--> REPLAY (server restarted)
    REPLAY --replay_done--> REPLAY_LOCKS --locks_done--> REPLAY_WAIT
           --recovery_done--> RECOVER --resend_done--> FULL
    FULL --disconnect--> DISCONN --connect_start--> CONNECTING ...
    any live state --evicted--> EVICTED --connect_start--> CONNECTING  (as a new client)

`connected()` turns the server's connect reply into one of the three `connected*` events: a
recovering server, or a new server epoch while requests wait for replay, means REPLAY; an
initial connect to a server that is not recovering means FULL; any other reconnect means
RECOVER (resend what had no reply, then FULL).

Failover NIDs are chosen round robin as Lustre's import_select_connection does: the first NID
(in list order) not tried since the last successful connect, else the least recently tried.
Attempt order is kept as sequence numbers, not times, so a fake clock that stands still
cannot make two attempts look simultaneous.

The replay list holds every request that got a transno above last_committed, ordered by
(transno, xid), and is pruned as last_committed advances (invariant 1). Within one recovery
each entry is replayed at most once, in order; a new recovery (another failover during the
first) starts again from the front, since the new server may have lost the earlier replays.
"""

from __future__ import annotations

import bisect
import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from shoal.errors import ProtocolError
from shoal.protocol.messages import Request

HISTORY_LEN = 16  # Lustre keeps the last 16 state changes (IMP_STATE_HIST_LEN)


class ImportStateError(ProtocolError):
    """An event that has no transition from the import's current state."""


class ImportState(enum.Enum):
    NEW = "NEW"
    DISCONN = "DISCONN"
    CONNECTING = "CONNECTING"
    REPLAY = "REPLAY"
    REPLAY_LOCKS = "REPLAY_LOCKS"
    REPLAY_WAIT = "REPLAY_WAIT"
    RECOVER = "RECOVER"
    FULL = "FULL"
    EVICTED = "EVICTED"
    CLOSED = "CLOSED"
    IDLE = "IDLE"


class Event(enum.Enum):
    CONNECT_START = "connect_start"
    CONNECTED = "connected"  # initial connect, server not recovering
    CONNECTED_RECONNECT = "connected_reconnect"  # reconnect, nothing to replay
    CONNECTED_RECOVERING = "connected_recovering"  # server recovering, or new epoch + replays
    CONNECT_FAILED = "connect_failed"
    REPLAY_DONE = "replay_done"
    LOCKS_DONE = "locks_done"
    RECOVERY_DONE = "recovery_done"  # the final ping (replay_done op) was answered
    RESEND_DONE = "resend_done"
    DISCONNECT = "disconnect"
    EVICTED = "evicted"
    CLOSE = "close"
    IDLE = "idle"


S, E = ImportState, Event
_LIVE = {E.DISCONNECT: S.DISCONN, E.EVICTED: S.EVICTED, E.CLOSE: S.CLOSED}

TRANSITIONS: dict[ImportState, dict[Event, ImportState]] = {
    S.NEW: {E.CONNECT_START: S.CONNECTING, E.CLOSE: S.CLOSED},
    S.DISCONN: {E.CONNECT_START: S.CONNECTING, E.EVICTED: S.EVICTED, E.CLOSE: S.CLOSED},
    S.CONNECTING: {E.CONNECTED: S.FULL, E.CONNECTED_RECONNECT: S.RECOVER,
                   E.CONNECTED_RECOVERING: S.REPLAY, E.CONNECT_FAILED: S.DISCONN, **_LIVE},
    S.REPLAY: {E.REPLAY_DONE: S.REPLAY_LOCKS, **_LIVE},
    S.REPLAY_LOCKS: {E.LOCKS_DONE: S.REPLAY_WAIT, **_LIVE},
    S.REPLAY_WAIT: {E.RECOVERY_DONE: S.RECOVER, **_LIVE},
    S.RECOVER: {E.RESEND_DONE: S.FULL, **_LIVE},
    S.FULL: {E.IDLE: S.IDLE, **_LIVE},
    S.EVICTED: {E.CONNECT_START: S.CONNECTING, E.CLOSE: S.CLOSED},
    S.IDLE: {E.CONNECT_START: S.CONNECTING, E.EVICTED: S.EVICTED, E.CLOSE: S.CLOSED},
    S.CLOSED: {},
}

# states in which the import holds a live connection to a server (a DISCONNECT is possible)
CONNECTED_STATES = frozenset({S.CONNECTING, S.REPLAY, S.REPLAY_LOCKS, S.REPLAY_WAIT,
                              S.RECOVER, S.FULL})

# Lustre's MSG_CONNECT_* flags: what the client asks, and what the server answered
FLAG_INITIAL = "initial"
FLAG_RECONNECT = "reconnect"
FLAG_RECOVERING = "recovering"


def describe_transitions() -> str:
    """The table as text, one `STATE --event--> STATE` per line (docs and diagrams)."""
    return "\n".join(f"{s.value} --{e.value}--> {t.value}"
                     for s, row in TRANSITIONS.items() for e, t in row.items())


@dataclass(frozen=True, slots=True)
class StateChange:
    time: float
    state: ImportState


@dataclass(slots=True)
class FailoverNid:
    nid: str
    attempt_seq: int = 0  # order of the last connect attempt; 0: never tried
    last_attempt: float = 0.0  # when (for display only: ordering uses attempt_seq)
    attempts: int = 0


@dataclass(order=True, slots=True)
class ReplayEntry:
    transno: int
    xid: int
    request: Request = field(compare=False)
    nbytes: int = field(compare=False, default=0)
    pre_versions: list[int] = field(compare=False, default_factory=list)


class ImportStateMachine:
    """State, failover NIDs, connect flags, replay list and resend set of one import."""

    def __init__(self, target: str, nids: Sequence[str], now: float) -> None:
        if not nids:
            raise ImportStateError(f"{target}: an import needs at least one NID")
        self.target = target
        self.state = S.NEW
        self.history: deque[StateChange] = deque([StateChange(now, S.NEW)], maxlen=HISTORY_LEN)
        self.failover: list[FailoverNid] = [FailoverNid(n) for n in dict.fromkeys(nids)]
        self.current = 0
        self.connect_attempts = 0
        self.conn_gen = 0  # bumped at every successful connect
        self.last_success: float | None = None
        self.epoch = 0  # the server epoch last connected to; 0: none (or evicted since)
        self.server_node = ""
        self.connect_flags: frozenset[str] = frozenset()  # of the last successful connect
        self.last_committed = 0
        self.replay: list[ReplayEntry] = []
        self.uncommitted_bytes = 0
        self.inflight: set[int] = set()  # xids sent on the current connection
        self.resend: set[int] = set()  # xids whose reply never came: resend after reconnect
        self.recoveries = 0
        self.replays_sent = 0
        self.evictions = 0
        self._seq = 0
        self._success_seq = 0
        self._connected_once = False
        self._replay_cursor: tuple[int, int] = (-1, -1)

    # -- the table -----------------------------------------------------------------------
    def can(self, event: Event) -> bool:
        return event in TRANSITIONS[self.state]

    def _fire(self, event: Event, now: float) -> ImportState:
        try:
            new = TRANSITIONS[self.state][event]
        except KeyError:
            raise ImportStateError(
                f"{self.target}: can't handle event {event.value} in state {self.state.value}"
            ) from None
        if new is not self.state:
            self.state = new
            self.history.append(StateChange(now, new))
        return new

    # -- NIDs ----------------------------------------------------------------------------
    @property
    def nids(self) -> list[str]:
        return [f.nid for f in self.failover]

    @property
    def nid(self) -> str:
        return self.failover[self.current].nid

    def _select(self) -> int:
        for i, f in enumerate(self.failover):
            if f.attempt_seq <= self._success_seq:
                return i
        return min(range(len(self.failover)), key=lambda i: self.failover[i].attempt_seq)

    def _fresh(self, i: int) -> bool:
        return self.failover[i].attempt_seq <= self._success_seq

    def _mark_tried(self, now: float) -> None:
        self._seq += 1
        f = self.failover[self.current]
        f.attempt_seq, f.last_attempt = self._seq, now

    def move_to(self, nid: str) -> None:
        """Point the next connect at `nid` (imperative recovery); an unknown NID is added."""
        if nid not in self.nids:
            self.failover.append(FailoverNid(nid))
        self.current = self.nids.index(nid)

    # -- connecting ----------------------------------------------------------------------
    @property
    def request_flags(self) -> list[str]:
        """MSG_CONNECT flags of the next connect request."""
        return [FLAG_RECONNECT if self._connected_once else FLAG_INITIAL]

    def connect_start(self, now: float) -> str:
        """Begin a connect attempt; returns the NID to send it to."""
        self._fire(E.CONNECT_START, now)
        self.connect_attempts += 1
        self.failover[self.current].attempts += 1
        self._mark_tried(now)
        return self.nid

    def connect_args(self) -> dict[str, Any]:
        return {"target": self.target, "flags": self.request_flags, "epoch": self.epoch}

    def connected(self, now: float, *, epoch: int, last_committed: int, recovering: bool,
                  node: str = "") -> ImportState:
        """The server accepted the connect; returns FULL, RECOVER or REPLAY."""
        if self.state is not S.CONNECTING:
            # checked before classifying, so the error names `connected`, not a variant
            self._fire(E.CONNECTED, now)
        initial = not self._connected_once
        new_epoch = self.epoch != 0 and epoch != self.epoch
        if recovering or (new_epoch and self.replay):
            event = E.CONNECTED_RECOVERING
        elif initial:
            event = E.CONNECTED
        else:
            event = E.CONNECTED_RECONNECT
        flags = {FLAG_INITIAL if initial else FLAG_RECONNECT}
        if recovering:
            flags.add(FLAG_RECOVERING)
        self.connect_flags = frozenset(flags)
        self.epoch = epoch
        self.server_node = node
        self._connected_once = True
        self._success_seq = self.failover[self.current].attempt_seq
        self.last_success = now
        self.conn_gen += 1
        self.observe_committed(last_committed)
        if event is E.CONNECTED_RECOVERING:
            self.recoveries += 1
            self._replay_cursor = (-1, -1)
        return self._fire(event, now)

    def forgotten(self, reconnect: object) -> bool:
        """Whether a connect reply (its `reconnect`: the server had a record of this client)
        says the server lost what this client held there, although the client had connected
        before: an eviction, whatever else the reply says. Its last_committed counts other
        clients' changes and must not drop this one's replays as committed (Lustre: "evicting
        (reconnect/recover flags not set)")."""
        return self._connected_once and reconnect is False

    def connect_failed(self, now: float, *, retry_same: bool = False) -> bool:
        """The attempt failed; pick the next NID (or keep this one: EBUSY). Returns whether
        that NID is fresh (not tried since the last success): if not, back off first."""
        self._fire(E.CONNECT_FAILED, now)
        if retry_same:
            return False
        self.current = self._select()
        return self._fresh(self.current)

    def disconnect(self, now: float, *, retry_same: bool = False) -> bool:
        """The connection failed (timeout, lost socket, ENODEV, IR): reconnect elsewhere first.

        The failed NID counts as tried, so round robin moves past it; with retry_same (the
        server is there but does not know this connection: ENOTCONN) it is tried again at
        once. Returns whether the next NID may be tried without backing off."""
        self._fire(E.DISCONNECT, now)
        self.resend |= self.inflight
        self.inflight.clear()
        if retry_same:
            return True
        self._mark_tried(now)
        self.current = self._select()
        return self._fresh(self.current)

    def replay_done(self, now: float) -> None:
        self._fire(E.REPLAY_DONE, now)

    def locks_done(self, now: float) -> None:
        self._fire(E.LOCKS_DONE, now)

    def recovery_done(self, now: float) -> None:
        self._fire(E.RECOVERY_DONE, now)

    def resend_done(self, now: float) -> None:
        self._fire(E.RESEND_DONE, now)

    def evicted(self, now: float) -> list[ReplayEntry]:
        """The server dropped this client: forget everything it held for us.

        Returns the replay entries that are lost; the next connect is an initial one."""
        self._fire(E.EVICTED, now)
        dropped, self.replay = self.replay, []
        self.uncommitted_bytes = 0
        self.inflight.clear()
        self.resend.clear()
        self.epoch = 0
        self._connected_once = False
        self.evictions += 1
        return dropped

    def idle(self, now: float) -> None:
        self._fire(E.IDLE, now)

    def close(self, now: float) -> None:
        self._fire(E.CLOSE, now)

    # -- requests and the replay list ----------------------------------------------------
    def sent(self, xid: int) -> None:
        self.inflight.add(xid)

    def lost(self, xid: int) -> None:
        """This request's reply will not come on the connection it was sent on."""
        self.inflight.discard(xid)
        self.resend.add(xid)

    def must_resend(self, xid: int) -> bool:
        return xid in self.resend

    def finished(self, xid: int) -> None:
        """The request got its reply, or its caller gave up."""
        self.inflight.discard(xid)
        self.resend.discard(xid)

    def observe_committed(self, last_committed: int) -> int:
        """A reply's last_committed: drop what it covers. Returns the bytes freed."""
        if last_committed <= self.last_committed:
            return 0
        self.last_committed = last_committed
        cut = bisect.bisect_right(self.replay, last_committed, key=lambda e: e.transno)
        if not cut:
            return 0
        freed = sum(e.nbytes for e in self.replay[:cut])
        del self.replay[:cut]
        self.uncommitted_bytes -= freed
        return freed

    def record(self, request: Request, *, transno: int, last_committed: int, nbytes: int = 0,
               pre_versions: Sequence[int] = ()) -> bool:
        """A reply came for `request`. Returns whether it went on the replay list."""
        self.finished(request.xid)
        self.observe_committed(last_committed)
        if transno <= self.last_committed or self.state is S.EVICTED:
            return False
        entry = ReplayEntry(transno, request.xid, request, nbytes, list(pre_versions))
        i = bisect.bisect_left(self.replay, entry)
        if i < len(self.replay) and self.replay[i] == entry:
            return False  # a duplicate reply: already held
        self.replay.insert(i, entry)
        self.uncommitted_bytes += nbytes
        return True

    def next_replay(self) -> ReplayEntry | None:
        """The next entry to replay in this recovery, or None when all were sent."""
        nxt = self.next_replays(1)
        return nxt[0] if nxt else None

    def next_replays(self, n: int, after: tuple[int, int] | None = None) -> list[ReplayEntry]:
        """Up to `n` entries to replay next in this recovery, in order: after the last one
        replayed, or after `after` (transno, xid), the last one already sent."""
        if self.state is not S.REPLAY or n <= 0:
            return []
        i = bisect.bisect_right(self.replay, max(after or self._replay_cursor,
                                                 self._replay_cursor),
                                key=lambda e: (e.transno, e.xid))
        return self.replay[i:i + n]

    @property
    def last_replayed(self) -> int:
        """The transno of the last entry replayed in the current (or last) recovery."""
        return max(self._replay_cursor[0], 0)

    def replayed(self, entry: ReplayEntry) -> None:
        """`entry` was replayed (its reply came); never offer it again in this recovery."""
        key = (entry.transno, entry.xid)
        if self.state is not S.REPLAY or key <= self._replay_cursor:
            raise ImportStateError(f"{self.target}: replay of transno {entry.transno:#x} "
                                   f"out of order or twice in state {self.state.value}")
        self._replay_cursor = key
        self.replays_sent += 1
