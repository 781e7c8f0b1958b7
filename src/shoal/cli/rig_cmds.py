"""`shoal rig up|status|exec|power-off|power-on|pause|resume|partition|heal|down`: a multi-host cluster on
one machine, each host a network + mount namespace (see docs/rig.md)."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import click
from rich.table import Table

from shoal.cli.common import console, handle_errors, json_option, print_json
from shoal.rig import Rig, check_supported
from shoal.rig.fs import start_shoal

rig_dir_option = click.option(
    "--dir", "rig_dir", required=True, envvar="SHOAL_RIG_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="The rig's directory (state, images, logs); $SHOAL_RIG_DIR if not given.")


@click.group()
def rig() -> None:
    """A realistic multi-host cluster on one machine: hosts are network namespaces on a
    bridge of their own, shared LUNs are loop devices, the store a 3-member etcd."""


@rig.command()
@rig_dir_option
@click.option("--servers", type=click.IntRange(1, 40), default=4, show_default=True,
              help="Server hosts nid00060, nid00061, ... (10.77.0.60, .61, ...).")
@click.option("--clients", type=click.IntRange(0, 150), default=2, show_default=True,
              help="Client hosts client1, client2, ... (10.77.0.101, .102, ...).")
@click.option("--osts", type=click.IntRange(0, 64), default=4, show_default=True,
              help="OSTs of the layout: one loop device each, plus the MGT's and MDT's.")
@click.option("--device-size", "device_mib", type=click.IntRange(1), default=256,
              show_default=True, help="Size of each (sparse) loop device image, MiB.")
@click.option("--no-etcd", is_flag=True, help="Start no etcd members (no store).")
@click.option("--timeout", type=float, default=30.0, show_default=True,
              help="Seconds to wait for etcd to be healthy.")
@click.option("--shoal/--no-shoal", "with_shoal", default=True, show_default=True,
              help="Bring the file system up too, as on real hosts: config write, format, "
                   "one `shoal node run` daemon per server host (needs the store).")
@handle_errors
def up(rig_dir: Path, servers: int, clients: int, osts: int, device_mib: int, no_etcd: bool,
       timeout: float, with_shoal: bool) -> None:
    """Make the rig: namespaces, bridge, loop devices, key, fs_defs; start etcd; then
    Shoal's daemons on the server hosts, each target on its loop device."""
    r = Rig(rig_dir)
    r.up(servers=servers, clients=clients, osts=osts, image_mib=device_mib,
         with_etcd=not no_etcd, timeout=timeout)
    console.print(f"rig up in {r.dir}: {len(r.hosts)} hosts, store {r.store_url or '(none)'}",
                  highlight=False)
    console.print(f"fs_defs {r.fs_defs_path}, key {r.key_path}", highlight=False)
    if with_shoal and not no_etcd:
        st = start_shoal(r)
        console.print(f"[green]{st['fs']}[/green] is up: {len(st['targets'])} targets on "
                      f"{len(st['nodes'])} server hosts; try `shoal rig exec --dir {r.dir} "
                      "client1 -- shoal status`", highlight=False)


@rig.command()
@rig_dir_option
@json_option
@handle_errors
def status(rig_dir: Path, as_json: bool) -> None:
    """The hosts: name, role, address, up/off, the pids in each."""
    check_supported()
    r = Rig(rig_dir)
    hosts = r.status()
    if as_json:
        print_json({"dir": str(r.dir), "store": r.store_url, "key": str(r.key_path),
                    "fs_defs": str(r.fs_defs_path), "hosts": [asdict(h) for h in hosts]})
        return
    table = Table(title=f"rig {r.dir}  store {r.store_url or '-'}")
    for col in ("host", "role", "address", "state", "pids"):
        table.add_column(col)
    for h in hosts:
        color = {"up": "green", "off": "red"}.get(h.state, "yellow")
        role = h.role + (" + etcd" if h.etcd else "")
        table.add_row(h.name, role, h.address, f"[{color}]{h.state}[/{color}]",
                      " ".join(map(str, h.pids)) or "-")
    console.print(table)


