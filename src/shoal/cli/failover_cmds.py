"""`shoal failover|failback TARGET` and `shoal events`: manual control and the event log."""

from __future__ import annotations

import asyncio
import datetime
import os
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from shoal.agent.control import handover
from shoal.agent.events import read_events
from shoal.agent.records import Event
from shoal.cli.common import (
    console,
    dir_option,
    fs_option,
    handle_errors,
    json_option,
    print_json,
    run,
    site_of,
)
from shoal.errors import NotFound
from shoal.store import open_store


def _move(cluster_dir: Path, target: str, to: str | None, reason: str, timeout: float,
          as_json: bool) -> None:
    spec = site_of(cluster_dir, _fs_of(target)).spec

    async def go() -> dict[str, object]:
        store = open_store(spec.store_url)
        try:
            h = await handover(store, spec, target, to=to, reason=reason, timeout=timeout)
        finally:
            await store.close()
        return {"target": h.target, "from": h.from_node, "to": h.to_node,
                "seconds": round(h.seconds, 3), "epoch": h.epoch}

    result = run(go())
    if as_json:
        print_json(result)
    else:
        console.print(f"{target}: {result['from']} → [green]{result['to']}[/green] in "
                      f"{result['seconds']:.2f}s (epoch {result['epoch']})")


@click.command()
@dir_option
@click.argument("target")
@click.option("--to", "to", default=None, help="The node to move it to (default: the next "
              "live node in its failover order).")
@click.option("--timeout", type=float, default=30.0, show_default=True)
@json_option
@handle_errors
def failover(cluster_dir: Path, target: str, to: str | None, timeout: float,
             as_json: bool) -> None:
    """Move TARGET to another node gracefully: commit, stop, hand over (no fencing)."""
    _move(cluster_dir, target, to, "manual failover", timeout, as_json)


@click.command()
@dir_option
@click.argument("target")
@click.option("--timeout", type=float, default=30.0, show_default=True)
@json_option
@handle_errors
def failback(cluster_dir: Path, target: str, timeout: float, as_json: bool) -> None:
    """Move TARGET back to its primary node."""
    spec = site_of(cluster_dir, _fs_of(target)).spec
    try:
        primary = spec.target(target).primary
    except KeyError:
        raise NotFound(f"no target {target}") from None
    _move(cluster_dir, target, primary, "manual failback", timeout, as_json)


def _fs_of(target: str) -> str | None:
    """The file system a target's name says (scratch-OST0001: scratch), if $SHOAL_FS or the
    store does not say: a target names its file system, so no --fs is needed."""
    fs, sep, rest = target.rpartition("-")
    if sep and rest[:3] in ("MDT", "OST") and not os.environ.get("SHOAL_FS"):
        return fs
    return None


def _fmt_time(t: float) -> str:
    return datetime.datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:-3]


@click.command()
@dir_option
@fs_option
@click.option("--target", default=None, help="Only this target's events.")
@click.option("--last", "limit", type=click.IntRange(0), default=50, show_default=True,
              help="How many of the latest events (0: all).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events.")
@json_option
@handle_errors
def events(cluster_dir: Path, fs_name: str | None, target: str | None, limit: int, follow: bool,
           as_json: bool) -> None:
    """The cluster's event log: every step of every failover, with its time."""
    spec = site_of(cluster_dir, fs_name).spec

    async def go() -> None:
        store = open_store(spec.store_url)
        try:
            evs = await read_events(store, target=target, limit=limit or None)
            if as_json:
                print_json([{"time": e.time, "node": e.node, "kind": e.kind,
                             "target": e.target, "detail": e.detail, **e.data} for e in evs])
                return
            if not follow:
                table = Table(title=f"{spec.fs} events")
                for col in ("time", "node", "event", "target", "detail"):
                    table.add_column(col)
                for e in evs:
                    style = "red" if e.data.get("alert") else ""
                    table.add_row(_fmt_time(e.time), e.node, e.kind, e.target,
                                  escape(e.detail), style=style)
                console.print(table)
                return
            # a table cannot grow: followed, every event is one aligned line, as tail -f
            for e in evs:
                _print_line(e)
            seen = evs[-1].time if evs else 0.0
            while True:
                await asyncio.sleep(0.2)
                for e in await read_events(store, since=seen, target=target):
                    if e.time <= seen:
                        continue
                    seen = e.time
                    _print_line(e)
        finally:
            await store.close()

    run(go())


def _print_line(e: Event) -> None:
    style = "red" if e.data.get("alert") else "default"
    console.print(f"[{style}]{_fmt_time(e.time):<13}{e.node:<10}{e.kind:<16}{e.target:<17}"
                  f"{escape(e.detail)}[/{style}]", highlight=False)


def register(cli: click.Group) -> None:
    for cmd in (failover, failback, events):
        cli.add_command(cmd)
