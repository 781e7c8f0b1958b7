"""`shoal demo` (what `make demo` runs): a local cluster doing the main job, verified."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import click
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from shoal.agent.events import read_events
from shoal.agent.records import Event
from shoal.cli.common import console, handle_errors
from shoal.cluster.local import LocalCluster
from shoal.store import open_store
from shoal.workload.load import LoadSummary, run_load


def _status_table(cluster: LocalCluster) -> Table:
    st = cluster.status()
    table = Table(title=f"file system {st['fs']}")
    for col in ("target", "state", "served by", "failover nodes", "epoch"):
        table.add_column(col)
    for t in st["targets"]:
        color = {"UP": "green", "RECOVERING": "yellow"}.get(t["state"], "red")
        table.add_row(t["name"], f"[{color}]{t['state']}[/{color}]", t["owner"] or "-",
                      " → ".join(t["nodes"]), str(t["epoch"] or "-"))
    return table


TIMELINE = ("fault", "detect", "fence_start", "fenced", "take", "fence_checked", "start",
            "ir_notify", "recovered")


def _timeline(cluster: LocalCluster, since: float, victim_targets: set[str],
              done: threading.Event, timeout: float) -> list[Event]:
    """Print the failover's events as they arrive, with times from the fault."""
    seen: list[Event] = []
    shown: set[tuple[float, str, str]] = set()
    deadline = time.monotonic() + timeout
    recovered: set[str] = set()

    async def fetch() -> list[Event]:
        store = open_store(cluster.spec.store_url)
        try:
            return await read_events(store, since=since)
        finally:
            await store.close()

    while time.monotonic() < deadline and not done.is_set():
        for e in asyncio.run(fetch()):
            if e.kind not in TIMELINE or (e.target and e.target not in victim_targets):
                continue
            key = (e.time, e.kind, e.target)
            if key in shown:
                continue
            shown.add(key)
            seen.append(e)
            console.print(f"  [bold]+{e.time - since:6.3f}s[/bold]  {e.node:<9} "
                          f"[cyan]{e.kind:<12}[/cyan] {e.target:<16} {escape(e.detail)}",
                          highlight=False)
            if e.kind == "recovered":
                recovered.add(e.target)
        if recovered >= victim_targets:
            break
        time.sleep(0.1)
    return seen


@click.command()
@click.option("--dir", "cluster_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where to run the cluster (default: a fresh temporary directory).")
@click.option("--clients", type=click.IntRange(1, 10_000), default=16, show_default=True)
@click.option("--duration", type=click.FloatRange(1, 86_400), default=15.0, show_default=True)
@click.option("--no-fault", is_flag=True, help="Only the load, no server killed.")
@click.option("--keep", is_flag=True, help="Leave the cluster running afterwards.")
@click.option("--web/--no-web", default=True, show_default=True,
              help="Serve the live status page (shoal web) and print its address.")
@handle_errors
def demo(cluster_dir: Path | None, clients: int, duration: float, no_fault: bool,
         keep: bool, web: bool) -> None:
    """Start a local cluster under verified client load, kill an OSS, watch its backup take
    over (the failover timeline, live), and verify every acknowledged write."""
    d = cluster_dir or Path(tempfile.mkdtemp(prefix="shoal-demo-"))
    cluster = LocalCluster(d)
    console.print(Panel.fit(
        "Shoal: a parallel file system with Lustre's architecture and automatic failover.\n"
        f"Starting a local cluster in {cluster.dir}: an MGS/MDS pair and two OSS pairs,\n"
        "each server node a process on its own loopback address, with its failover agent.",
        title="shoal demo"))
    t0 = time.monotonic()
    with console.status("shoal up: starting nodes and targets"):
        cluster.up()
    console.print(f"cluster up in {time.monotonic() - t0:.1f}s")
    page = _status_page(cluster) if web else None
    console.print(_status_table(cluster))
    console.print(f"\n{clients} clients now write, overwrite, read back and verify files "
                  f"striped over every OST, for {duration:.0f}s.")
    result: dict[str, LoadSummary] = {}
    done = threading.Event()
    summary = LoadSummary()
    try:
        def load() -> None:
            try:
                result["s"] = run_load(cluster.dir, clients=clients, duration=duration)
            finally:
                done.set()

        worker = threading.Thread(target=load, daemon=True)
        worker.start()
        if not no_fault:
            time.sleep(min(4.0, duration / 3))
            victim = next(t["owner"] for t in cluster.status()["targets"]
                          if t["name"].endswith("OST0000"))
            hosted = {t["name"] for t in cluster.status()["targets"] if t["owner"] == victim}
            console.print(f"\n[red]kill -9[/red] of {victim} (serving "
                          f"{', '.join(sorted(hosted))}) while the clients run. Timeline:")
            since = time.time()
            cluster.kill_node(victim)
            _timeline(cluster, since, hosted, done, timeout=duration + 30)
            console.print(_status_table(cluster))
        with console.status("clients finishing and verifying every file they wrote"):
            worker.join()
        summary = result.get("s", summary)
        table = Table(title="result")
        table.add_column("measure")
        table.add_column("value", justify="right")
        for k in ("acked_writes", "verified", "lost", "corrupt", "errors", "max_stall_s",
                  "bytes_written"):
            table.add_row(k, str(summary.to_dict()[k]))
        console.print(table)
        ok = summary.ok and summary.errors == 0 and summary.acked_writes > 0
        verdict = ("[green]every acknowledged write verified; no application saw an "
                   "error[/green]" if ok else "[red]DATA LOST, CORRUPT OR ERRORS SEEN[/red]")
        console.print(verdict)
    finally:
        if keep:
            console.print(f"cluster left running: SHOAL_DIR={cluster.dir} shoal status")
        else:
            if page is not None:
                page.terminate()
                page.wait(10)
            cluster.down()
            console.print("cluster stopped")
    if not (summary.ok and summary.errors == 0 and summary.acked_writes > 0):
        sys.exit(1)


def _status_page(cluster: LocalCluster) -> subprocess.Popen[bytes] | None:
    """`shoal web` beside the demo, on a free loopback port: its address, to watch."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "shoal", "web", "--dir", str(cluster.dir),
                             "--listen", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    console.print(f"[bold]watch it live: http://127.0.0.1:{port}/[/bold] (the status page)")
    return proc


def register(cli: click.Group) -> None:
    cli.add_command(demo)
