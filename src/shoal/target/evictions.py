"""What a dropped export asks of the node (target/recovery.py hands it over): the client's
locks and open handles go, and perhaps a word to the client."""

from __future__ import annotations

from dataclasses import dataclass

# evictions that are no fault: a client leaving, or the same client starting over
BENIGN_EVICTIONS = frozenset({"disconnect", "new_export"})


@dataclass(frozen=True, slots=True)
class Eviction:
    """What the node must do when an export is dropped."""

    client: str
    target: str
    reason: str
    notify: bool  # tell the client (Notice "evicted"); not when it is dead or asked for it
    cause: str = ""  # as Evict.cause: "disconnect" is a client leaving, not a fault
