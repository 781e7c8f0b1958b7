"""`shoal bench io|meta|store`: speed against the local disk, measured in one run."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from shoal.cli.common import console, dir_option, handle_errors, json_option, print_json

rounds_option = click.option(
    "--rounds", type=click.IntRange(1, 20), default=3, show_default=True,
    help="Rounds of every side, in turn; each figure is the median over the rounds.")


def show(title: str, res: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(res)
        return
    per_round = res.get("per_round", [])
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("median" if per_round else "value", justify="right")
    for i in range(len(per_round)):
        table.add_column(f"round {i + 1}", justify="right")
    for k, v in res.items():
        if k != "per_round":
            table.add_row(k, str(v), *(str(r.get(k, "")) for r in per_round))
    console.print(table)


@click.group()
def bench() -> None:
    """Benchmarks (each compares against the local disk in the same run)."""


@bench.command()
@dir_option
@click.option("--size", type=str, default="1G", show_default=True)
@click.option("--stripes", type=int, default=4, show_default=True)
@click.option("--quota", "with_quota", is_flag=True,
              help="Also stream as a user under quota limits, and compare.")
@rounds_option
@json_option
@handle_errors
def io(cluster_dir: Path, size: str, stripes: int, with_quota: bool, rounds: int,
       as_json: bool) -> None:
    """Stream a file striped over 4 OSTs, write then read, against a local file."""
    from shoal.cli.lfs_cmds import parse_size
    from shoal.workload.bench_io import run_bench_io

    nbytes = parse_size(size)
    if as_json:
        res = run_bench_io(cluster_dir, size=nbytes, stripes=stripes, rounds=rounds,
                           with_quota=with_quota)
    else:
        with Progress(TextColumn("bench io"), BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), console=console) as bar:
            task = bar.add_task("io", total=(9 if with_quota else 6) * nbytes * rounds)
            res = run_bench_io(cluster_dir, size=nbytes, stripes=stripes, rounds=rounds,
                               tick=lambda n: bar.advance(task, n), with_quota=with_quota)
    show("bench io", res, as_json)


@bench.command()
@dir_option
@click.option("--files", type=click.IntRange(1), default=2000, show_default=True,
              help="Files per client.")
@click.option("--locks/--no-locks", default=True, show_default=True,
              help="The clients keep what they create and stat under the MDT's locks.")
@rounds_option
@json_option
@handle_errors
def meta(cluster_dir: Path, files: int, locks: bool, rounds: int, as_json: bool) -> None:
    """Creates, stats and unlinks per second with 8 clients and 1, against a local dir."""
    from shoal.workload.bench_meta import run_bench_meta

    if as_json:
        res = run_bench_meta(cluster_dir, files_per_client=files, rounds=rounds, locks=locks)
    else:
        with Progress(TextColumn("bench meta"), BarColumn(), TextColumn("{task.completed:.0f}"
                      "/{task.total:.0f} sides (8 clients, 1 client, local)"),
                      console=console) as bar:
            task = bar.add_task("meta", total=3 * rounds)
            res = run_bench_meta(cluster_dir, files_per_client=files, rounds=rounds,
                                 locks=locks, tick=lambda: bar.advance(task))
    show("bench meta", res, as_json)


@bench.command("store")
@dir_option
@click.option("--trials", type=click.IntRange(1, 20), default=3, show_default=True,
              help="Lease-expiry trials per backend (the median is reported).")
@json_option
@handle_errors
def store_bench(cluster_dir: Path, trials: int, as_json: bool) -> None:
    """Both store backends in one run: lease expiry seen from another process (TTL 2 s),
    CAS, put and watch speed, on SQLite and on a one-member local etcd."""
    from shoal.cli.common import err_console, run
    from shoal.store.bench import run_store_bench

    cluster_dir.mkdir(parents=True, exist_ok=True)
    with err_console.status("bench store: starting") as status:
        def progress(msg: str) -> None:
            status.update(f"bench store: {msg}")
            if not err_console.is_terminal:
                err_console.print(f"bench store: {msg}", highlight=False, markup=False)

        res = run(run_store_bench(cluster_dir, progress, trials=trials))
    if as_json:
        print_json(res)
        return
    table = Table(title="bench store")
    table.add_column("measure")
    for backend in ("sqlite", "etcd"):
        table.add_column(backend, justify="right")
    measures = [k[: -len("_sqlite")] for k in res if k.endswith("_sqlite")]
    for m in measures:
        table.add_row(m, *(str(res.get(f"{m}_{b}", "-")) for b in ("sqlite", "etcd")))
    for k, v in res.items():
        if not k.endswith(("_sqlite", "_etcd")):
            table.add_row(k, str(v), "")
    console.print(table)


@bench.command("mount")
@dir_option
@click.option("--size", type=str, default="1G", show_default=True)
@click.option("-o", "options", multiple=True, help="Mount options for the mount measured.")
@rounds_option
@json_option
@handle_errors
def mount_bench(cluster_dir: Path, size: str, options: tuple[str, ...], rounds: int,
                as_json: bool) -> None:
    """Stream through a FUSE mount, write then read, against the library and a local file."""
    from shoal.cli.lfs_cmds import parse_size
    from shoal.workload.bench_mount import run_bench_mount

    nbytes = parse_size(size)
    if as_json:
        res = run_bench_mount(cluster_dir, size=nbytes, options=list(options), rounds=rounds)
    else:
        with Progress(TextColumn("bench mount"), BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), console=console) as bar:
            task = bar.add_task("mount", total=6 * nbytes * rounds)
            res = run_bench_mount(cluster_dir, size=nbytes, options=list(options),
                                  rounds=rounds, tick=lambda n: bar.advance(task, n))
    show("bench mount", res, as_json)


def _writable_dir(_ctx: click.Context, _param: click.Parameter,
                  value: Path | None) -> Path | None:
    """--against: a directory the bench can write in (tried, not guessed from its mode)."""
    if value is None:
        return None
    import tempfile

    try:
        os.rmdir(tempfile.mkdtemp(prefix=".shoal-probe-", dir=value))
    except OSError as exc:
        raise click.BadParameter(f"{value}: cannot write there ({exc.strerror})") from None
    return value.resolve()


@bench.command("smallfiles")
@dir_option
@click.option("--tree", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=Path("/usr/lib/python3"), show_default=True,
              help="The directory whose copy every row works on.")
@click.option("-o", "options", multiple=True, help="Mount options for the mount measured.")
@click.option("--rounds", type=click.IntRange(1, 20), default=1, show_default=True,
              help="Rounds of every side, in turn; each figure is the median over the rounds.")
@click.option("--against", type=click.Path(exists=True, file_okay=False, path_type=Path),
              callback=_writable_dir, metavar="DIR",
              help="Also run every row in DIR, on another file system (a GlusterFS or NFS "
                   "mount), and compare the mount with it.")
@click.option("--against-remount", metavar="CMD",
              help="Shell command run before find_cold in --against's DIR to make it cold "
                   "(e.g. \"umount D && mount -t glusterfs H:/V D\"); without it that row "
                   "there is warm.")
@json_option
@handle_errors
def smallfiles_bench(cluster_dir: Path, tree: Path, options: tuple[str, ...], rounds: int,
                     against: Path | None, against_remount: str | None,
                     as_json: bool) -> None:
    """Untar, find, du, diff, rsync, imports, git and rm -rf of a tree of small files, on a
    mount against the local disk (ratio: local time / mount time), and with --against, in
    another file system's directory too (vs against: its time / mount time)."""
    from shoal.cli.common import err_console
    from shoal.workload.bench_smallfiles import ROWS, run_bench_smallfiles

    if against_remount is not None and against is None:
        raise click.UsageError("--against-remount needs --against DIR")
    if against_remount is not None and not against_remount.strip():
        raise click.BadParameter("an empty command", param_hint="--against-remount")
    kw: dict[str, Any] = {"tree": tree, "rounds": rounds, "options": list(options),
                          "against": against, "against_remount": against_remount}
    try:
        if as_json:
            print_json(run_bench_smallfiles(cluster_dir, **kw))
            return
        with console.status("bench smallfiles") as status:
            res = run_bench_smallfiles(
                cluster_dir, step=lambda s: status.update(f"bench smallfiles: {s}"), **kw)
    except RuntimeError as exc:  # a row's command (or --against-remount) failed
        err_console.print(f"[red]shoal:[/red] {exc}", highlight=False)
        sys.exit(1)
    cols = ["row", "local s", "mount s", "ratio"]
    if against is not None:
        cols += ["against s", "against ratio", "vs against"]
    caption = None
    if against is not None and not res["against_cold"]:
        caption = f"find_cold in {against} is not cold (no --against-remount)"
    table = Table(title=f"bench smallfiles: {res['tree']} ({res['entries']:,} entries, "
                        f"{res['modules']} modules), medians of {rounds}", caption=caption)
    for col in cols:
        table.add_column(col, justify="left" if col == "row" else "right")
    for row in ROWS:
        cells = [f"{res[f'{row}_local_s']:.3f}", f"{res[f'{row}_mount_s']:.3f}",
                 f"{res[f'{row}_ratio']:.3f}"]
        if against is not None:
            cells += [f"{res[f'{row}_against_s']:.3f}", f"{res[f'{row}_against_ratio']:.3f}",
                      f"{res[f'{row}_vs_against']:.3f}"]
        table.add_row(row, *cells)
    console.print(table)


