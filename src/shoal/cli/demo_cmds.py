"""`shoal demo` (what `make demo` runs): a local cluster doing the main job, verified."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import click
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shoal.cli.common import console, handle_errors
from shoal.cluster.local import LocalCluster
from shoal.workload.load import run_load


def _status_table(cluster: LocalCluster) -> Table:
    st = cluster.status()
    table = Table(title=f"file system {st['fs']}")
    for col in ("target", "state", "served by", "failover nodes", "epoch"):
        table.add_column(col)
    for t in st["targets"]:
        color = "green" if t["state"] == "UP" else "red"
        table.add_row(t["name"], f"[{color}]{t['state']}[/{color}]", t["owner"] or "-",
                      " → ".join(t["nodes"]), str(t["epoch"] or "-"))
    return table


@click.command()
@click.option("--dir", "cluster_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where to run the cluster (default: a fresh temporary directory).")
@click.option("--clients", type=int, default=16, show_default=True)
@click.option("--duration", type=float, default=15.0, show_default=True)
@click.option("--keep", is_flag=True, help="Leave the cluster running afterwards.")
@handle_errors
def demo(cluster_dir: Path | None, clients: int, duration: float, keep: bool) -> None:
    """Start a local cluster, run verified client load on it, show what happened."""
    d = cluster_dir or Path(tempfile.mkdtemp(prefix="shoal-demo-"))
    cluster = LocalCluster(d)
    console.print(Panel.fit(
        "Shoal: a parallel file system with Lustre's architecture and automatic failover.\n"
        f"Starting a local cluster in {cluster.dir}: an MGS/MDS pair and two OSS pairs,\n"
        "each server node a process on its own loopback address.", title="shoal demo"))
    t0 = time.monotonic()
    with console.status("shoal up: starting nodes and targets"):
        cluster.up()
    console.print(f"cluster up in {time.monotonic() - t0:.1f}s")
    console.print(_status_table(cluster))
    console.print(f"\n{clients} clients now write, overwrite, read back and verify files "
                  f"striped over every OST, for {duration:.0f}s.")
    try:
        with Progress(TextColumn("client load"), BarColumn(),
                      TextColumn("{task.fields[ops]} verified ops"), TimeElapsedColumn(),
                      console=console) as bar:
            task = bar.add_task("load", total=duration, ops=0)
            summary = run_load(cluster.dir, clients=clients, duration=duration,
                               on_progress=lambda t, n: bar.update(
                                   task, completed=min(t, duration), ops=n))
        table = Table(title="result")
        table.add_column("measure")
        table.add_column("value", justify="right")
        for k in ("acked_writes", "verified", "lost", "corrupt", "errors", "max_stall_s",
                  "bytes_written"):
            table.add_row(k, str(summary.to_dict()[k]))
        console.print(table)
        verdict = ("[green]every acknowledged write verified[/green]" if summary.ok
                   else "[red]DATA LOST OR CORRUPT[/red]")
        console.print(verdict)
    finally:
        if keep:
            console.print(f"cluster left running: SHOAL_DIR={cluster.dir} shoal status")
        else:
            cluster.down()
            console.print("cluster stopped")
    if not summary.ok:
        sys.exit(1)


def register(cli: click.Group) -> None:
    cli.add_command(demo)
