"""Distributed locks, sans I/O: Lustre's LDLM grant and conflict rules for one target.

A client caches what a lock covers (names and attributes under an MDT inodebits lock, pages
and the file size under an OST extent lock) for as long as it holds the lock; a server about
to change something first calls back the locks that conflict, and the holders cancel them
(dropping what they cached) before the change goes on. This file decides; the lock manager
around it (ldlm/) holds the requests, sends the callbacks and evicts.

Rules of this file (the h11 `_state.py` discipline, as in recovery.py):
- a lock's life is the TRANSITIONS table: TRANSITIONS[state][event] -> next state; an event
  with no entry is a caller bug and raises LockProtocolError before anything changes;
- time comes in as arguments (`now`, one monotonic clock); actions go out as values.

Modes and their compatibility are Lustre's (lustre/ldlm/ldlm_internal.h, lck_compat_array):

         NL  CR  CW  PR  PW  EX
    NL   +   +   +   +   +   +
    CR   +   +   +   +   +   -
    CW   +   +   +   -   -   -
    PR   +   +   -   +   -   -
    PW   +   +   -   -   -   -
    EX   +   -   -   -   -   -

Two locks on one resource conflict when their modes are incompatible and what they cover
meets: inodebits locks (MDT) when their bits share one, extent locks (OST) when their byte
ranges overlap, plain locks always.

Granting (ldlm_process_inodebits_lock / ldlm_process_extent_lock): a request is granted at
once when it conflicts with no granted lock and with no request waiting before it (first come,
first served: a stream of readers compatible with each other cannot starve a writer). Otherwise it waits, and
each granted lock in its way that has not been called back yet gets a blocking callback. A
holder answers by cancelling; one that has not cancelled within `callback_timeout` of its
callback is evicted (every lock it holds goes), as Lustre evicts a client that ignores a
blocking AST, so one dead client cannot block everyone. Each cancel lets the waiting queue
move, in order.

Extent expansion (ldlm_extent_internal_policy): an extent lock is granted over the widest
range around the one asked for that meets no conflicting lock, granted or waiting, up to the
whole object; a client that writes a file from start to end then needs one lock, not one
per write. A resource with more than CONTENDED locks is not expanded past the request.

After a failover the new server has no locks: clients replay theirs (`replay`), which are
granted as they were, without conflict checks: they were compatible when granted, and while
the window is open no new lock is granted (the caller holds new enqueues until it ends).
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Hashable
from dataclasses import dataclass, field

from shoal.errors import ProtocolError

OBJECT_EOF = 2**64 - 1  # the last byte an extent may cover
CANCEL_OP = "ldlm_cancel"  # a client gives locks back: {"handles": [...]}
# a client asks an OST for an extent lock on an object: {"oid", "mode": "PR" | "PW",
# "cancel"?} -> {"handle", "mode", "start", "end"} (node/data_locks.py)
ENQUEUE_OP = "ldlm_enqueue"
# after a failover, a client asks for the locks it held again, with what it kept under them
# so that the new server can check it is still true: {"locks": [{"h", "ino", "bits",
# "version", "ctime", "names"}]} -> {"granted": [[old handle, new handle], ...]}
REPLAY_OP = "ldlm_replay"
REPLAY_MAX = 65536  # locks in one replay request
CALLBACK = "ldlm_callback"  # the Notice that asks a holder for one: {"target", "handle"}
CONTENDED = 32  # locks on one resource beyond which extents are not expanded
CALLBACK_TIMEOUT = 30.0  # seconds a holder has to cancel a called-back lock


class LockProtocolError(ProtocolError):
    """An event the lock's state does not take (a caller bug or a broken client)."""


class Mode(enum.Enum):
    NL = "NL"  # null: no access, only holds the resource
    CR = "CR"  # concurrent read
    CW = "CW"  # concurrent write
    PR = "PR"  # protected read
    PW = "PW"  # protected write
    EX = "EX"  # exclusive


