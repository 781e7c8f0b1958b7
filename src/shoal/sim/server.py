"""One target on the backup node, in virtual time: target/recovery.py's driver around the
unchanged protocol.recovery.ServerRecovery.

ServerRecovery decides who is accepted, refused or evicted, which replay runs next (strictly
in transno order across all clients), and when the window closes. This module only carries
out the actions it returns, as target/recovery.py does: answer a connect, run a released
replay on the node's one request queue and report it finished, answer replays already run,
hold every final ping until the window closes, call tick() at its deadlines, and (with IR)
ask the MGS every ASK_PERIOD which awaited clients are dead (protocol/presence.py).
"""

from __future__ import annotations

from shoal.errors import Busy
from shoal.protocol import recovery_actions as ra
from shoal.protocol.import_state import ReplayEntry
from shoal.protocol.presence import Presence
from shoal.protocol.recovery import ServerRecovery
from shoal.sim.ports import Peer, TargetWorld

NEW_EPOCH = 2  # the target's boot epoch on the backup (it was 1 on the dead server)


class SimTarget:
    """A target that restarts on the backup and recovers its known clients."""

    def __init__(self, world: TargetWorld, name: str, known: dict[str, int], last_committed: int,
                 presence: Presence | None) -> None:
        self.world = world
        self.name = name
        self.known = known  # last_rcvd's slots: uuid -> last transno
        self.last_committed = last_committed
        self.presence = presence
        self.rec: ServerRecovery | None = None
        self.started_at: float | None = None
        self.completed_at: float | None = None
        self.clients: dict[str, Peer] = {}  # live imports by uuid
        self._held: list[tuple[Peer, int]] = []  # final pings held until the end
        self._replays: dict[int, tuple[Peer, int, ReplayEntry]] = {}  # transno -> sender
        self._connecting: dict[str, tuple[Peer, int]] = {}

    # -- start --------------------------------------------------------------------------
    def start(self) -> None:
        self.started_at = self.world.loop.now
        if not self.world.scenario.window.from_first_connect:
            self._open()

    def _open(self) -> None:
        w = self.world.scenario.window
        now = self.world.loop.now
        self.rec = ServerRecovery(self.name, self.known, self.last_committed, now,
                                  soft=w.soft_s, hard=w.hard_s, ir=self.world.policy.ir,
                                  ir_factor=w.ir_factor, reach_s=w.reach_s)
        self._schedule_tick()
        if self.presence is not None and w.ask_period_s:
            self.world.loop.after(w.ask_period_s, self._ask_mgs)

    # -- requests (each runs when the node's queue has served it) ------------------------
    def connect(self, client: Peer, gen: int, initial: bool) -> None:
        if self.rec is None:
            self._open()
        assert self.rec is not None
        self._connecting[client.cid] = (client, gen)
        self._apply(self.rec.client_connected(client.cid, self.world.loop.now,
                                              initial=initial))

    def replay(self, client: Peer, gen: int, entry: ReplayEntry) -> None:
        assert self.rec is not None
        if client.cid in self.rec.evicted:
            self.world.reply(client.refused_evicted, gen)
            return
        self._replays[entry.transno] = (client, gen, entry)
        self._apply(self.rec.replay_received(client.cid, entry.transno))

    def final_ping(self, client: Peer, gen: int) -> None:
        assert self.rec is not None
        if client.cid in self.rec.evicted:
            self.world.reply(client.refused_evicted, gen)
            return
        self._held.append((client, gen))
        self._apply(self.rec.replay_done(client.cid))

    def _executed(self, cid: str, transno: int) -> None:
        assert self.rec is not None
        sender = self._replays.pop(transno, None)
        if sender is not None:
            client, gen, entry = sender
            self.world.reply(client.replay_answered, gen, entry)
        self._apply(self.rec.replay_finished(cid, transno, ok=True))

    # -- timers -------------------------------------------------------------------------
    def _schedule_tick(self) -> None:
        assert self.rec is not None
        deadline = self.rec.next_deadline()
        if deadline is not None:
            self.world.loop.at(deadline, self._tick)

    def _tick(self) -> None:
        """tick() is harmless before a deadline; a window that was extended meanwhile is
        simply looked at again at its new deadline."""
        assert self.rec is not None
        if not self.rec.recovering:
            return
        was_soft = self.rec.soft_expired
        self._apply(self.rec.tick(self.world.loop.now))
        c = self.world.counters
        c.soft_expired |= self.rec.soft_expired and not was_soft
        if self.rec.aborted and not c.hard_expired:
            # the window gave up on its clients: evicted, their replays lost. What follows
            # (every client back as a new one) is no longer a recovery; the run ends soon
            c.hard_expired = True
            self.world.window_aborted()
        if self.rec.recovering:
            self._schedule_tick()

    def _ask_mgs(self) -> None:
        """liveness.py: the recovering target asks the MGS's node who is dead."""
        assert self.rec is not None and self.presence is not None
        if not self.rec.recovering:
            return
        now = self.world.loop.now
        for cid in self.presence.dead(self.rec.awaited(), (), now):
            self._apply(self.rec.client_dead(cid))
        if self.rec.recovering:
            self.world.loop.after(self.world.scenario.window.ask_period_s or 1.0,
                                  self._ask_mgs)

    # -- actions ------------------------------------------------------------------------
    def _apply(self, actions: list[ra.Action]) -> None:
        world = self.world
        if world.trace is not None:
            world.trace.extend(actions)
        for a in actions:
            if isinstance(a, ra.Accept):
                client, gen = self._connecting.pop(a.client)
                world.reply(client.accepted, gen, a.recovering, NEW_EPOCH, self.last_committed)
            elif isinstance(a, ra.Refuse):
                client, gen = self._connecting.pop(a.client)
                world.reply(client.busy if a.error is Busy else client.refused_evicted, gen)
            elif isinstance(a, ra.Execute):
                world.queue.serve(world.scenario.server.replay_s, self._executed,
                                  a.client, a.transno)
                world.counters.replays += 1
            elif isinstance(a, ra.Reconstruct):
                client, gen, entry = self._replays.pop(a.transno)
                world.counters.reconstructed += 1
                world.reply(client.replay_answered, gen, entry)
            elif isinstance(a, ra.Evict):
                world.evicted(self.clients, a.client, a.cause)
            elif isinstance(a, ra.Complete):
                self._complete()

    def _complete(self) -> None:
        assert self.rec is not None
        now = self.world.loop.now
        self.rec.finish_time(now)
        self.completed_at = now
        held, self._held = self._held, []
        cost = self.world.scenario.server.ping_s
        for client, gen in held:
            # answering a held ping is a reply written by the node's one loop
            self.world.queue.serve(cost, self.world.reply, client.final_ping_answered, gen)
