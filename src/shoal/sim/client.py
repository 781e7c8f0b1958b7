"""One client's import of one target, in virtual time: client/recovery.py's loop around the
unchanged protocol.import_state.ImportStateMachine.

The state machine decides everything it decides in the real client: which NID to try next
(round robin, fresh or not), what a connect reply means (REPLAY, RECOVER, FULL), which
entries to replay and in what order, when an eviction drops them. This module only does what
client/imports.py and client/recovery.py do around it: notice that the server is gone (a
request or ping that timed out, a reset connection, an IR notice), send, wait, back off.
Replies for an attempt that was abandoned (a connect that timed out, a wait cut short by an
IR notice) are recognised by the attempt number `gen` and dropped, as a cancelled task's are.
"""

from __future__ import annotations

from shoal.protocol.import_state import (
    CONNECTED_STATES,
    FLAG_INITIAL,
    Event,
    ImportStateMachine,
    ReplayEntry,
)
from shoal.protocol.import_state import ImportState as S
from shoal.sim.ports import ClientWorld

# states in which a client is already recovering towards some server (imports.py: _RECOVERING)
_RECOVERING = frozenset({S.CONNECTING, S.REPLAY, S.REPLAY_LOCKS, S.REPLAY_WAIT, S.RECOVER})


class SimClient:
    """One import: its state machine plus the few timers the real client keeps."""

    __slots__ = ("world", "cid", "target", "sm", "gen", "delay", "ctimeout", "pending_xid",
                 "sent_key", "replays_out", "connected_at", "resumed_at", "replayed_at",
                 "evictions")

    def __init__(self, world: ClientWorld, cid: str, target: int, sm: ImportStateMachine) -> None:
        self.world = world
        self.cid = cid
        self.target = target
        self.sm = sm
        self.gen = 0  # the current attempt; replies to older ones are dropped
        self.delay = world.policy.backoff_min_s
        self.ctimeout = world.policy.connect_timeout_s
        self.pending_xid = 0  # the request in flight when the server died (0: idle)
        self.sent_key: tuple[int, int] | None = None
        self.replays_out = 0
        self.connected_at: float | None = None
        self.replayed_at: float | None = None
        self.resumed_at: float | None = None
        self.evictions = 0

    # -- noticing -----------------------------------------------------------------------
    def server_lost(self, retry_same: bool = False) -> None:
        """A request or ping timed out, or the connection reset: reconnect (recovery.run)."""
        if self.gen or self.sm.state is not S.FULL:
            return  # an IR notice or an earlier loss already started the recovery
        self.sm.disconnect(self.world.loop.now, retry_same=retry_same)
        self.attempt()

    def connection_reset(self) -> None:
        """An idle client's connection closed (imports.connection_lost): DISCONN, and the
        reconnect waits for its next ping or an IR notice."""
        if not self.gen and self.sm.state is S.FULL:
            self.sm.disconnect(self.world.loop.now)

    def idle_ping(self) -> None:
        """The pinger's turn: a DISCONN import reconnects; a FULL one pings (world decides
        whether that ping is answered)."""
        if self.gen:
            return  # recovering or recovered already: its pings go to the new server
        if self.sm.state is S.DISCONN:
            self.attempt()
        elif self.sm.state is S.FULL:
            self.world.ping(self)

    def ir_notice(self, nid: str, epoch: int) -> None:
        """imports.ir_notice: move to where the MGS says the target is, at once."""
        sm = self.sm
        st = sm.state
        if sm.nid == nid and ((st is S.FULL and sm.epoch == epoch) or (
                st in _RECOVERING and (st is S.CONNECTING or sm.epoch == epoch))):
            return  # already there, or on the way
        if st in (S.NEW, S.IDLE, S.CLOSED):
            sm.move_to(nid)
            return
        if sm.can(Event.DISCONNECT):
            sm.disconnect(self.world.loop.now)
        sm.move_to(nid)
        self.delay = self.world.policy.backoff_min_s
        self.attempt()  # a wait or backoff for the old NID is abandoned

    # -- connecting ---------------------------------------------------------------------
    def attempt(self) -> None:
        now = self.world.loop.now
        self.gen += 1
        if self.sm.state in CONNECTED_STATES:
            self.sm.disconnect(now)  # left half-way by an abandoned attempt
        initial = self.sm.request_flags == [FLAG_INITIAL]
        nid = self.sm.connect_start(now)
        self.world.send_connect(self, nid, self.gen, initial, self.ctimeout)

    def connect_failed(self, gen: int) -> None:
        """Refused, no device there yet, or no answer within the connect timeout."""
        if gen != self.gen or self.sm.state is not S.CONNECTING:
            return
        pol = self.world.policy
        if self.sm.connect_failed(self.world.loop.now):
            self.attempt()
            return
        # a whole round of NIDs failed: back off (Lustre also lengthens the next timeouts)
        self.ctimeout = min(self.ctimeout + pol.connect_timeout_inc_s, pol.connect_timeout_max_s)
        self.world.loop.after(self.delay, self._retry, self.gen)
        self.delay = min(self.delay * 2, pol.backoff_max_s)

    def _retry(self, gen: int) -> None:
        if gen == self.gen and self.sm.state is S.DISCONN:
            self.attempt()

    def busy(self, gen: int) -> None:
        """EBUSY: the target is recovering and does not wait for this client."""
        if gen != self.gen:
            return
        self.world.counters.busy += 1
        self.sm.connect_failed(self.world.loop.now, retry_same=True)
        self.world.loop.after(self.world.policy.busy_backoff_s, self._retry, gen)

    def refused_evicted(self, gen: int) -> None:
        if gen == self.gen:
            self.evicted()

    def accepted(self, gen: int, recovering: bool, epoch: int, last_committed: int) -> None:
        if gen != self.gen or self.sm.state is not S.CONNECTING:
            return  # the client gave up on this attempt; the server did the work anyway
        now = self.world.loop.now
        state = self.sm.connected(now, epoch=epoch, last_committed=last_committed,
                                  recovering=recovering, node=self.world.backup)
        self.delay = self.world.policy.backoff_min_s
        self.connected_at = now
        if state is S.REPLAY:
            self.sent_key = None
            self.replays_out = 0
            self._send_replays()
        elif state is S.RECOVER:
            self._resend()
        else:
            self._resumed()

    # -- replay -------------------------------------------------------------------------
    def _send_replays(self) -> None:
        pol = self.world.policy
        for entry in self.sm.next_replays(pol.replay_window - self.replays_out,
                                          after=self.sent_key):
            self.sent_key = (entry.transno, entry.xid)
            self.replays_out += 1
            self.world.send_replay(self, entry, self.gen)
        if not self.replays_out:
            now = self.world.loop.now
            self.sm.replay_done(now)
            self.sm.locks_done(now)  # no locks are modelled: their replay is empty
            self.replayed_at = now
            self.world.send_final_ping(self, self.gen)

    def replay_answered(self, gen: int, entry: ReplayEntry) -> None:
        if gen != self.gen or self.sm.state is not S.REPLAY:
            return
        self.sm.replayed(entry)
        self.replays_out -= 1
        self._send_replays()

    def final_ping_answered(self, gen: int) -> None:
        if gen != self.gen or self.sm.state is not S.REPLAY_WAIT:
            return
        self.sm.recovery_done(self.world.loop.now)
        self._resend()

    def _resend(self) -> None:
        """RECOVER: resend what had no reply, then FULL (recovery._connected)."""
        self.sm.resend_done(self.world.loop.now)
        if self.pending_xid:
            self.world.send_resend(self, self.gen)
        else:
            self._resumed()

    def resend_answered(self, gen: int) -> None:
        if gen == self.gen and self.pending_xid:
            self.sm.finished(self.pending_xid)
            self.pending_xid = 0
            self._resumed()

    def _resumed(self) -> None:
        if self.resumed_at is None:
            self.resumed_at = self.world.loop.now
            self.world.client_resumed()

    # -- eviction -----------------------------------------------------------------------
    def evicted(self) -> None:
        """The server dropped this client: what it held for replay is lost; reconnect as a
        new client (imports.evict, then recovery's next attempt)."""
        if not self.sm.can(Event.EVICTED):
            return
        dropped = self.sm.evicted(self.world.loop.now)
        self.world.counters.lost_replays += len(dropped)
        self.pending_xid = 0  # its call fails with an error: nothing to resend
        self.evictions += 1
        self.attempt()
