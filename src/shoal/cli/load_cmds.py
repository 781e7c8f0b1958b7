"""`shoal load`: client load with verification (the workload every scenario runs under)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shoal.cli.common import console, dir_option, handle_errors, json_option, print_json
from shoal.workload.load import run_load


@click.command()
@dir_option
@click.option("--clients", type=click.IntRange(1, 10_000), default=8, show_default=True)
@click.option("--duration", type=click.FloatRange(0, 86_400), default=10.0, show_default=True,
              help="Seconds.")
@click.option("--procs", type=click.IntRange(0, 1024), default=0,
              help="Worker processes (default: one per core).")
@click.option("--grace", type=click.FloatRange(min=0), default=None,
              help="Seconds past the duration to finish and verify before giving up "
                   "[default: max(30, duration)].")
@json_option
@handle_errors
def load(cluster_dir: Path, clients: int, duration: float, procs: int, grace: float | None,
         as_json: bool) -> None:
    """N clients write, overwrite, read back and verify known content; exit 1 on loss, or
    when the run had to give up before it verified everything."""
    # a SIGTERM ends the run like ^C: its workers are killed on the way out, not orphaned
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if as_json:
        summary = run_load(cluster_dir, clients=clients, duration=duration, procs=procs,
                           grace=grace)
        print_json(summary.to_dict())
    else:
        with Progress(TextColumn("load"), BarColumn(), TextColumn("{task.fields[ops]} ops"),
                      TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task("load", total=duration, ops=0)
            summary = run_load(cluster_dir, clients=clients, duration=duration, procs=procs,
                               grace=grace, on_progress=lambda t, n: bar.update(task, completed=min(t, duration),
                                                                   ops=n))
        table = Table(title=f"load: {clients} clients, {summary.duration_s:.1f}s")
        table.add_column("measure")
        table.add_column("value", justify="right")
        for k, v in summary.to_dict().items():
            if k != "error_samples":
                table.add_row(k, str(v))
        console.print(table)
        for sample in summary.error_samples:
            console.print(f"  [yellow]{sample}[/yellow]")
    if not summary.ok:
        sys.exit(1)


def register(cli: click.Group) -> None:
    cli.add_command(load)
