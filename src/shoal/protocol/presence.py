"""Which clients the MGS may declare dead to a recovering target: only on evidence.

IR lets a recovery window stop waiting for a client the MGS knows is gone, instead of
waiting for the soft timeout. Not being connected to the MGS is no such evidence: a new MGS
(a failover) has not heard from anyone yet, and a client that was paused, or noticed the
failover late, reaches it seconds later with replays the target must not throw away. So the
MGS's node notes when each client's last connection to it closed, and declares dead only a
client that is not connected now, whose connection closed (its process died, its host went
down) at least `bound` seconds ago. A live client whose link closed has reconnected by
then: it retries the MGS at once and every MGS_RETRY. A client it has never seen is never
declared dead; the window waits for it until the soft timeout, as Lustre's does.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

RECONNECT_BOUND = 4.0  # seconds: a live client's MGS link is back well within this
REMEMBERED = 100_000  # clients whose last close is kept (the oldest are forgotten)


@dataclass
class Presence:
    """When each client's last connection to this node closed, on the node's own clock."""

    bound: float = RECONNECT_BOUND
    limit: int = REMEMBERED
    closed_at: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def closed(self, client: str, now: float) -> None:
        self.closed_at[client] = now
        self.closed_at.move_to_end(client)
        while len(self.closed_at) > self.limit:
            self.closed_at.popitem(last=False)

    def dead(self, clients: Iterable[str], connected: Collection[str], now: float) -> list[str]:
        """Those of `clients` known dead: not connected, and gone for `bound` seconds."""
        out = []
        for client in clients:
            gone = self.closed_at.get(client)
            if client not in connected and gone is not None and now - gone >= self.bound:
                out.append(client)
        return out
