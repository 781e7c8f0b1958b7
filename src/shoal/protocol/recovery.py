"""Server recovery, sans I/O: the window a restarted target keeps open for its known clients,
the replay queue that runs their uncommitted requests in transno order, and who is evicted.

Rules of this file (the h11 `_state.py` discipline):

- Everything that decides a client's recovery state, the order of replays and the end of the
  window lives here. target/recovery.py runs requests, keeps timers and answers clients; it
  reports what happened as events (method calls) and carries out the actions they return
  (recovery_actions.py); recovery_status.py renders what get_param shows.
- Per-client transitions are the CLIENT_TRANSITIONS table: CLIENT_TRANSITIONS[state][event]
  -> next state. Which events the window takes in each of its states is WINDOW_EVENTS. An
  event with no entry is a caller bug (or a client breaking the protocol) and raises
  RecoveryProtocolError, before anything changes.
- Time comes in as arguments (`now`, seconds on one monotonic clock); nothing here reads a
  clock, sleeps or touches a socket.

Theory of operation (Lustre's ldlm/ldlm_lib.c: target_handle_connect, check_for_next_transno,
target_recovery_overseer):

    known client:  AWAITED --connect--> REPLAYING --replay_done--> DONE
                   any but EVICTED --dead | replay failed | expiry | abort--> EVICTED

The known clients are the slots of last_rcvd: exactly the clients that may hold replies whose
transno the target has lost. Until every one of them is DONE or EVICTED, new clients are
refused with EBUSY and every ordinary request waits, so nothing new can run on a namespace
that still misses acknowledged changes.

Replays run one at a time in transno order across all clients. The lowest queued replay runs
when it is the next transno (last run + 1), or when every client still able to send one
(AWAITED or REPLAYING) has one queued: a client replays its own list in order, one request
at a time, so once each has shown its next, the lowest of them is the lowest there will ever
be, and the gap in front of it is a transaction whose reply was lost or whose client is gone
(Lustre: "waking for gap in transno"). A client whose next replay is missing therefore holds
the queue until it sends it, says replay_done, or is evicted; that is the price of strict
order, and soft expiry, the MGS (client_dead) and hard expiry bound it. A replay run across a
gap is protected by its pre-operation versions (VBR): if an object it touches has moved, the
replay fails and that client alone is evicted while the others carry on.

Window: it opens when the target starts (Lustre waits for a first reconnect; a failover
wants a bound even if no client ever comes) and ends when no known client is outstanding.
At soft expiry clients that never reconnected are evicted; connected ones go on. Each
reconnect keeps the soft deadline at least soft/2 ahead (clients still arriving: stragglers
may follow), never past the hard deadline. At hard expiry, or an admin abort, every client
not DONE is evicted and the window closes at once.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Mapping
from dataclasses import dataclass

from shoal.errors import Busy, Evicted, InvalidArgument, ProtocolError
from shoal.protocol.recovery_actions import (
    Accept,
    Action,
    Complete,
    Evict,
    Execute,
    Reconstruct,
    Refuse,
)
from shoal.protocol.recovery_status import RecoveryStatus, render_status
from shoal.protocol.recovery_timeouts import HARD_TIMEOUT, IR_FACTOR, SOFT_TIMEOUT, soft_window
from shoal.protocol.transno import epoch_of, seq_of


class RecoveryProtocolError(ProtocolError):
    """An event that has no transition from the current state; nothing was changed."""


class Window(enum.Enum):
    RECOVERING = "RECOVERING"
    COMPLETE = "COMPLETE"


class ClientState(enum.Enum):
    AWAITED = "AWAITED"  # in last_rcvd, not reconnected yet
    REPLAYING = "REPLAYING"  # reconnected, sending its replays (Lustre: req_replay)
    DONE = "DONE"  # sent replay_done: waits for the window to close (Lustre: completed)
    EVICTED = "EVICTED"


class Event(enum.Enum):
    CONNECT = "connect"  # a reconnect of a known client
    NEW_EXPORT = "new_export"  # a known client connects as a new one: its old state is void
    REPLAY = "replay"  # a replay to queue
    REPLAY_AGAIN = "replay_again"  # a replay already run or committed: answer, don't order
    REPLAY_DONE = "replay_done"  # the client's final ping
    REPLAY_FINISHED = "replay_finished"  # the target ran the released replay
    REPLAY_FAILED = "replay_failed"  # ... and it failed (VBR), or came out of order
    EVICT = "evict"  # the target evicts the client for its own reason
    DEAD = "dead"  # the MGS says the client is dead
    SOFT_EXPIRY = "soft_expiry"
    HARD_EXPIRY = "hard_expiry"
    ABORT = "abort"
    TICK = "tick"


_A, _R, _D, _E = ClientState.AWAITED, ClientState.REPLAYING, ClientState.DONE, ClientState.EVICTED
_GONE = {Event.NEW_EXPORT: _E, Event.EVICT: _E, Event.HARD_EXPIRY: _E, Event.ABORT: _E}

CLIENT_TRANSITIONS: dict[ClientState, dict[Event, ClientState]] = {
    # only a client that has not reconnected can be declared dead: one that did is alive
    _A: {Event.CONNECT: _R, Event.SOFT_EXPIRY: _E, Event.DEAD: _E, **_GONE},
    _R: {Event.CONNECT: _R, Event.REPLAY: _R, Event.REPLAY_AGAIN: _R, Event.REPLAY_DONE: _D,
         Event.REPLAY_FINISHED: _R, Event.REPLAY_FAILED: _E, Event.SOFT_EXPIRY: _R, **_GONE},
    # a DONE client may still have replays queued if it pipelined them before its final ping
    _D: {Event.CONNECT: _D, Event.REPLAY_AGAIN: _D, Event.REPLAY_DONE: _D,
         Event.REPLAY_FINISHED: _D, Event.REPLAY_FAILED: _E, Event.SOFT_EXPIRY: _D,
         Event.HARD_EXPIRY: _D, Event.ABORT: _D, Event.NEW_EXPORT: _E, Event.EVICT: _E},
    # a replay may finish after its client was evicted (it was already running)
    _E: {Event.REPLAY_FINISHED: _E, Event.REPLAY_FAILED: _E, Event.SOFT_EXPIRY: _E,
         Event.HARD_EXPIRY: _E, Event.ABORT: _E, Event.DEAD: _E, Event.EVICT: _E},
}

_OUTSTANDING = (ClientState.AWAITED, ClientState.REPLAYING)
_ALL = frozenset(Event)
WINDOW_EVENTS: dict[Window, frozenset[Event]] = {
    Window.RECOVERING: _ALL,
    # after the window: connects (fresh exports, refusing the evicted), late evictions, and
    # timer or admin events that arrive after the end and do nothing
    Window.COMPLETE: frozenset({Event.CONNECT, Event.NEW_EXPORT, Event.EVICT, Event.DEAD,
                                Event.TICK, Event.ABORT}),
}


@dataclass(slots=True)
class _Client:
    state: ClientState
    last_transno: int  # from last_rcvd
    queued: int = 0


class ServerRecovery:
    """The recovery window of one target: feed it events, carry out the actions it returns."""

    def __init__(self, target: str, clients: Mapping[str, int], last_committed: int,
                 now: float, *, wall_start: float = 0.0, soft: float = SOFT_TIMEOUT,
                 hard: float = HARD_TIMEOUT, ir: bool = True, ir_factor: int = IR_FACTOR,
                 reach_s: float = 0.0) -> None:
        """`clients`: last_rcvd's slots (uuid -> last transno); `now` on the caller's
        monotonic clock, `wall_start` the same instant in Unix time (for recovery_status).
        `ir`: every live client is told of the move (IR on, the MGS settled); without it
        the window waits `reach_s` at least, for idle clients to notice on their own
        (protocol/recovery_timeouts.py), and the hard limit moves as far."""
        if not 1 <= ir_factor <= 10:
            raise InvalidArgument(f"ir_factor {ir_factor} is not in 1..10")
        if soft <= 0 or hard < soft:
            raise InvalidArgument(f"recovery window soft {soft} / hard {hard}: need 0 < soft <= hard")
        self.target = target
        self.ir = ir
        self.last_committed = last_committed
        self.clients: dict[str, _Client] = {
            uuid: _Client(ClientState.AWAITED, t) for uuid, t in clients.items()}
        self.max_clients = len(self.clients)
        self.started = now
        self.wall_start = wall_start
        self.ended: float | None = None
        self.soft_window = soft_window(soft, ir, ir_factor, reach_s)
        self.soft_deadline = now + self.soft_window
        # a window stretched for idle clients keeps its hard limit as far beyond it: the
        # replays and gap skips after a soft expiry need that time
        self.hard_deadline = now + hard + max(0.0, self.soft_window - soft)
        self.soft_expired = False
        self.aborted = False
        self.next_transno = last_committed + 1
        self.in_flight: tuple[str, int] | None = None
        self.replayed = 0
        self.gaps = 0
        self.vbr = False
        self._heap: list[tuple[int, str]] = []
        self._queue: dict[int, str] = {}  # transno -> client, for every queued replay
        self._ran: dict[int, str] = {}  # transno -> client, for every replay released
        self._orphan: tuple[str, int] | None = None  # in flight when the window was cut
        # clients that can still send a replay (AWAITED/REPLAYING) with none queued: while
        # any exists, a gap may still be filled and the queue must wait
        self._blocking: set[str] = set(self.clients)
        self._outstanding = len(self.clients)  # clients AWAITED or REPLAYING
        # refused with ESHUTDOWN until they connect as new clients; outlives the window
        self.evicted: set[str] = set()
        self.window = Window.RECOVERING if self.clients else Window.COMPLETE
        if not self.clients:
            self.ended = now

    # -- the table -----------------------------------------------------------------------
    def _check(self, event: Event, client: str | None = None) -> ClientState | None:
        """The state `client` moves to on `event`; raises if the event has no entry."""
        if event not in WINDOW_EVENTS[self.window]:
            raise RecoveryProtocolError(
                f"{self.target}: {event.value} while recovery is {self.window.value}")
        if client is None:
            return None
        c = self.clients.get(client)
        if c is None:
            raise RecoveryProtocolError(f"{self.target}: {event.value} from unknown client {client}")
        nxt = CLIENT_TRANSITIONS[c.state].get(event)
        if nxt is None:
            raise RecoveryProtocolError(
                f"{self.target}: {event.value} from client {client} in state {c.state.value}")
        return nxt

    def _move(self, client: str, event: Event) -> ClientState:
        nxt = self._check(event, client)
        assert nxt is not None
        c = self.clients[client]
        self._outstanding += (nxt in _OUTSTANDING) - (c.state in _OUTSTANDING)
        c.state = nxt
        self._recount(client)
        return nxt

    def _recount(self, client: str) -> None:
        c = self.clients[client]
        if c.state in _OUTSTANDING and c.queued == 0:
            self._blocking.add(client)
        else:
            self._blocking.discard(client)

    # -- events --------------------------------------------------------------------------
    def client_connected(self, client: str, now: float, *, initial: bool = False) -> list[Action]:
        """A connect request. Exactly one Accept or Refuse is among the actions."""
        c = self.clients.get(client)
        if self.window is Window.COMPLETE:
            self._check(Event.CONNECT)
            if client in self.evicted:
                if not initial:
                    return [Refuse(client, Evicted, self._evicted_message(client))]
                self.evicted.discard(client)
            return [Accept(client, False, initial)]
        if client in self.evicted:
            if initial:
                return [Refuse(client, Busy, self._busy_message(client, now))]
            return [Refuse(client, Evicted, self._evicted_message(client))]
        if c is None:
            return [Refuse(client, Busy, self._busy_message(client, now))]
        if initial:
            # the client dropped whatever it had (a restart): its old export cannot recover
            # and must not hold the window; as a new client it waits like any other
            actions = self._evict(client, Event.NEW_EXPORT, "reconnected as a new client",
                                  "new_export")
            actions.append(Refuse(client, Busy, self._busy_message(client, now)))
            return actions + self._pump()
        self._move(client, Event.CONNECT)
        self.soft_deadline = min(self.hard_deadline,
                                 max(self.soft_deadline, now + self.soft_window / 2))
        return [Accept(client, True, False)]

    def replay_received(self, client: str, transno: int) -> list[Action]:
        """A replay arrived: queued (Execute comes when its turn does), answered at once
        (Reconstruct), or refused by evicting the client (below the horizon, never run)."""
        if transno <= 0:
            raise RecoveryProtocolError(f"{self.target}: replay from {client} without a transno")
        if client in self.evicted:
            raise RecoveryProtocolError(f"{self.target}: replay from evicted client {client}")
        if transno <= self.last_committed or self._ran.get(transno) == client:
            self._move(client, Event.REPLAY_AGAIN)
            return [Reconstruct(client, transno)]
        if transno < self.next_transno or transno in self._ran:
            # the horizon passed it without it: running it now would break transno order
            self._check(Event.REPLAY_FAILED, client)
            return self._evict(client, Event.REPLAY_FAILED,
                               f"replay {transno:#x} came after the replay horizon "
                               f"{self.next_transno - 1:#x} passed it", "invalid") + self._pump()
        if transno in self._queue:
            raise RecoveryProtocolError(f"{self.target}: replay {transno:#x} queued twice")
        self._move(client, Event.REPLAY)
        self._queue[transno] = client
        heapq.heappush(self._heap, (transno, client))
        self.clients[client].queued += 1
        self._recount(client)
        return self._pump()

    def replay_done(self, client: str) -> list[Action]:
        """The client's final ping: it has nothing more to replay."""
        self._move(client, Event.REPLAY_DONE)
        return self._pump()

    def replay_finished(self, client: str, transno: int, *, ok: bool,
                        reason: str = "") -> list[Action]:
        """The target ran the replay Execute released; ok=False evicts its client."""
        if self._orphan == (client, transno):
            self._orphan = None
            return []
        if self.in_flight != (client, transno):
            raise RecoveryProtocolError(
                f"{self.target}: replay {transno:#x} of {client} finished but was not running")
        event = Event.REPLAY_FINISHED if ok else Event.REPLAY_FAILED
        self._check(event, client)
        self.in_flight = None
        actions: list[Action] = []
        if not ok and client not in self.evicted:
            actions = self._evict(client, event, reason or f"replay {transno:#x} failed", "vbr")
        return actions + self._pump()

    def evict(self, client: str, reason: str, cause: str = "invalid") -> list[Action]:
        """The target evicts a client for its own reason (a replay it cannot answer...)."""
        self._check(Event.EVICT)
        if client in self.evicted:
            return []
        if client not in self.clients or self.window is Window.COMPLETE:
            # after the window the counts stay as the window left them; only the client's
            # reconnects are refused from now on
            self.evicted.add(client)
            return [Evict(client, reason, cause)]
        return self._evict(client, Event.EVICT, reason, cause) + self._pump()

    def client_dead(self, client: str) -> list[Action]:
        """The MGS reports the client dead: stop waiting for it. Only a client still awaited:
        one that reconnected is alive, whatever the MGS last saw of it (it may not have
        reached the MGS in its new home yet), and evicting it would throw its replays away."""
        self._check(Event.DEAD)
        c = self.clients.get(client)
        if self.window is Window.COMPLETE or c is None or c.state is not ClientState.AWAITED:
            return []  # not ours to wait for (any more)
        return self._evict(client, Event.DEAD, "declared dead by the MGS", "dead") + self._pump()

    def tick(self, now: float) -> list[Action]:
        """Time passed: apply the soft and hard deadlines."""
        self._check(Event.TICK)
        if self.window is Window.COMPLETE:
            return []
        if now >= self.hard_deadline:
            return self._cut(Event.HARD_EXPIRY, now,
                             f"recovery window closed after {self.hard_deadline - self.started:.1f}s"
                             " (hard timeout)", "expired")
        actions: list[Action] = []
        if not self.soft_expired and now >= self.soft_deadline:
            self.soft_expired = True
            for uuid in [u for u, c in self.clients.items() if c.state is ClientState.AWAITED]:
                actions += self._evict(uuid, Event.SOFT_EXPIRY,
                                       f"did not reconnect within {now - self.started:.1f}s "
                                       "(soft timeout)", "expired")
        return actions + self._pump()

    def abort(self, now: float, reason: str = "recovery aborted by the administrator") -> list[Action]:
        """End the window at once, evicting every client that has not finished."""
        self._check(Event.ABORT)
        if self.window is Window.COMPLETE:
            return []
        return self._cut(Event.ABORT, now, reason, "aborted")

    # -- inner workings ------------------------------------------------------------------
    def _cut(self, event: Event, now: float, reason: str, cause: str) -> list[Action]:
        """Hard expiry or abort: evict all that is unfinished and close the window."""
        self.aborted = True
        self.soft_expired = True
        actions: list[Action] = []
        for uuid, c in list(self.clients.items()):
            if uuid not in self.evicted and (c.state is not ClientState.DONE or c.queued):
                actions += self._evict(uuid, event if c.state is not ClientState.DONE
                                       else Event.EVICT, reason, cause)
        if self.in_flight is not None:
            # with a driver that runs replays synchronously this does not happen; an
            # asynchronous one reports it later and is ignored
            self._orphan, self.in_flight = self.in_flight, None
        return actions + self._pump()

    def _evict(self, client: str, event: Event, reason: str, cause: str) -> list[Action]:
        self._move(client, event)
        self.evicted.add(client)
        c = self.clients[client]
        if c.queued:
            for t in [t for t, u in self._queue.items() if u == client]:
                del self._queue[t]  # its heap entry goes when it reaches the top
            c.queued = 0
        self._recount(client)
        return [Evict(client, reason, cause)]

    def _lowest(self) -> tuple[int, str] | None:
        heap = self._heap
        while heap and self._queue.get(heap[0][0]) != heap[0][1]:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def _pump(self) -> list[Action]:
        """Release the next replay if its turn has come; close the window if all is done."""
        if self.window is not Window.RECOVERING:
            return []
        if self.in_flight is None:
            head = self._lowest()
            if head is not None:
                transno, client = head
                if transno == self.next_transno or not self._blocking:
                    heapq.heappop(self._heap)
                    del self._queue[transno]
                    c = self.clients[client]
                    c.queued -= 1
                    self._recount(client)
                    gap = transno != self.next_transno
                    if gap and not self._epoch_start(transno):
                        self.gaps += 1
                        self.vbr = True
                    self.next_transno = transno + 1
                    self.in_flight = (client, transno)
                    self._ran[transno] = client
                    self.replayed += 1
                    return [Execute(client, transno, gap)]
        if self.in_flight is None and not self._queue and not self._outstanding:
            return [self._complete()]
        return []

    def _epoch_start(self, transno: int) -> bool:
        """The first transno of a later boot epoch: no transaction is missing in front of it."""
        return seq_of(transno) == 1 and epoch_of(transno) > epoch_of(self.next_transno - 1)

    def _complete(self) -> Complete:
        self.window = Window.COMPLETE
        self._heap.clear()
        evicted = sum(c.state is ClientState.EVICTED for c in self.clients.values())
        return Complete(self.aborted, evicted, self.replayed)

    def _counts(self) -> dict[ClientState, int]:
        counts = dict.fromkeys(ClientState, 0)
        for c in self.clients.values():
            counts[c.state] += 1
        return counts

    def _remaining(self, now: float) -> float:
        deadline = self.hard_deadline if self.soft_expired else self.soft_deadline
        return max(0.0, deadline - now)

    def _busy_message(self, client: str, now: float) -> str:
        n = self._counts()
        t = int(self._remaining(now))
        return (f"{self.target}: Denying connection for new client {client}, waiting for "
                f"{self.max_clients} known clients ({n[_D]} recovered, {n[_R]} in progress, "
                f"and {n[_E]} evicted) to recover in {t // 60}:{t % 60:02d}; "
                f"{self.target} is in recovery, try again later")

    def _evicted_message(self, client: str) -> str:
        return (f"{self.target}: client {client} was evicted; "
                "reconnect as a new client (in-progress operations on this target fail)")

    # -- what the driver and get_param read ----------------------------------------------
    @property
    def recovering(self) -> bool:
        return self.window is Window.RECOVERING

    def awaited(self) -> list[str]:
        """The known clients that have not reconnected (yet)."""
        if self.window is Window.COMPLETE:
            return []
        return [u for u, c in self.clients.items() if c.state is ClientState.AWAITED]

    def state_of(self, client: str) -> ClientState | None:
        c = self.clients.get(client)
        return c.state if c is not None else None

    def is_connected(self, client: str) -> bool:
        """Reconnected and not evicted: its ordinary requests wait for the window."""
        return self.state_of(client) in (ClientState.REPLAYING, ClientState.DONE)

    def next_deadline(self) -> float | None:
        """When tick() must next be called, or None once the window is closed."""
        if self.window is Window.COMPLETE:
            return None
        return self.hard_deadline if self.soft_expired else self.soft_deadline

    def finish_time(self, now: float) -> None:
        """Record when the window closed (the driver calls it on Complete)."""
        if self.ended is None:
            self.ended = now

    def status(self, now: float) -> RecoveryStatus:
        n = self._counts()
        kind = "INACTIVE" if self.max_clients == 0 else self.window.value
        end = self.ended if self.ended is not None and not self.recovering else now
        return RecoveryStatus(
            status=kind, recovery_start=int(self.wall_start),
            recovery_duration=int(end - self.started), time_remaining=int(self._remaining(now)),
            max_clients=self.max_clients, connected=n[_R] + n[_D], req_replay=n[_R],
            completed=n[_D], evicted=n[_E], replayed=self.replayed, queued=len(self._queue),
            next_transno=self.next_transno, vbr=self.vbr, ir=self.ir)

    def status_text(self, now: float) -> str:
        return render_status(self.status(now))


def describe_transitions() -> str:
    """The per-client table as text (for docs and `shoal` help)."""
    lines = []
    for state, row in CLIENT_TRANSITIONS.items():
        for event, nxt in row.items():
            lines.append(f"{state.value:<10} --{event.value}--> {nxt.value}")
    return "\n".join(lines)

