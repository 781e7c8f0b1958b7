"""sim/: the event loop and queue, and the simulator agreeing with a plain script of the
protocol classes on one failover (same state changes, same server actions, same order)."""

from __future__ import annotations

import pytest

from shoal.cli.sim_cmds import all_presets
from shoal.protocol.import_state import ImportState as S
from shoal.protocol.import_state import ImportStateMachine
from shoal.protocol.presence import Presence
from shoal.protocol.recovery import ServerRecovery
from shoal.protocol.recovery_actions import Accept, Action, Complete, Evict, Execute
from shoal.sim.engine import EventLoop, ServerQueue
from shoal.sim.params import Scenario
from shoal.sim.world import BACKUP, PRIMARY, World


def test_events_run_in_time_order_and_ties_in_schedule_order() -> None:
    loop = EventLoop()
    seen: list[str] = []
    loop.at(2.0, seen.append, "c")
    loop.at(1.0, seen.append, "a")
    loop.at(1.0, seen.append, "b")
    loop.after(0.5, lambda: loop.after(0.1, seen.append, "nested"))
    assert loop.run(10.0) is False
    assert seen == ["nested", "a", "b", "c"] and loop.now == 2.0


def test_a_run_stops_at_its_horizon_and_says_so() -> None:
    loop = EventLoop()
    loop.at(5.0, lambda: None)
    assert loop.run(1.0) is True and loop.pending == 1


def test_one_worker_serves_in_turn_and_many_in_parallel() -> None:
    loop = EventLoop()
    one, four = ServerQueue(loop, 1), ServerQueue(loop, 4)
    assert [one.serve(1.0, lambda: None) for _ in range(4)] == [1.0, 2.0, 3.0, 4.0]
    assert [four.serve(1.0, lambda: None) for _ in range(5)] == [1.0, 1.0, 1.0, 1.0, 2.0]
    assert one.max_wait == 3.0 and one.backlog() == 4.0


# -- the simulator against a plain script -------------------------------------------------
def _scenario() -> Scenario:
    """Shoal, a power-off, 6 clients of which one is dead (its MGS link closed a minute
    before: the window is told at its first question), every client with 2 changes."""
    return all_presets()["shoal"].build("power-off").but(
        workload__dead=1 / 6, workload__dead_closed_s=-60.0, workload__replays_per_client=2)


def _script(world: World) -> tuple[dict[str, list[S]], list[Action]]:
    """The same failover driven by hand, in the order a real cluster would go: each live
    client told by IR, reconnects and replays all it holds, then sends its final ping; the
    MGS then declares the dead one dead; the window closes; every client resumes."""
    sc = world.scenario
    target = world.targets[0]
    sms: dict[str, ImportStateMachine] = {}
    for cid, c in target.clients.items():
        sm = ImportStateMachine(target.name, [PRIMARY, BACKUP], -1.0)
        sm.connect_start(-1.0)
        sm.connected(-1.0, epoch=1, last_committed=target.last_committed, recovering=False)
        for e in c.sm.replay:  # what the simulator's client holds, before it ran
            sm.record(e.request, transno=e.transno, last_committed=target.last_committed,
                      nbytes=e.nbytes)
        sms[cid] = sm
    now = 10.0
    rec = ServerRecovery(target.name, target.known, target.last_committed, now,
                         soft=sc.window.soft_s, hard=sc.window.hard_s, ir=True,
                         ir_factor=sc.window.ir_factor, reach_s=sc.window.reach_s)
    log: list[Action] = []

    def carry(actions: list[Action]) -> None:
        for a in actions:
            log.append(a)
            if isinstance(a, Execute):
                carry(rec.replay_finished(a.client, a.transno, ok=True))

    for cid, sm in sms.items():
        sm.disconnect(now)
        sm.move_to(BACKUP)
        sm.connect_start(now)
        carry(rec.client_connected(cid, now))
        assert sm.connected(now, epoch=2, last_committed=target.last_committed,
                            recovering=True) is S.REPLAY
    for cid, sm in sms.items():
        while (e := sm.next_replay()) is not None:
            carry(rec.replay_received(cid, e.transno))
            sm.replayed(e)
        sm.replay_done(now)
        sm.locks_done(now)
        carry(rec.replay_done(cid))
    presence = Presence(bound=sc.window.dead_bound_s)
    for i in world.dead:
        presence.closed(f"c{i}", -60.0)
    for cid in presence.dead(rec.awaited(), (), now):
        carry(rec.client_dead(cid))
    assert not rec.recovering
    for sm in sms.values():
        sm.recovery_done(now)
        sm.resend_done(now)
    return {cid: [h.state for h in sm.history] for cid, sm in sms.items()}, log


