"""What a recovery window (protocol/recovery.py) tells its driver to do, sans I/O.

ServerRecovery's events return a list of these; target/recovery.py carries them out in order:
answers a connect (Accept or Refuse), runs a released replay and reports replay_finished
(Execute), answers a replay without running it (Reconstruct), evicts a client (Evict), and
ends the window (Complete).
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.errors import ShoalError


@dataclass(frozen=True, slots=True)
class Accept:
    client: str
    recovering: bool  # the client must replay, then send replay_done
    fresh: bool  # a new export: forget whatever the target kept for this uuid


@dataclass(frozen=True, slots=True)
class Refuse:
    client: str
    error: type[ShoalError]  # Busy (EBUSY) or Evicted (ESHUTDOWN)
    message: str


@dataclass(frozen=True, slots=True)
class Execute:
    """Run this replay now, then report replay_finished."""
    client: str
    transno: int
    gap: bool  # transactions in front of it were skipped: only its versions protect it


@dataclass(frozen=True, slots=True)
class Reconstruct:
    """A replay already run in this window, or committed: answer it, do not order it."""
    client: str
    transno: int


@dataclass(frozen=True, slots=True)
class Evict:
    client: str
    reason: str
    cause: str  # "expired", "dead", "vbr", "aborted", "new_export", "invalid", "disconnect"


@dataclass(frozen=True, slots=True)
class Complete:
    aborted: bool
    evicted: int
    replayed: int


Action = Accept | Refuse | Execute | Reconstruct | Evict | Complete