@bench.command("boot")
@dir_option
@click.option("--clients", type=click.IntRange(1), default=200, show_default=True,
              help="Diskless nodes booting at once, each a client with its own cache.")
@click.option("--locks/--no-locks", default=True, show_default=True,
              help="Clients keep attributes and names under the MDT's locks.")
@click.option("--failover", is_flag=True, help="Kill the node serving the MDT halfway "
              "through the cold run (its backup takes over).")
@json_option
@handle_errors
def boot_bench(cluster_dir: Path, clients: int, locks: bool, failover: bool,
               as_json: bool) -> None:
    """N nodes whose root lives on the file system start the same Python program at once
    (a recorded trace of its stats, opens, reads, readlinks and listings), cold then warm,
    against one node alone."""
    from shoal.cluster.local import LocalCluster
    from shoal.workload.bench_boot import run_bench_boot

    _ = LocalCluster(cluster_dir).spec  # no cluster there: said before any progress bar
    if as_json:
        print_json(run_bench_boot(cluster_dir, clients=clients, locks=locks,
                                  failover=failover))
        return
    with Progress(TextColumn("bench boot {task.description}"), BarColumn(),
                  TextColumn("{task.completed:,.0f}/{task.total:,.0f} ops"),
                  console=console) as bar:
        task = bar.add_task("", total=1)

        def progress(stage: str, done: int, total: int) -> None:
            bar.update(task, description=stage, completed=done, total=total)

        res = run_bench_boot(cluster_dir, clients=clients, locks=locks, failover=failover,
                             progress=progress)
    t = res["trace"]
    title = (f"bench boot: {clients} nodes, locks {'on' if locks else 'off'}"
             f"{', MDS killed in the cold run' if failover else ''}; trace of "
             f"{t['ops']:,} ops ({t['fail_ops']} failing), {t['files']} files")
    runs = ("cold", "warm", "alone_cold", "alone_warm")
    table = Table(title=title)
    table.add_column("measure")
    for r in runs:
        table.add_column(r.replace("_", " "), justify="right")
    for k in ("wall_s", "client_s_median", "client_s_max", "mdt_requests_median",
              "mdt_requests_max", "mds_cpu_s", "clients_cpu_s", "ops", "errors"):
        table.add_row(k, *(str(res[r][k]) for r in runs))
    console.print(table)
    console.print(f"warm wall time / one node alone warm: {res['warm_over_alone']}; MDT "
                  f"served by {res['mds_before']} before the storm, {res['mds_after']} after",
                  highlight=False)
    if "killed" in res:
        k = res["killed"]
        console.print(f"killed {k['node']} {k['at_s']} s into the cold run, after "
                      f"{k['at_ops']:,} ops; it stays down (`shoal node start {k['node']} "
                      f"--dir {cluster_dir}` brings it back)", highlight=False)
    for r in runs:
        for sample in res[r]["samples"]:
            console.print(f"  [yellow]{r}: {sample}[/yellow]", highlight=False)