_COMPAT: dict[Mode, frozenset[Mode]] = {
    Mode.NL: frozenset(Mode),
    Mode.CR: frozenset({Mode.NL, Mode.CR, Mode.CW, Mode.PR, Mode.PW}),
    Mode.CW: frozenset({Mode.NL, Mode.CR, Mode.CW}),
    Mode.PR: frozenset({Mode.NL, Mode.CR, Mode.PR}),
    Mode.PW: frozenset({Mode.NL, Mode.CR}),
    Mode.EX: frozenset({Mode.NL}),
}


def compatible(a: Mode, b: Mode) -> bool:
    return b in _COMPAT[a]



class Bits(enum.IntFlag):
    """What an MDT lock on an inode covers (Lustre's MDS_INODELOCK_*)."""

    LOOKUP = 0x01  # the name -> inode mapping (the dentry)
    UPDATE = 0x02  # attributes and, on a directory, its entries
    OPEN = 0x04  # an open file (held across opens to cache them)
    LAYOUT = 0x08  # the file's striping
    PERM = 0x10  # owner, group, mode and ACL
    XATTR = 0x20  # extended attributes


@dataclass(frozen=True, slots=True)
class Extent:
    """Bytes start..end of an object, both included."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end <= OBJECT_EOF:
            raise LockProtocolError(f"bad extent [{self.start}, {self.end}]")

    def overlaps(self, other: Extent) -> bool:
        return self.start <= other.end and other.start <= self.end

    def contains(self, other: Extent) -> bool:
        return self.start <= other.start and other.end <= self.end


Policy = Bits | Extent | None  # inodebits, extent, or a plain lock (the whole resource)
Resource = Hashable  # ("ino", 42), ("obj", 7): whatever the target names its things by


def meets(a: Policy, b: Policy) -> bool:
    """Whether two locks' policies overlap (bits in common, bytes in common)."""
    if isinstance(a, Extent) and isinstance(b, Extent):
        return a.overlaps(b)
    if isinstance(a, Bits) and isinstance(b, Bits):
        return bool(int(a) & int(b))  # plain ints: IntFlag's own operators are slow
    if a is None and b is None:
        return True
    raise LockProtocolError(f"locks of two kinds on one resource: {a!r} and {b!r}")


def conflicts(mode_a: Mode, policy_a: Policy, mode_b: Mode, policy_b: Policy) -> bool:
    return not compatible(mode_a, mode_b) and meets(policy_a, policy_b)


def covers(held_mode: Mode, held: Policy, mode: Mode, wanted: Policy) -> bool:
    """Whether a held lock (held_mode, held) serves a request for (mode, wanted) (Lustre's
    lock match): its mode is at least as strong (every mode it lets others hold, the
    requested one lets them hold too) and it covers the bits or bytes asked for."""
    if held_mode is not mode and not _COMPAT[held_mode] <= _COMPAT[mode]:
        return False  # (a mode covers itself: the hot case, a cached stat, skips the sets)
    if isinstance(held, Bits) and isinstance(wanted, Bits):
        return int(wanted) & ~int(held) == 0  # plain ints: a cached stat matches several
    if isinstance(held, Extent) and isinstance(wanted, Extent):
        return held.contains(wanted)
    return held is None and wanted is None


class State(enum.Enum):
    WAITING = "waiting"  # asked for, in the resource's queue
    GRANTED = "granted"  # held; the client may cache under it
    CALLED_BACK = "called_back"  # held, and its holder has been asked to cancel it
    CANCELLED = "cancelled"  # gone (cancelled by its holder, or its holder evicted)


class Event(enum.Enum):
    GRANT = "grant"
    CALL_BACK = "call_back"
    CANCEL = "cancel"


TRANSITIONS: dict[State, dict[Event, State]] = {
    State.WAITING: {Event.GRANT: State.GRANTED, Event.CANCEL: State.CANCELLED},
    State.GRANTED: {Event.CALL_BACK: State.CALLED_BACK, Event.CANCEL: State.CANCELLED},
    State.CALLED_BACK: {Event.CANCEL: State.CANCELLED},
    State.CANCELLED: {},
}