def _key(a: Action) -> tuple[object, ...]:
    if isinstance(a, Execute):
        return ("execute", a.client, a.transno, a.gap)
    if isinstance(a, Evict):
        return ("evict", a.client, a.cause)
    if isinstance(a, Complete):
        return ("complete", a.evicted, a.replayed)
    assert isinstance(a, Accept)
    return ("accept", a.client, a.recovering)


def test_the_simulator_and_a_plain_script_agree_on_one_failover() -> None:
    world = World(_scenario(), 6, seed=3, trace=True)
    assert len(world.dead) == 1 and world.replays == 12
    histories, log = _script(world)
    result = world.run()
    assert result.converged and result.counters.dead_evicted == 1
    sim_histories = {cid: [h.state for h in c.sm.history]
                     for cid, c in world.targets[0].clients.items()}
    assert sim_histories == histories
    assert next(iter(histories.values())) == [
        S.NEW, S.CONNECTING, S.FULL, S.DISCONN, S.CONNECTING, S.REPLAY, S.REPLAY_LOCKS,
        S.REPLAY_WAIT, S.RECOVER, S.FULL]
    # the server's decisions, in order: who was accepted, which replay ran when (the dead
    # client's two transnos are gaps skipped once it is declared dead), the close
    assert world.trace is not None
    assert [_key(a) for a in world.trace] == [_key(a) for a in log]
    executes = [a for a in log if isinstance(a, Execute)]
    assert [a.transno for a in executes] == sorted(a.transno for a in executes)
    assert sum(a.gap for a in executes) >= 1


def test_the_same_seed_gives_the_same_run() -> None:
    sc = all_presets()["shoal"].build("power-off")
    a, b = World(sc, 300, seed=7).run(), World(sc, 300, seed=7).run()
    assert a.to_json() | {"wall_s": 0} == b.to_json() | {"wall_s": 0}


@pytest.mark.parametrize("fault", ["power-off", "kill"])
def test_no_client_is_left_behind_and_nothing_is_lost(fault: str) -> None:
    r = World(all_presets()["shoal"].build(fault), 500).run()  # type: ignore[arg-type]
    assert r.converged and len(r.resumed_at) == 500
    assert r.counters.lost_replays == 0 and r.counters.evicted_live == 0
    assert r.counters.replays == World(all_presets()["shoal"].build(fault), 500).replays


def test_sim_imports_only_protocol_errors_and_config() -> None:
    """The simulator runs Shoal's sans-I/O code and nothing with sockets, clocks or a store
    (test_layers.py puts sim just above protocol; this also keeps store out)."""
    from pathlib import Path

    from tests.unit.test_layers import SRC, imports

    wrong = []
    for path in sorted((SRC / "sim").glob("*.py")):
        for mod in imports(Path(path)):
            parts = mod.split(".")
            if parts[0] == "shoal" and parts[1] not in ("protocol", "errors", "config", "sim"):
                wrong.append(f"{path.name} imports {mod}")
            if parts[0] in ("socket", "asyncio", "threading", "subprocess", "os"):
                wrong.append(f"{path.name} imports {mod}")
    assert not wrong
