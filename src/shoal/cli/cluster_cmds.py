"""`shoal up|down|status|format` and `shoal node run|start|kill|pause|resume|stop`."""

from __future__ import annotations

import datetime
import signal
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from shoal.agent.agent import run_node_with_agent
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
from shoal.cluster.local import LocalCluster
from shoal.cluster.site import (
    DEFAULT_KEY,
    DEFAULT_STATE,
    ENV_KEY,
    ENV_STORE,
    fleet_status,
    host_spec,
    key_path_from_env,
    set_fs_down,
    store_url_from_env,
)
from shoal.cluster.store_setup import normalize_url
from shoal.errors import Exists, InvalidArgument, NotConnected, NotFound, TimedOut
from shoal.node.admin import node_call
from shoal.node.local import local_node
from shoal.node.server import NodeServer
from shoal.node.services import format_targets
from shoal.node.spec import ClusterSpec, read_key, write_key_file
from shoal.target.label import read_label


@click.command()
@dir_option
@click.option("--fs-defs", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Cray-style fs_defs file, written into the store first (default: the "
                   "store's configuration, else the built-in scratch example).")
@click.option("--store", "store", default=None, metavar="sqlite|etcd|URL",
              help="The cluster store: sqlite (<dir>/store.db), etcd (local etcd members "
                   "under <dir>/etcd/, stopped by `shoal down`), or the URL of an existing "
                   "store (sqlite:///path.db, etcd://host:port[,...]). Default: the store "
                   "this directory's cluster used last, else sqlite.")
@click.option("--etcd-members", type=click.IntRange(1, 9), default=None,
              help="With --store etcd: how many local etcd members (default 1).")
@click.option("--fs", "fs_name", default=None,
              help="Which file system of the store to run (when it holds several).")
@click.option("--commit-interval", type=float, default=1.0, show_default=True,
              help="Seconds between journal commits on every target.")
@click.option("--timeout", type=float, default=60.0, show_default=True)
@handle_errors
def up(cluster_dir: Path, fs_defs: Path | None, store: str | None, etcd_members: int | None,
       fs_name: str | None, commit_interval: float, timeout: float) -> None:
    """Start a local cluster and return when every target is up.

    The layout comes from the store: the fs_defs file is written into it (write_conf) and
    the file system read back (read_conf), and cluster.json records the store's URL."""
    cluster = LocalCluster(cluster_dir)
    spec = cluster.up(fs_defs, timeout=timeout, commit_interval=commit_interval,
                      store=store, etcd_members=etcd_members, fs=fs_name)
    layout = cluster.layout
    if layout is not None:
        for warning in layout.warnings:
            console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
        console.print(escape(f"layout from store {spec.store_url}: {layout.source}"),
                      highlight=False)
    console.print(f"[green]{spec.fs}[/green] is up in {cluster.dir}: "
                  f"{len(spec.nodes)} nodes, {len(spec.targets)} targets, port {spec.port}")


@click.command("format")
@dir_option
@fs_option
@click.argument("targets", nargs=-1)
@handle_errors
def format_cmd(cluster_dir: Path, fs_name: str | None, targets: tuple[str, ...]) -> None:
    """Label the targets' devices (mkfs.lustre): each on its primary's path, and only one
    that holds no target yet. A node serves a target only from a device with its label;
    `shoal up` formats on first use, and nothing else formats."""
    spec = site_of(cluster_dir, fs_name).spec
    wanted = set(targets)
    unknown = wanted - {t.name for t in spec.targets}
    if unknown:
        raise NotFound(f"no target {', '.join(sorted(unknown))} in {spec.fs}")
    subset = replace(spec, targets=[t for t in spec.targets if not wanted or t.name in wanted])
    done = format_targets(subset)
    table = Table(title=f"{spec.fs} devices")
    for col in ("target", "device", "formatted", "uuid"):
        table.add_column(col)
    for t in subset.targets:
        label = read_label(Path(t.devices[t.primary]))
        table.add_row(t.name, t.devices[t.primary], "now" if done[t.name] else "before",
                      label.uuid if label else "?")
    console.print(table)


@click.command()
@dir_option
@fs_option
@click.option("--timeout", type=float, default=60.0, show_default=True)
@handle_errors
def down(cluster_dir: Path, fs_name: str | None, timeout: float) -> None:
    """Stop the file system. A local cluster: every node process. Through the store
    ($SHOAL_STORE), from any host: its targets stop (STOPPED, no failover) and stay so
    until `shoal start`; the daemons serve every other file system on."""
    site = site_of(cluster_dir, fs_name)
    if site.local is not None:
        stopped = LocalCluster(site.local).down()
        console.print(f"stopped {', '.join(stopped) if stopped else 'nothing (no node was running)'}")
        return
    _fs_down(site.spec, True, timeout)


@click.command()
@dir_option
@fs_option
@click.option("--timeout", type=float, default=60.0, show_default=True)
@handle_errors
def start(cluster_dir: Path, fs_name: str | None, timeout: float) -> None:
    """Start a file system `shoal down` stopped through the store ($SHOAL_STORE): its
    daemons serve its targets again. A local cluster starts with `shoal up`."""
    site = site_of(cluster_dir, fs_name)
    if site.local is not None:
        raise InvalidArgument(f"{site.local} is a local cluster: start it with `shoal up`")
    _fs_down(site.spec, False, timeout)


def _fs_down(spec: ClusterSpec, down: bool, timeout: float) -> None:
    left = run(set_fs_down(spec, down, timeout=timeout))
    what = "stopped" if down else "started"
    if left:
        raise TimedOut(f"{spec.fs}: {what}, but after {timeout:.0f} s these targets are "
                       f"not {'STOPPED' if down else 'UP'} yet: {', '.join(left)}")
    console.print(f"[green]{spec.fs}[/green] {what}: {len(spec.targets)} targets "
                  f"{'STOPPED' if down else 'UP'}")


@click.command()
@dir_option
@fs_option
@json_option
@handle_errors
def status(cluster_dir: Path, fs_name: str | None, as_json: bool) -> None:
    """Nodes and targets: who serves what, in which epoch."""
    st = read_fleet(cluster_dir, fs_name)
    if as_json:
        print_json(st)
        return
    for table in status_tables(st):
        console.print(table)


def read_fleet(cluster_dir: Path, fs_name: str | None) -> dict[str, Any]:
    """What `shoal status` shows: the store's view, with each node's own word."""
    site = site_of(cluster_dir, fs_name)
    if site.local is not None:
        return LocalCluster(site.local).status()
    st = run(fleet_status(site.spec, site.key))
    for n in st["nodes"]:
        n["pid"], n["process"] = None, "answers" if n["answers"] else "-"
    return st


def status_tables(st: dict[str, Any]) -> list[Table]:
    nodes = Table(title=f"{st['fs']} nodes")
    for col in ("node", "address", "state", "process", "pid", "up since"):
        nodes.add_column(col)
    for n in st["nodes"]:
        color = {"alive": "green", "dead": "red", "fenced": "magenta"}.get(n["state"], "yellow")
        nodes.add_row(n["name"], n["address"], f"[{color}]{n['state']}[/{color}]",
                      n["process"], str(n["pid"] or "-"), _since(n["up_since"]))
    targets = Table(title=f"{st['fs']} targets")
    for col in ("target", "state", "owner", "backup", "epoch", "since", "health", "why"):
        targets.add_column(col)
    for t in st["targets"]:
        color = {"UP": "green", "RECOVERING": "yellow", "FAILING_OVER": "yellow",
                 "STOPPED": "blue"}.get(t["state"], "red")
        targets.add_row(t["name"], f"[{color}]{t['state']}[/{color}]", t["owner"] or "-",
                        " ".join(t["backup"]), str(t["epoch"] or "-"), _since(t["since"]),
                        t["health"] or "-", escape(t["reason"] or ""))
    tables = [nodes, targets]
    if st["events"]:
        ev = Table(title="recent events")
        for col in ("time", "node", "event", "target", "detail"):
            ev.add_column(col)
        for e in st["events"]:
            ev.add_row(_since(e["time"]), e["node"], e["kind"], e["target"], escape(e["detail"]))
        tables.append(ev)
    return tables


def _since(t: float | None) -> str:
    if not t:
        return "-"
    return datetime.datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:-3]