@bench.command("failover")
@click.option("--clients", type=click.IntRange(1), default=20, show_default=True)
@click.option("--noir", is_flag=True, help="Clients ignore IR notices (Lustre's noir): they "
              "find the backup through their own timeouts.")
@click.option("--dir", "cluster_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where to run the cluster (default: a fresh temporary directory).")
@click.option("--keep", is_flag=True, help="Leave the cluster running (and its directory).")
@click.option("--procs", type=int, default=0, help="Client worker processes (default: one "
              "per core, at least 2).")
@click.option("--commit-interval", type=click.FloatRange(0.01), default=1.0, show_default=True,
              help="The targets' journal commit interval: it bounds what clients replay.")
@click.option("--rig", "rig_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Run on the rig in this directory (`shoal rig up`, its file system "
              "started): the clients on client1, the fault from outside the hosts.")
@click.option("--fault", type=click.Choice(["power-off", "kill", "pause"]), default=None,
              help="With --rig: how the node serving the OST fails (default power-off). "
              "Without --rig the node is killed.")
@click.option("--attached", is_flag=True, hidden=True,
              help="Run against the file system of $SHOAL_STORE; ask for the fault on "
              "stdout and read its time on stdin (what --rig runs on client1).")
@json_option
@handle_errors
def failover_bench(clients: int, noir: bool, cluster_dir: Path | None, keep: bool, procs: int,
                   commit_interval: float, rig_dir: Path | None, fault: str | None,
                   attached: bool, as_json: bool) -> None:
    """Kill the node serving an OST under N clients' I/O (or, on the rig, power it off,
    kill its daemon or pause it); time every failover phase until every client has
    completed an I/O on it again; verify nothing acknowledged was lost."""
    import sys

    from shoal.workload.bench_failover import BenchProgress, run_bench_failover
    from shoal.workload.bench_failover_rig import run_attached, run_rig_bench_failover
    from shoal.workload.failover_phases import BUDGET_S, PHASES

    ir = not noir
    if fault is not None and rig_dir is None:
        raise click.UsageError("--fault needs --rig (a local cluster's node is killed)")
    what = f"{fault or 'power-off'} of" if rig_dir else "kill of"
    if attached:
        res = run_attached(clients, ir=ir, procs=procs)
    elif rig_dir is not None and as_json:
        res = run_rig_bench_failover(rig_dir, clients=clients, fault=fault or "power-off",
                                     ir=ir, procs=procs)
    elif as_json:
        res = run_bench_failover(cluster_dir, clients=clients, ir=ir, keep=keep, procs=procs,
                                 commit_interval=commit_interval)
    else:
        with Progress(TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total} clients  {task.fields[ops]} "
                                 "I/Os  {task.fields[clock]}"),
                      console=console) as bar:
            task = bar.add_task("starting", total=clients, ops=0, clock="")

            def progress(p: BenchProgress) -> None:
                after = p.since_kill_s is not None
                bar.update(task, description=p.stage, completed=p.resumed if after else p.ready,
                           ops=p.ops, clock=f"+{p.since_kill_s:.1f}s after the kill"
                           if after else "")

            if rig_dir is not None:
                res = run_rig_bench_failover(rig_dir, clients=clients,
                                             fault=fault or "power-off", ir=ir, procs=procs,
                                             on_progress=progress)
            else:
                res = run_bench_failover(cluster_dir, clients=clients, ir=ir, keep=keep,
                                         procs=procs, commit_interval=commit_interval,
                                         on_progress=progress)
    d = res.to_dict()
    if as_json:
        print_json(d)
    else:
        table = Table(title=f"bench failover: {clients} clients, IR {'on' if ir else 'off'}, "
                            f"{what} {res.victim} ({res.target})")
        table.add_column("measure")
        table.add_column("seconds / value", justify="right")
        table.add_column("budget", justify="right")
        for k in (*PHASES, "failover_s", "total_s", "resume_p50_s", "max_stall_s", "mmp_s"):
            budget = BUDGET_S.get(k)
            table.add_row(k, "-" if d[k] is None else str(d[k]),
                          "" if budget is None else f"≤ {budget}")
        for k in ("reconnect_last_s", "replayed_last_s", "replays", "resumed", "ir_told",
                  "acked_writes", "verified", "lost", "corrupt", "errors"):
            table.add_row(k, "-" if d[k] is None else str(d[k]), "")
        console.print(table)
        for sample in res.samples:
            console.print(f"  [yellow]{sample}[/yellow]", highlight=False)
        if keep:
            console.print(f"cluster left running: SHOAL_DIR={res.dir} shoal status")
    if res.lost or res.corrupt or res.total_s is None:
        sys.exit(1)


def register(cli: click.Group) -> None:
    cli.add_command(bench)
