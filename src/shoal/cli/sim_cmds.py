"""`shoal sim`: a failover of N clients in virtual time, on Shoal's own protocol code (sim/)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shoal.cli.common import console, handle_errors, json_option, print_json
from shoal.sim.presets import Preset, ShoalSources, presets
from shoal.sim.records import PHASES, RunResult
from shoal.sim.sweeps import SWEEPS, SweepRow, client_counts, over_clients
from shoal.sim.sweeps import Progress as Tracker

MAX_IMPORTS = 1_000_000  # clients x targets; past this a run needs more memory than it is worth


def shoal_sources() -> ShoalSources:
    """Shoal's agent and client numbers, read where they live (sim/ may not import them)."""
    from shoal.agent.liveness import ASK_PERIOD
    from shoal.agent.silence import SILENT_FENCE
    from shoal.client import recovery
    from shoal.client.client import Client
    from shoal.workload.failover_phases import BUDGET_S

    timeout = inspect.signature(Client.__init__).parameters["connect_timeout"].default
    return ShoalSources(silent_fence_s=SILENT_FENCE, ask_period_s=ASK_PERIOD,
                        connect_timeout_s=float(timeout), backoff_min_s=recovery.BACKOFF_MIN,
                        backoff_max_s=recovery.BACKOFF_MAX,
                        busy_backoff_s=recovery.BUSY_BACKOFF,
                        replay_window=recovery.REPLAY_WINDOW, budget=dict(BUDGET_S))


def all_presets() -> dict[str, Preset]:
    return presets(shoal_sources())


PRESET_NAMES = ("cray2009", "lustre-ir", "lustre-noir", "shoal", "shoal-noir")


@contextmanager
def _progress(quiet: bool) -> Iterator[Tracker | None]:
    """A bar per run, filled as its clients resume I/O (none with --json)."""
    if quiet:
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("clients resumed, t={task.fields[now]:.1f}s virtual"),
                  TimeElapsedColumn(), console=console, transient=False) as bar:

        def track(label: str, imports: int) -> Any:
            task = bar.add_task(label, total=imports, now=0.0)

            def tick(now: float, resumed: int, live: int) -> None:
                bar.update(task, completed=resumed, total=live, now=now)

            return tick

        yield track


def _s(seconds: float) -> str:
    """Three significant digits, never an exponent (a Cray failover is 622 s, not 6.22e+02)."""
    return f"{seconds:,.0f}" if seconds >= 100 else f"{seconds:.3g}"


def _row(r: RunResult, label: str) -> list[str]:
    ph = r.phases
    flag = "" if r.converged else " (cut)"
    return [label, f"{r.imports:,}", *(_s(ph[p]) for p in PHASES),
            f"[bold]{_s(r.total_s)}[/bold]{flag}", f"{r.counters.replays:,}",
            f"{r.counters.evicted_live:,}", f"{r.counters.lost_replays:,}",
            f"{r.wall_s:.1f}"]


def _table(title: str, rows: list[tuple[str, RunResult]],
           budget: dict[str, float] | None = None) -> Table:
    table = Table(title=title)
    table.add_column("N", justify="right")
    table.add_column("imports", justify="right")
    for p in PHASES:
        table.add_column(p, justify="right")
    for col in ("total_s", "replays", "evicted", "lost", "wall_s"):
        table.add_column(col, justify="right")
    for label, r in rows:
        table.add_row(*_row(r, label))
    if budget:
        # the bench's recover_s budget covers reconnect and replay; resume has none
        cells = [f"{budget[p]:g}" if p in budget else "" for p in PHASES]
        cells[PHASES.index("reconnect_s")] = f"({budget.get('recover_s', 0):g})"
        table.add_row("budget", "", *cells, f"{budget.get('total_s', 0):g}", "", "", "", "",
                      style="dim")
    return table


def _headline(preset: Preset, runs: list[RunResult]) -> RunResult:
    if len(runs) == 1:
        return runs[0]
    return next((r for r in runs if r.clients == preset.anchor_clients), runs[-1])


def _plot(ps: dict[str, Preset], results: dict[str, list[RunResult]],
          plot_dir: Path) -> list[Path]:
    """Total vs N for the presets run, and the timeline of one headline run (Shoal's when
    it was run)."""
    from shoal.sim import plots

    stem = "sim" if len(results) > 1 else f"sim-{next(iter(results))}"
    anchors = {n: (ps[n].anchor_clients, *ps[n].expect) for n in results}
    first = "shoal" if "shoal" in results else next(iter(results))
    return [plots.total_vs_clients(results, plot_dir / f"{stem}-total.png", anchors),
            plots.timeline(_headline(ps[first], results[first]),
                           plot_dir / f"sim-{first}-timeline.png")]