@dataclass(eq=False)
class Lock:
    handle: int
    client: str
    resource: Resource
    mode: Mode
    policy: Policy  # what it covers now (an extent may have been expanded at grant)
    asked: Policy  # what the client asked for
    state: State = State.WAITING
    called_at: float | None = None  # when its blocking callback went out

    def move(self, event: Event) -> None:
        nxt = TRANSITIONS[self.state].get(event)
        if nxt is None:
            raise LockProtocolError(f"lock {self.handle:#x} of {self.client}: {event.value} "
                                    f"in state {self.state.value}")
        self.state = nxt

    def conflicts_with(self, other: Lock) -> bool:
        return conflicts(self.mode, self.policy, other.mode, other.policy)


# -- actions: what the lock manager must do -----------------------------------------------
@dataclass(frozen=True, slots=True)
class Granted:
    """Answer the lock's enqueue: granted, covering lock.policy."""

    lock: Lock


@dataclass(frozen=True, slots=True)
class CallBack:
    """Send `lock`'s holder a blocking callback: `by` waits for it."""

    lock: Lock
    by: Lock


@dataclass(frozen=True, slots=True)
class EvictHolder:
    """The client did not cancel a called-back lock in time: evict it, then tell `client_gone`."""

    client: str
    reason: str


Action = Granted | CallBack | EvictHolder


@dataclass
class _Queue:
    granted: list[Lock] = field(default_factory=list)
    waiting: list[Lock] = field(default_factory=list)