@click.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path),
                default=str(DEFAULT_KEY))
@handle_errors
def keygen(path: Path) -> None:
    """Make a new cluster key in PATH (default /etc/shoal/key), mode 0600, like corosync's
    authkey; copy it to every server and client host (docs/deployment.md). An existing key
    is never replaced: every host holding it would be shut out."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_key_file(path, exclusive=True)
    except FileExistsError:
        raise Exists(f"{path} exists: a key is never replaced (remove it first if you mean "
                     "to give every host a new one)") from None
    console.print(f"wrote a new cluster key to {path} (mode 0600); copy it to every host",
                  highlight=False)


@click.group()
def node() -> None:
    """Run a node, or inject faults into one (kill = power off, pause = hung)."""


@node.command("run")
@dir_option
@click.option("--store", "store_url", envvar=ENV_STORE, default=None, metavar="URL",
              help="Run as a host's daemon: build everything from the configuration in this "
                   "store, serving every file system that names NAME [$SHOAL_STORE].")
@click.option("--key", "key_file", envvar=ENV_KEY, default=str(DEFAULT_KEY),
              type=click.Path(dir_okay=False, path_type=Path), show_default=True,
              help="With --store: the cluster key file (mode 0600) [$SHOAL_KEY].")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              default=str(DEFAULT_STATE), show_default=True,
              help="With --store: this host's directory (relative device paths live in "
                   "its devices/).")
@click.argument("name")
@handle_errors
def node_run(cluster_dir: Path, store_url: str | None, key_file: Path, state_dir: Path,
             name: str) -> None:
    """Serve this node's targets in the foreground, with its failover agent: one process
    per host for all its targets of all file systems (the systemd unit's command). Without
    --store: node NAME of the local cluster in --dir (what `shoal up` starts)."""
    if store_url is None:
        server = local_node(cluster_dir, name)
    else:
        host = run(host_spec(normalize_url(store_url), name, state_dir=state_dir))
        state_dir.mkdir(parents=True, exist_ok=True)
        server = NodeServer(host, read_key(key_file), state_dir)
    run_node_with_agent(server)


def _node_action(verb: str, doc: str) -> click.Command:
    @click.command(verb, help=doc)
    @dir_option
    @click.argument("name")
    @handle_errors
    def cmd(cluster_dir: Path, name: str) -> None:
        url = store_url_from_env()
        if url is not None:
            _remote_node_action(url, verb, name)
            return
        cluster = LocalCluster(cluster_dir)
        if name not in cluster.spec.nids:
            raise NotFound(f"no node {name!r} in {cluster.spec.fs} "
                           f"({', '.join(cluster.spec.nids)})")
        if verb == "start":
            pid = cluster.start_node(name)
            console.print(f"{name} started (pid {pid})")
            return
        if verb == "stop":
            cluster.stop_node(name)
            done = True
        elif verb == "kill":
            done = cluster.kill_node(name)
        else:
            sig = signal.SIGSTOP if verb == "pause" else signal.SIGCONT
            done = cluster.signal_node(name, sig)
        console.print(f"{name}: {verb} {'done' if done else 'not running'}")

    return cmd


def _remote_node_action(url: str, verb: str, name: str) -> None:
    """Through the store ($SHOAL_STORE): only a clean stop can be asked of a daemon on
    another host; the rest acts on processes of this machine."""
    host = run(host_spec(normalize_url(url), name, state_dir=DEFAULT_STATE))  # NotFound
    if verb != "stop":
        hint = ("start its daemon on its host (systemctl start shoal-node@{0})" if verb == "start"
                else "in the rig: shoal rig power-off|partition; on real hosts: its BMC")
        raise InvalidArgument(f"`node {verb}` acts on a local cluster's processes; "
                              + hint.format(name))
    try:
        run(node_call(host, read_key(key_path_from_env()), name, "shutdown",
                      {"by": socket.gethostname()}, timeout=5.0))
    except (NotConnected, TimedOut):
        raise NotConnected(f"{name} does not answer: it is not running, or not "
                           "reachable from here") from None
    console.print(f"{name}: stop asked; its targets are being handed over "
                  "(`shoal status` shows them move)")


for _verb, _doc in (("start", "Start a node process."),
                    ("stop", "Stop a node cleanly (SIGTERM)."),
                    ("kill", "Power a node off (SIGKILL its process group)."),
                    ("pause", "Hang a node (SIGSTOP)."),
                    ("resume", "Resume a paused node (SIGCONT).")):
    node.add_command(_node_action(_verb, _doc))


def register(cli: click.Group) -> None:
    for cmd in (up, down, start, status, format_cmd, keygen, node):
        cli.add_command(cmd)
