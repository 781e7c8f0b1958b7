"""Runs over client counts and the sweeps that answer issue 22's design questions.

- `clients`: one preset over N = 10 ... 100,000 (and its anchor's N);
- `dead`: what the recovery window costs when 1% of the clients are dead: with the MGS's
  word on them (their connection closed a minute before: protocol/presence.py), without it
  (hung: the window's soft limit decides), and Lustre with IR for comparison;
- `fanout`: what the MGS's IR notices cost at 100,000 clients, notice by notice;
- `mds`: where the node saturates when every client replays at once (the diskless-root
  seed: "150+ clients all executing the same command"): each client holds one or four
  uncommitted changes, all replayed one at a time in transno order;
- `fixes`: what it would take for Shoal to stay under 10 s at 100,000 clients;
- `loss`: what lost connects and IR notices cost (the network model's loss rate).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from shoal.sim.params import Fault, Scenario
from shoal.sim.presets import SWEEP_CLIENTS, Preset
from shoal.sim.records import RunResult
from shoal.sim.world import simulate

Tick = Callable[[float, int, int], None]
Progress = Callable[[str, int], Tick | None]  # (label, imports) -> a tick for that run


@dataclass
class SweepRow:
    label: str
    clients: int
    result: RunResult

    def to_json(self) -> dict[str, Any]:
        return {"case": self.label, **self.result.to_json()}


def client_counts(preset: Preset, chosen: Iterable[int] = ()) -> list[int]:
    """The Ns to run: those chosen, else the sweep and the preset's anchor."""
    picked = sorted(set(chosen))
    return picked or sorted({*SWEEP_CLIENTS, preset.anchor_clients})


def over_clients(preset: Preset, fault: Fault, counts: Iterable[int], seed: int = 1,
                 progress: Progress | None = None) -> list[RunResult]:
    scenario = preset.build(fault)
    out = []
    for n in counts:
        tick = progress(f"{preset.name} N={n:,}", n * scenario.targets) if progress else None
        out.append(simulate(scenario, n, seed, tick))
    return out


def _run(cases: list[tuple[str, Scenario, int]], seed: int,
         progress: Progress | None) -> list[SweepRow]:
    rows = []
    for label, sc, n in cases:
        tick = progress(label, n * sc.targets) if progress else None
        rows.append(SweepRow(label, n, simulate(sc, n, seed, tick)))
    return rows


def dead_clients(presets: dict[str, Preset], n: int = 10_000, seed: int = 1,
                 progress: Progress | None = None) -> list[SweepRow]:
    shoal = presets["shoal"].build("power-off")
    lustre = presets["lustre-ir"].build("power-off")
    cases = [
        ("shoal, none dead", shoal, n),
        ("shoal, 1% dead, MGS saw them go", shoal.but(workload__dead=0.01,
                                                      workload__dead_closed_s=-60.0), n),
        ("shoal, 1% dead at the failure", shoal.but(workload__dead=0.01,
                                                    workload__dead_closed_s=0.0), n),
        ("shoal, 1% hung (no evidence)", shoal.but(workload__dead=0.01,
                                                   workload__dead_closed_s=None), n),
        ("lustre-ir, none dead", lustre, n),
        ("lustre-ir, 1% dead", lustre.but(workload__dead=0.01), n),
    ]
    return _run(cases, seed, progress)


def ir_fanout(presets: dict[str, Preset], n: int = 100_000, seed: int = 1,
              progress: Progress | None = None) -> list[SweepRow]:
    """The MGS sends one notice after another; what each costs decides when the last
    client hears. The node's workers are raised so that the fan-out alone is measured, and
    most clients are idle: a client with a request in flight finds the backup by its own
    timeout (3.25 s) anyway, an idle one only at its next ping (every 5 s) or by IR."""
    base = presets["shoal"].build("power-off").but(server__workers=16)
    cases = [(f"{int(active * 100)}% active, notice {us} us", base.but(
        server__notify_s=us * 1e-6, workload__active=active), n)
        for active in (1.0, 0.1) for us in (60, 5)]
    return _run(cases, seed, progress)


def mds_replay(presets: dict[str, Preset], counts: Iterable[int] = (1_000, 3_000, 10_000,
                                                                    30_000),
               seed: int = 1, progress: Progress | None = None) -> list[SweepRow]:
    """Every client replays at once: replays run one at a time in transno order, so the
    replay phase grows with N x changes per client whatever the node's workers."""
    base = presets["shoal"].build("power-off").but(server__workers=16)
    cases = [(f"{k} change(s) per client", base.but(workload__replays_per_client=k), n)
             for k in (1, 4) for n in counts]
    return _run(cases, seed, progress)


def fixes(presets: dict[str, Preset], n: int = 100_000, seed: int = 1,
          progress: Progress | None = None) -> list[SweepRow]:
    """Shoal at 100,000 clients as it is, then with each change that the model says is
    needed, one on top of the other."""
    base = presets["shoal"].build("power-off")
    steps = [
        ("as it is: one event loop, 2 s connect timeout", base),
        ("8 request workers (processes) per node", base.but(server__workers=8)),
        ("... and IR notices at 5 us (batched)", base.but(server__workers=8,
                                                         server__notify_s=5e-6)),
        ("... and 32 workers", base.but(server__workers=32, server__notify_s=5e-6)),
    ]
    return _run([(label, sc, n) for label, sc in steps], seed, progress)


def lossy_network(presets: dict[str, Preset], n: int = 1_000, seed: int = 1,
                  progress: Progress | None = None) -> list[SweepRow]:
    """Connects and IR notices lost at random: each loss costs its client a timeout. (Over
    TCP a lost segment is resent after a retransmission timeout instead; this is the
    pessimistic bound, and a notice lost with its connection is what it models best.)"""
    base = presets["shoal"].build("power-off")
    cases = [(f"{loss:.0%} of connects and notices lost", base.but(network__loss=loss), n)
             for loss in (0.0, 0.01, 0.05, 0.2)]
    return _run(cases, seed, progress)


SWEEPS: dict[str, Callable[..., list[SweepRow]]] = {
    "dead": dead_clients, "fanout": ir_fanout, "mds": mds_replay, "fixes": fixes,
    "loss": lossy_network}
