"""`shoal torture`: faults under load, each checked; a table per fault kind (issue 18)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shoal.cli.common import console, dir_option, handle_errors, json_option, print_json
from shoal.errors import InvalidArgument
from shoal.rig.netns import check_supported
from shoal.workload.torture import DEFAULT_MIX, KINDS, Round, run_torture, summarize
from shoal.workload.torture_history import as_rounds, holding
from shoal.workload.torture_history import resume as resume_campaign
from shoal.workload.torture_rig import RIG_KINDS, run_rig_torture


def _mix(text: str | None, known: tuple[str, ...], default: tuple[str, ...]) -> list[str]:
    kinds = [k.strip() for k in (text or ",".join(default)).split(",") if k.strip()]
    bad = [k for k in kinds if k not in known]
    if bad or not kinds:
        raise InvalidArgument(f"--mix: unknown fault {', '.join(bad) or '(none)'}; "
                              f"known: {', '.join(known)}")
    return kinds


@click.command()
@dir_option
@click.option("--faults", type=click.IntRange(1, 100_000), default=20, show_default=True,
              help="How many faults, one per round.")
@click.option("--mix", default=None,
              help=f"Fault kinds to draw from, comma-separated: on a local cluster "
                   f"{', '.join(KINDS)} (default {','.join(DEFAULT_MIX)}; `lose` plants a "
                   f"lost write that the checks must find); on the rig "
                   f"{', '.join(RIG_KINDS)} (default: all).")
@click.option("--rig", "rig_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Strike the rig in this directory (shoal rig up; its file system "
                   "running) instead of the local cluster: power cuts, partitions, hangs.")
@click.option("--seed", type=int, default=1, show_default=True,
              help="The same seed draws the same faults on the same nodes.")
@click.option("--clients", type=click.IntRange(0, 1000), default=4, show_default=True,
              help="`shoal load` clients during each round (0: the probe only).")
@click.option("--history", type=click.Path(dir_okay=False, path_type=Path),
              help="Append every round (and the campaign's settings) here, as JSON lines.")
@click.option("--resume", is_flag=True,
              help="Go on with the campaign in --history from the round after its last, "
                   "with its settings (on the code it ran on).")
@json_option
@handle_errors
def torture(cluster_dir: Path, faults: int, mix: str | None, rig_dir: Path | None, seed: int,
            clients: int, history: Path | None, resume: bool, as_json: bool) -> None:
    """Strike the local cluster with faults from a mix, one at a time, under load; after
    each, heal and check that nothing acknowledged was lost or corrupt, every target is UP,
    no target is served twice and nothing failed over that should not have. Exit 1 if any
    check failed."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with holding(history):
        _campaign(cluster_dir, faults, mix, rig_dir, seed, clients, history, resume, as_json)


def _campaign(cluster_dir: Path, faults: int, mix: str | None, rig_dir: Path | None, seed: int,
              clients: int, history: Path | None, resume: bool, as_json: bool) -> None:
    before: list[Round] = []
    start = 0
    if resume:
        if history is None:
            raise InvalidArgument("--resume needs --history: the campaign to go on with")
        campaign = resume_campaign(history)
        s = campaign.settings
        faults, mix, seed, clients = s["faults"], ",".join(s["mix"]), s["seed"], s["clients"]
        if s.get("rig"):
            rig_dir = Path(s["rig"])
        else:
            cluster_dir = Path(s.get("dir", cluster_dir))
        before, start = as_rounds(campaign.rounds, Round), campaign.done
    if rig_dir is not None:
        check_supported()
        kinds = _mix(mix, RIG_KINDS, RIG_KINDS)
        where: Path = rig_dir
        run = run_rig_torture
    else:
        kinds = _mix(mix, KINDS, DEFAULT_MIX)
        where = cluster_dir
        run = run_torture
    if as_json:
        rounds = before + run(where, faults=faults, mix=kinds, seed=seed, clients=clients,
                              history=history, start=start)
        print_json({"rounds": [r.__dict__ | {"clean": r.clean} for r in rounds],
                    "summary": summarize(rounds), "clean": all(r.clean for r in rounds)})
    else:
        with Progress(TextColumn("torture"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[last]}"), TimeElapsedColumn(),
                      console=console) as bar:
            task = bar.add_task("torture", total=faults, completed=start, last="")

            def step(r: Round) -> None:
                verdict = "ok" if r.clean else "[red]FAILED[/red]"
                bar.update(task, advance=1, last=f"{r.kind} {r.node}: {verdict}")
                if not r.clean:
                    bar.console.print(f"round {r.index} ({r.kind} {r.node}) failed: "
                                      f"{r.__dict__}", highlight=False)

            rounds = before + run(where, faults=faults, mix=kinds, seed=seed, clients=clients,
                                  history=history, on_round=step, start=start)
        _table(rounds, faults, seed)
    if not all(r.clean for r in rounds):
        sys.exit(1)


def _table(rounds: list[Round], faults: int, seed: int) -> None:
    rows = summarize(rounds)
    # one column per fault kind, a row per measure: fits a terminal (or a CI log)
    table = Table(title=f"torture: {faults} faults, seed {seed}")
    table.add_column("measure")
    for row in rows:
        table.add_column(str(row["fault"]), justify="right")
    for measure in [k for k in rows[0] if k != "fault"]:
        table.add_row(measure, *(str(row[measure]) for row in rows))
    # all nine rig kinds need more than a log's 80 columns: never cut a name or a figure
    width, console.width = console.width, max(console.width, 24 + 12 * len(rows))
    try:
        console.print(table)
    finally:
        console.width = width


def register(cli: click.Group) -> None:
    cli.add_command(torture)