def _sweep(name: str, as_json: bool, seed: int) -> None:
    with _progress(as_json) as track:
        rows: list[SweepRow] = SWEEPS[name](all_presets(), seed=seed, progress=track)
    if as_json:
        print_json({"sweep": name, "cases": [r.to_json() for r in rows]})
        return
    console.print(_table(f"shoal sim --sweep {name}",
                         [(f"{r.label}, N={r.clients:,}", r.result) for r in rows]))


@click.command()
@click.option("--preset", type=click.Choice([*PRESET_NAMES, "all"]),
              help="Whose failover: Cray 2009, Lustre 2.x with or without IR, or Shoal "
                   "(all: each in turn, one plot).")
@click.option("--clients", "counts", type=click.IntRange(1, MAX_IMPORTS), multiple=True,
              help="Client count (repeat for several); default 10 -> 100,000 and the "
                   "preset's anchor.")
@click.option("--fault", type=click.Choice(["power-off", "kill"]), default=None,
              help="How the server dies: power-off (silent) or kill (its port refuses; the "
                   "local cluster's bench). Default: power-off.")
@click.option("--sweep", type=click.Choice(sorted(SWEEPS)), default=None,
              help="Instead: a design sweep (dead clients, IR fan-out, MDS replay, fixes, loss).")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write PNG plots here: total vs N, and the timeline of the headline run.")
@click.option("--seed", type=int, default=1, show_default=True,
              help="Seed of the run's random draws (who is active, ping phases, losses).")
@json_option
@handle_errors
def sim(preset: str | None, counts: tuple[int, ...], fault: str | None, sweep: str | None,
        plot_dir: Path | None, seed: int, as_json: bool) -> None:
    """Simulate a failover of N clients in virtual time, driving Shoal's own protocol code
    (import state machine, recovery window, adaptive timeouts, presence). docs/sim.md."""
    if sweep is not None:
        if preset or counts:
            raise click.UsageError("--sweep runs its own presets and client counts")
        _sweep(sweep, as_json, seed)
        return
    if preset is None:
        raise click.UsageError("say which --preset (or --sweep)")
    chosen = PRESET_NAMES if preset == "all" else (preset,)
    ps = all_presets()
    results: dict[str, list[RunResult]] = {}
    for name in chosen:
        p = ps[name]
        sc = p.build(fault or p.default_fault)  # type: ignore[arg-type]
        too_big = [n for n in client_counts(p, counts) if n * sc.targets > MAX_IMPORTS]
        if too_big:
            raise click.BadParameter(f"{too_big[0]:,} clients x {sc.targets} targets is more "
                                     f"than {MAX_IMPORTS:,} imports", param_hint="--clients")
    for name in chosen:
        p = ps[name]
        with _progress(as_json) as track:
            results[name] = over_clients(p, fault or p.default_fault,  # type: ignore[arg-type]
                                         client_counts(p, counts), seed, track)
        if not as_json:
            _report(p, results[name])
    paths = _plot(ps, results, plot_dir) if plot_dir is not None else []
    if as_json:
        out = [_json(ps[name], runs) for name, runs in results.items()]
        print_json({**out[0], "plots": [str(x) for x in paths]} if len(out) == 1 else
                   {"presets": out, "plots": [str(x) for x in paths]})
        return
    for path in paths:
        console.print(f"wrote {path}")


def _json(p: Preset, runs: list[RunResult]) -> dict[str, Any]:
    head = _headline(p, runs)
    return {"preset": p.name, "fault": runs[0].fault, "source": p.source,
            "expect_s": list(p.expect), "anchor_clients": p.anchor_clients,
            "total_s": head.total_s, "clients": head.clients, "converged": head.converged,
            "runs": [r.to_json() for r in runs]}


def _report(p: Preset, runs: list[RunResult]) -> None:
    head = _headline(p, runs)
    budget = p.build(runs[0].fault).budget or None  # type: ignore[arg-type]
    console.print(_table(f"shoal sim --preset {p.name} ({runs[0].fault}): {p.source}",
                         [(f"{r.clients:,}", r) for r in runs], budget))
    lo, hi = p.expect
    note = ""
    if head.clients == p.anchor_clients:
        where = "within" if lo <= head.total_s <= hi and head.converged else "OUTSIDE"
        note = f" ({where} the anchor's {lo:g}-{hi:g} s)"
    if not head.converged:
        note += (": the run was cut before every client was back (no recovery: a window gave "
                 "up on its clients, or one never opened)")
    console.print(f"total_s at N={head.clients:,}: [bold]{_s(head.total_s)} s[/bold]{note}")


def register(cli: click.Group) -> None:
    cli.add_command(sim)