@rig.command("exec", context_settings={"ignore_unknown_options": True})
@rig_dir_option
@click.argument("host")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@handle_errors
def exec_(rig_dir: Path, host: str, argv: tuple[str, ...]) -> None:
    """Run a command in HOST (its network and mount namespaces), SHOAL_STORE and SHOAL_KEY
    set; its exit code is ours. Use `--` before the command: rig exec --dir D HOST -- CMD."""
    check_supported()
    res = Rig(rig_dir).exec(host, list(argv))
    # killed by signal N: exit 128+N, as a shell reports it
    sys.exit(res.returncode if res.returncode >= 0 else 128 - res.returncode)


@rig.command("power-off")
@rig_dir_option
@click.argument("host")
@handle_errors
def power_off(rig_dir: Path, host: str) -> None:
    """Pull HOST's plug: link down, every process SIGKILLed, mounts released."""
    check_supported()
    Rig(rig_dir).power_off(host)
    console.print(f"{host} is off", highlight=False)


@rig.command("power-on")
@rig_dir_option
@click.argument("host")
@click.option("--timeout", type=float, default=30.0, show_default=True,
              help="Seconds to wait for its etcd member to rejoin.")
@handle_errors
def power_on(rig_dir: Path, host: str, timeout: float) -> None:
    """Boot HOST again: link up, its etcd member (and daemon, if configured) started."""
    check_supported()
    Rig(rig_dir).power_on(host, timeout=timeout)
    console.print(f"{host} is up", highlight=False)


def _pause_command(resume: bool) -> None:
    verb = "resumed" if resume else "paused"

    @rig.command("resume" if resume else "pause",
                 help="Let a paused HOST run again (SIGCONT)." if resume else
                 "Freeze HOST (SIGSTOP to all its processes): it hangs, its connections "
                 "stay open.")
    @rig_dir_option
    @click.argument("host")
    @click.option("--only", metavar="NAME",
                  help="Only this process of the host (etcd, daemon).")
    @handle_errors
    def command(rig_dir: Path, host: str, only: str | None) -> None:
        check_supported()
        r = Rig(rig_dir)
        pids = r.resume(host, only) if resume else r.pause(host, only)
        console.print(f"{host}{f' ({only})' if only else ''} {verb}: {len(pids)} processes",
                      highlight=False)


_pause_command(resume=False)
_pause_command(resume=True)


@rig.command()
@rig_dir_option
@click.argument("hosts", nargs=-1, required=True)
@click.option("--from", "from_hosts", multiple=True, metavar="HOST",
              help="Cut HOSTS from these only (repeat it); default: from every other host.")
@click.option("--store", "store_only", is_flag=True,
              help="Cut HOSTS from the store alone (the etcd members' client port).")
@handle_errors
def partition(rig_dir: Path, hosts: tuple[str, ...], from_hosts: tuple[str, ...],
              store_only: bool) -> None:
    """Cut all traffic, both ways, between HOSTS and the others (or the --from hosts, or
    the store)."""
    check_supported()
    if store_only and from_hosts:
        raise click.UsageError("--store and --from do not go together")
    if store_only:
        Rig(rig_dir).cut_from_store(list(hosts))
        console.print(f"cut {' '.join(hosts)} from the store", highlight=False)
        return
    Rig(rig_dir).partition(list(hosts), list(from_hosts) or None)
    console.print(f"partitioned {' '.join(hosts)} from "
                  f"{' '.join(from_hosts) or 'every other host'}", highlight=False)


@rig.command()
@rig_dir_option
@handle_errors
def heal(rig_dir: Path) -> None:
    """Undo every partition and store cut."""
    check_supported()
    Rig(rig_dir).heal()
    console.print("healed", highlight=False)


@rig.command()
@rig_dir_option
@click.option("--purge", is_flag=True,
              help="Also delete the device images, etcd data, key and fs_defs.")
@handle_errors
def down(rig_dir: Path, purge: bool) -> None:
    """Remove every namespace, interface, loop device, mount and process of the rig (also
    after a crash of whatever made them)."""
    Rig(rig_dir).down(purge=purge)
    console.print(f"rig down in {Path(rig_dir).resolve()}", highlight=False)


def register(cli: click.Group) -> None:
    cli.add_command(rig)
