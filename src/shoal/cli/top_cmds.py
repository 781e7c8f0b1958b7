"""`shoal top`: `shoal status` kept up to date in the terminal, as crm_mon does for Pacemaker."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.console import Group
from rich.live import Live
from rich.text import Text

from shoal.cli.cluster_cmds import read_fleet, status_tables
from shoal.cli.common import console, dir_option, fs_option, handle_errors
from shoal.errors import ShoalError


def frame(cluster_dir: Path, fs_name: str | None) -> Group:
    stamp = Text(f"shoal top  {time.strftime('%H:%M:%S')}  (Ctrl-C ends)", style="bold")
    try:
        return Group(stamp, *status_tables(read_fleet(cluster_dir, fs_name)))
    except ShoalError as exc:  # the store or the nodes away for a moment: say so, go on
        return Group(stamp, Text(f"not read: {exc}", style="red"))


@click.command()
@dir_option
@fs_option
@click.option("--interval", type=click.FloatRange(0.1, 3600), default=1.0, show_default=True,
              help="Seconds between refreshes.")
@click.option("--frames", type=click.IntRange(1), default=None,
              help="Stop after this many refreshes (default: until Ctrl-C).")
@handle_errors
def top(cluster_dir: Path, fs_name: str | None, interval: float, frames: int | None) -> None:
    """Nodes, targets and recent events, refreshed in place (one frame after another when
    the output is not a terminal)."""
    n = 0
    try:
        if console.is_terminal:
            with Live(frame(cluster_dir, fs_name), console=console, screen=True,
                      auto_refresh=False) as live:
                while frames is None or n < frames - 1:
                    time.sleep(interval)
                    live.update(frame(cluster_dir, fs_name), refresh=True)
                    n += 1
            return
        while frames is None or n < frames:
            if n:
                time.sleep(interval)
            console.print(frame(cluster_dir, fs_name))
            console.file.flush()
            n += 1
    except KeyboardInterrupt:
        pass


def register(cli: click.Group) -> None:
    cli.add_command(top)
