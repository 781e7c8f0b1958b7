"""One simulated failover: N clients, the dead server's targets, the backup node, the MGS.

The server dies at virtual time 0. The failover agent's timeline (detect, fence, MMP claim,
start) is a fixed sequence of marks from the preset; the targets start on the backup at
`started`, and with IR the MGS then sends every client one notice per target, one after
another (`notify_s` each). Clients that IR does not reach, or that ignore it, notice by
themselves: an active client's request in flight times out (or its connection resets, for
a kill); an idle client's next ping does. From there on sim/client.py and sim/server.py
drive the protocol's state machines, and this module carries messages between them:
`latency_s` one way, payloads at `bandwidth_Bps`, each request served in turn by the backup
node's queue (sim/engine.py), connects possibly lost (`loss`).

Per client, as in Shoal: an ImportStateMachine per target with its own replay list,
failover NIDs and attempts; a ServerRecovery slot in each target's window. Aggregated: the
adaptive-timeout estimate (every client saw the same replies before the death, so one
ImportTimeouts stands for all), the node's service (one FIFO queue, not one per connection),
and the workload before the death (only what it left behind: who had a request in flight,
who holds which uncommitted transnos).
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from shoal.protocol.adaptive import ImportTimeouts
from shoal.protocol.import_state import ImportState as S
from shoal.protocol.import_state import ImportStateMachine, ReplayEntry
from shoal.protocol.messages import Request
from shoal.protocol.presence import Presence
from shoal.protocol.recovery_actions import Action
from shoal.protocol.transno import make_transno
from shoal.sim.client import SimClient
from shoal.sim.engine import EventLoop, ServerQueue
from shoal.sim.params import Scenario
from shoal.sim.records import Counters, Marks, RunResult
from shoal.sim.server import NEW_EPOCH, SimTarget

PRIMARY, BACKUP = "nid-primary", "nid-backup"
OLD_EPOCH = 1
COMMITTED_SEQ = 1000  # last_committed's sequence on the dead server (any value will do)
HORIZON_S = 3600.0  # a run that is not over an hour after the death is cut there
# ... or after this many events per import: a storm of retries that feeds itself (a
# congestion collapse) would otherwise run for ever; the result then says it was cut
EVENTS_PER_IMPORT = 60
ABORT_GRACE_S = 1.0


@contextmanager
def _no_gc() -> Iterator[None]:
    """A run allocates millions of short-lived tuples among a million long-lived objects:
    the cyclic collector would scan the long-lived ones again and again (three times the
    run's time at 100,000 clients). Nothing here makes cycles that must go before it ends."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class World:
    """Everything one run holds; `run()` plays it and returns the result."""

    def __init__(self, scenario: Scenario, clients: int, seed: int = 1,
                 trace: bool = False) -> None:
        self.scenario = scenario
        # every action the windows returned, in order (tests compare it with a plain script)
        self.trace: list[Action] | None = [] if trace else None
        self.dead: set[int] = set()
        self.policy = scenario.client
        self.n = clients
        self.rng = random.Random(seed)
        self.loop = EventLoop()
        self.queue = ServerQueue(self.loop, scenario.server.workers)
        self.counters = Counters()
        self.backup = BACKUP
        self.at = ImportTimeouts(self.policy.at)
        # one reply before the death sets the estimates every client starts from
        rtt = 2 * scenario.network.latency_s
        self.at.reply_received(-1.0, -1.0 - rtt - self.policy.service_estimate_s,
                               self.policy.service_estimate_s)
        self.targets: list[SimTarget] = []
        self.imports: list[SimClient] = []
        self.live = 0
        self.start_at = 0.0  # when the targets start on the backup (set by _schedule)
        self.replays = 0  # uncommitted requests held by all clients
        with _no_gc():
            self._build()

    # -- the state at the death -----------------------------------------------------------
    def _build(self) -> None:
        sc, wl, rng = self.scenario, self.scenario.workload, self.rng
        lc = make_transno(OLD_EPOCH, COMMITTED_SEQ)
        n_dead = round(self.n * wl.dead)
        dead = self.dead = set(rng.sample(range(self.n), n_dead))
        active = [i for i in range(self.n) if rng.random() < wl.active]
        busy = set(active)
        presence = None
        if sc.window.ask_period_s is not None:
            presence = Presence(bound=sc.window.dead_bound_s)
            if wl.dead_closed_s is not None:
                for i in dead:
                    presence.closed(f"c{i}", wl.dead_closed_s)
        for t in range(sc.targets):
            name = f"sim-OST{t:04x}"
            owners = self._uncommitted(active)
            known = {f"c{i}": lc for i in range(self.n)}
            target = SimTarget(self, name, known, lc, presence)
            self.targets.append(target)
            for i in range(self.n):
                if i in dead:
                    continue
                cid = f"c{i}"
                sm = ImportStateMachine(name, [PRIMARY, BACKUP], -1.0)
                sm.connect_start(-1.0)
                sm.connected(-1.0, epoch=OLD_EPOCH, last_committed=lc, recovering=False,
                             node=PRIMARY)
                for seq, xid in owners.get(i, ()):
                    sm.record(Request(xid, "write", name), transno=make_transno(OLD_EPOCH, seq),
                              last_committed=lc, nbytes=wl.replay_bytes)
                c = SimClient(self, cid, t, sm)
                target.clients[cid] = c
                self.imports.append(c)
        self.live = len(self.imports)
        for c in self.imports:
            if int(c.cid[1:]) in busy:
                c.pending_xid = 1 << 40  # the request in flight (its xid is never reused)
                c.sm.sent(c.pending_xid)

    def _uncommitted(self, active: list[int]) -> dict[int, list[tuple[int, int]]]:
        """Which client holds which uncommitted transno: every write the dead server acked
        since its last commit, spread over the active clients in the order they came."""
        sc, wl = self.scenario, self.scenario.workload
        owners: dict[int, list[tuple[int, int]]] = {}
        if not active:
            return owners
        if wl.replays_per_client is not None:
            order = [i for _ in range(wl.replays_per_client)
                     for i in self.rng.sample(active, len(active))]
        else:
            # the server acks what its clients send, up to what it can do
            rate = min(sc.server.acked_ops_s, len(active) * wl.client_ops_s)
            count = round(rate * sc.server.commit_interval_s * wl.commit_age)
            order = [self.rng.choice(active) for _ in range(count)]
        self.replays += len(order)
        for k, i in enumerate(order):
            owners.setdefault(i, []).append((COMMITTED_SEQ + 1 + k, 1 + k))
        return owners

    # -- the failover's timeline ----------------------------------------------------------
    def _schedule(self) -> Marks:
        sc, pol, loop, rng = self.scenario, self.policy, self.loop, self.rng
        a = sc.agent
        m = Marks()
        m.detect = a.detect_s
        m.fenced = m.detect + a.fence_s
        m.taken = m.fenced + a.take_s
        m.started = m.taken + a.start_s
        self.start_at = m.started
        for t in self.targets:
            loop.at(m.started, t.start)
        m.notified = m.started
        if pol.ir:
            step = sc.server.notify_s
            k = 0
            for t in self.targets:
                for c in t.clients.values():
                    k += 1
                    if not sc.network.lost(rng):
                        loop.at(m.started + k * step + sc.network.latency_s,
                                c.ir_notice, BACKUP, NEW_EPOCH)
            m.notified = m.started + k * step
        timeout = self.at.attempt_timeout(0.0, pol.fixed_timeout_s)
        for c in self.imports:
            if c.pending_xid:  # sent just before the death: its reply never comes
                sent = -rng.random() * 2 * sc.network.latency_s
                if sc.fault == "kill":
                    loop.at(sc.network.latency_s, c.server_lost, pol.retry_dead_first)
                else:
                    loop.at(sent + timeout, c.server_lost, pol.retry_dead_first)
            else:
                if sc.fault == "kill":
                    loop.at(sc.network.latency_s, c.connection_reset)
                if rng.random() >= sc.workload.silent:
                    loop.at(rng.random() * pol.ping_interval_s, c.idle_ping)
        return m

    # -- messages ---------------------------------------------------------------------------
    def reply(self, fn: Callable[..., None], *args: Any) -> None:
        self.loop.after(self.scenario.network.latency_s, fn, *args)

    def ping(self, c: SimClient) -> None:
        """An idle client's ping to its (dead) server: no answer within its timeout."""
        timeout = self.at.attempt_timeout(self.loop.now, self.policy.fixed_timeout_s)
        self.loop.after(timeout, c.server_lost, self.policy.retry_dead_first)

    def send_connect(self, c: SimClient, nid: str, gen: int, initial: bool,
                     timeout: float) -> None:
        net, loop = self.scenario.network, self.loop
        self.counters.connects += 1
        if nid == BACKUP and not net.lost(self.rng):
            arrival = loop.now + net.latency_s
            t = self.targets[c.target]
            if arrival < self.start_at:  # ENODEV: the node does not serve it yet
                loop.at(arrival + net.latency_s, c.connect_failed, gen)
                return
            done = self.queue.serve_at(arrival, self.scenario.server.connect_s, t.connect, c,
                                       gen, initial)
            if done + net.latency_s <= loop.now + timeout:
                return  # the answer comes in time: no timer needed
        elif nid != BACKUP and self.scenario.fault == "kill":
            loop.after(2 * net.latency_s, c.connect_failed, gen)  # the port refuses
            return
        # a powered-off node, a lost message, or an answer that comes too late: the client
        # gives up at its timeout (the node still does the work of a late one)
        loop.after(timeout, self._connect_timeout, c, gen)

    def _connect_timeout(self, c: SimClient, gen: int) -> None:
        if gen == c.gen and c.sm.state is S.CONNECTING:
            self.counters.connect_timeouts += 1
            c.connect_failed(gen)

    def send_replay(self, c: SimClient, entry: ReplayEntry, gen: int) -> None:
        t = self.targets[c.target]
        arrival = self.loop.now + self.scenario.network.delay(entry.nbytes)
        self.queue.serve_at(arrival, self.scenario.server.replay_recv_s, t.replay, c, gen,
                            entry)

    def send_final_ping(self, c: SimClient, gen: int) -> None:
        t = self.targets[c.target]
        self.queue.serve_at(self.loop.now + self.scenario.network.latency_s,
                            self.scenario.server.ping_s, t.final_ping, c, gen)

    def send_resend(self, c: SimClient, gen: int) -> None:
        self.queue.serve_at(self.loop.now + self.scenario.network.latency_s,
                            self.scenario.server.io_s, self.reply, c.resend_answered, gen)

    def evicted(self, clients: dict[str, Any], cid: str, cause: str) -> None:
        """A target's window evicted `cid` (one of its `clients`, or a dead one)."""
        c = clients.get(cid)
        if c is None:
            self.counters.dead_evicted += 1
            return
        if cause == "new_export":
            return  # the client itself came back as a new one
        self.counters.evicted_live += 1
        self.reply(c.evicted)

    def client_resumed(self) -> None:
        self._resumed += 1  # counted for the progress bar

    def window_aborted(self) -> None:
        """A window hit its hard limit: play ABORT_GRACE_S more (the evictions arrive),
        then stop. The result says it did not converge."""
        self.loop.after(ABORT_GRACE_S, self.loop.stop)

    # -- running ----------------------------------------------------------------------------
    def run(self, tick: Callable[[float, int, int], None] | None = None) -> RunResult:
        """Play the failover; `tick(now, resumed, live)` now and then (progress)."""
        t0 = time.perf_counter()
        self._resumed = 0
        with _no_gc():
            return self._play(tick, t0)

    def _play(self, tick: Callable[[float, int, int], None] | None, t0: float) -> RunResult:
        marks = self._schedule()

        def progress(now: float) -> None:
            if tick is not None:
                tick(now, self._resumed, self.live)

        cut = self.loop.run(HORIZON_S, progress,
                            max_events=EVENTS_PER_IMPORT * max(self.live, 1000)
                            + 10 * self.replays)
        progress(self.loop.now)
        # reconnected within the window: a client evicted and back as a new one later
        # counts in `resumed` only
        connected = [c.connected_at for c in self.imports
                     if c.connected_at is not None and not c.evictions]
        replayed = [c.replayed_at for c in self.imports if c.replayed_at is not None]
        resumed = [c.resumed_at for c in self.imports if c.resumed_at is not None]
        marks.reconnected = max(connected, default=marks.notified)
        done = [t.completed_at for t in self.targets]
        marks.recovered = max((d for d in done if d is not None), default=HORIZON_S)
        marks.resumed = max(resumed, default=marks.recovered)
        if cut or len(resumed) < self.live or None in done:
            # some client never came back, or the run was cut: a lower bound, flagged
            marks.resumed = max(self.loop.now, marks.resumed)
            marks.recovered = min(marks.recovered, marks.resumed)
        return RunResult(self.scenario.name, self.scenario.fault, self.n, self.live, marks,
                         self.counters, self.queue.busy_s, self.queue.max_wait,
                         self.loop.events, time.perf_counter() - t0,
                         sorted(connected), sorted(replayed), sorted(resumed),
                         converged=not cut and len(resumed) == self.live)


def simulate(scenario: Scenario, clients: int, seed: int = 1,
             tick: Callable[[float, int, int], None] | None = None) -> RunResult:
    return World(scenario, clients, seed).run(tick)