class LockSpace:
    """The locks of one target (Lustre's ldlm namespace)."""

    def __init__(self, callback_timeout: float = CALLBACK_TIMEOUT, *, first_handle: int = 1,
                 contended: int = CONTENDED) -> None:
        self.callback_timeout = callback_timeout
        self.contended = contended
        self._handles = itertools.count(first_handle)
        self._queues: dict[Resource, _Queue] = {}
        self.locks: dict[int, Lock] = {}
        self._deadlines: list[tuple[float, int]] = []  # (callback deadline, handle), a heap
        self.stats = {"granted": 0, "waited": 0, "callbacks": 0, "evictions": 0}

    # -- events ------------------------------------------------------------------------------
    def enqueue(self, client: str, resource: Resource, mode: Mode, policy: Policy,
                now: float) -> tuple[Lock, list[Action]]:
        """A client asks for a lock: Granted now, or CallBacks to the holders in its way (it
        is granted later, by the cancel that clears the way)."""
        lock = Lock(next(self._handles), client, resource, mode, policy, policy)
        q = self._queues.setdefault(resource, _Queue())
        self._kind_check(q, lock)
        self.locks[lock.handle] = lock
        if not any(lock.conflicts_with(x) for x in (*q.granted, *q.waiting)):
            return lock, [self._grant(q, lock)]
        q.waiting.append(lock)
        self.stats["waited"] += 1
        return lock, self._call_back_for(q, lock, now)

    def cancel(self, handle: int, now: float) -> list[Action]:
        """The holder cancelled (or gave up waiting for) the lock: the queue moves on. An
        unknown handle (cancelled already, or a lock from before a failover that was not
        replayed) changes nothing."""
        lock = self.locks.pop(handle, None)
        if lock is None:
            return []
        return self._moved(self._drop(lock).resource, now)

    def client_gone(self, client: str, now: float) -> list[Action]:
        """The client was evicted or left: every lock of its goes, all at once (none of its
        waiting locks is granted on the way)."""
        touched = {self._drop(self.locks.pop(h)).resource: None
                   for h in [h for h, lk in self.locks.items() if lk.client == client]}
        actions: list[Action] = []
        for resource in touched:
            actions += self._moved(resource, now)
        return actions

    def tick(self, now: float) -> list[Action]:
        """Holders that sat on a called-back lock past the timeout are to be evicted."""
        out: list[Action] = []
        late: set[str] = set()
        while self._deadlines and self._deadlines[0][0] <= now:
            _at, handle = heapq.heappop(self._deadlines)
            lock = self.locks.get(handle)
            if lock is None or lock.state is not State.CALLED_BACK or lock.client in late:
                continue
            late.add(lock.client)
            self.stats["evictions"] += 1
            out.append(EvictHolder(lock.client, f"lock {handle:#x} on {lock.resource!r} "
                                                f"not cancelled {self.callback_timeout:g}s "
                                                "after its blocking callback"))
        return out

    def replay(self, client: str, resource: Resource, mode: Mode, policy: Policy) -> Lock:
        """A lock the client held before the failover, granted again as it was."""
        lock = Lock(next(self._handles), client, resource, mode, policy, policy)
        q = self._queues.setdefault(resource, _Queue())
        self._kind_check(q, lock)
        self.locks[lock.handle] = lock
        lock.move(Event.GRANT)
        q.granted.append(lock)
        return lock

    # -- queries -------------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        while self._deadlines:
            at, handle = self._deadlines[0]
            lock = self.locks.get(handle)
            if lock is not None and lock.state is State.CALLED_BACK:
                return at
            heapq.heappop(self._deadlines)
        return None

    def held_by(self, client: str) -> list[Lock]:
        return [lk for lk in self.locks.values()
                if lk.client == client and lk.state in (State.GRANTED, State.CALLED_BACK)]

    def queue(self, resource: Resource) -> tuple[list[Lock], list[Lock]]:
        """(granted, waiting) on `resource`, in order."""
        q = self._queues.get(resource)
        return (list(q.granted), list(q.waiting)) if q is not None else ([], [])

    # -- internals -----------------------------------------------------------------------------
    @staticmethod
    def _kind_check(q: _Queue, lock: Lock) -> None:
        other = next(iter(q.granted or q.waiting), None)
        if other is not None and type(other.policy) is not type(lock.policy):
            raise LockProtocolError(f"locks of two kinds on {lock.resource!r}: "
                                    f"{other.policy!r} and {lock.policy!r}")

    def _drop(self, lock: Lock) -> Lock:
        lock.move(Event.CANCEL)
        q = self._queues[lock.resource]
        (q.granted if lock in q.granted else q.waiting).remove(lock)
        return lock

    def _moved(self, resource: Resource, now: float) -> list[Action]:
        """Locks on `resource` went: let its queue move on."""
        q = self._queues[resource]
        actions = self._process(q, now)
        if not q.granted and not q.waiting:
            del self._queues[resource]
        return actions

    def _grant(self, q: _Queue, lock: Lock) -> Granted:
        if isinstance(lock.policy, Extent):
            lock.policy = self._expand(q, lock)
        lock.move(Event.GRANT)
        q.granted.append(lock)
        self.stats["granted"] += 1
        return Granted(lock)

    def _expand(self, q: _Queue, lock: Lock) -> Extent:
        asked = lock.asked
        assert isinstance(asked, Extent)
        if len(q.granted) + len(q.waiting) >= self.contended:
            return asked
        start, end = 0, OBJECT_EOF
        for other in (*q.granted, *q.waiting):
            if other is lock or compatible(lock.mode, other.mode):
                continue
            ext = other.policy
            assert isinstance(ext, Extent)
            if ext.end < asked.start:
                start = max(start, ext.end + 1)
            elif ext.start > asked.end:
                end = min(end, ext.start - 1)
        return Extent(start, end)

    def _call_back_for(self, q: _Queue, lock: Lock, now: float) -> list[Action]:
        out: list[Action] = []
        for g in q.granted:
            if g.state is State.GRANTED and lock.conflicts_with(g):
                g.move(Event.CALL_BACK)
                g.called_at = now
                heapq.heappush(self._deadlines, (now + self.callback_timeout, g.handle))
                self.stats["callbacks"] += 1
                out.append(CallBack(g, lock))
        return out

    def _process(self, q: _Queue, now: float) -> list[Action]:
        """Grant the waiting locks, in order, that no granted or earlier waiting lock blocks;
        call back what blocks the others (locks granted just now may block later ones)."""
        out: list[Action] = []
        ahead: list[Lock] = []
        for w in list(q.waiting):
            if any(w.conflicts_with(x) for x in (*q.granted, *ahead)):
                ahead.append(w)
                continue
            q.waiting.remove(w)
            out.append(self._grant(q, w))
        for w in q.waiting:
            out += self._call_back_for(q, w, now)
        return out
