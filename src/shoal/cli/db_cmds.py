"""`shoal db filesystem|service|failover add|rm|list`: hand edits of the configuration in
the store, without files, like Cray's xtfilesys2db, xtlustreserv2db and xtlustrefailover2db.

    shoal db filesystem add scratch2 --nid nid00070=127.0.0.70 --nid nid00071=127.0.0.71
    shoal db service add scratch2-OST0000 nid00070 ost0     # TARGET NODE DEVICE
    shoal db service add scratch2-OST0000 nid00071 ost0     # ... and its backup
    shoal db failover add scratch2-OST0000 nid00071 nid00070  # the order, primary first
    shoal db failover list --json

Each edit is one guarded transaction (see config/db.py): if anyone else changed the
configuration since it was read, nothing is written and the command says to re-run it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import click

from shoal.cli.common import console, dir_option, handle_errors, json_option, print_json, run
from shoal.cli.config_cmds import fs_to_json, report_diff
from shoal.cli.store_cmds import StoreRef, connected, make_table, store_option, store_ref
from shoal.config import db
from shoal.config.fs_defs import render_settings
from shoal.config.model import parse_target_name
from shoal.config.write_conf import Diff, snapshot
from shoal.errors import InvalidArgument
from shoal.store import Store

T = TypeVar("T")

fs_option = click.option("--fs", "fs_name", default=None,
                         help="The file system (default: from the target's name; for the "
                              "MGS, the store's only file system).")


def _run(cluster_dir: Path, store_url: str | None, fn: Callable[[Store], Awaitable[T]],
         *, write: bool) -> tuple[StoreRef, T]:
    ref = store_ref(cluster_dir, store_url)

    async def go() -> T:
        async with connected(ref, write=write) as store:
            return await fn(store)

    return ref, run(go())


def _edit(cluster_dir: Path, store_url: str | None,
          fn: Callable[[Store], Awaitable[Diff]]) -> None:
    ref, diff = _run(cluster_dir, store_url, fn, write=True)
    report_diff(diff, ref.url)


def _pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    """NAME=VALUE pairs, from repeated options and/or space-separated lists."""
    out: dict[str, str] = {}
    for value in values:
        for word in value.split():
            name, sep, rest = word.partition("=")
            if not sep or not name or not rest:
                raise InvalidArgument(f"{what} {word!r}: expected NAME=VALUE")
            out[name] = rest
    return out


async def _fs_of(store: Store, target: str, fs: str | None) -> str:
    try:
        tfs, _kind, _ = parse_target_name(target)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    if fs is not None:
        return fs
    if tfs:
        return tfs
    configured = sorted((await snapshot(store)).fss)
    if len(configured) == 1:
        return configured[0]
    raise InvalidArgument(f"{target}: say which file system with --fs "
                          f"(the store holds {', '.join(configured) or 'none'})")


@click.group("db")
def db_group() -> None:
    """Hand edits of the configuration in the store (xtfilesys2db, xtlustreserv2db,
    xtlustrefailover2db)."""


# -- file systems ---------------------------------------------------------------------------


@db_group.group()
def filesystem() -> None:
    """File systems: name, NID map, AUTO_FAILOVER, settings (xtfilesys2db)."""


@filesystem.command("add")
@click.argument("name")
@click.option("--nid", "nids", multiple=True, metavar="NODE=ADDRESS",
              help="A node and its address (repeat, or give several separated by spaces).")
@click.option("--auto-failover/--no-auto-failover", default=False, show_default=True)
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Another setting (STRIPE_SIZE=1048576, ...).")
@dir_option
@store_option
@handle_errors
def fs_add(name: str, nids: tuple[str, ...], auto_failover: bool, settings: tuple[str, ...],
           cluster_dir: Path, store_url: str | None) -> None:
    """Add a file system with no targets yet (add them with `shoal db service add`)."""
    nid_map, extra = _pairs(nids, "--nid"), _pairs(settings, "--set")
    _edit(cluster_dir, store_url, lambda s: db.add_filesystem(
        s, name, nids=nid_map, auto_failover=auto_failover, settings=extra))


@filesystem.command("update")
@click.argument("name")
@click.option("--nid", "nids", multiple=True, metavar="NODE=ADDRESS",
              help="Add or change a node's address.")
@click.option("--remove-node", "remove_nodes", multiple=True, metavar="NODE")
@click.option("--auto-failover/--no-auto-failover", default=None)
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE")
@click.option("--unset", "unset", multiple=True, metavar="KEY")
@dir_option
@store_option
@handle_errors
def fs_update(name: str, nids: tuple[str, ...], remove_nodes: tuple[str, ...],
              auto_failover: bool | None, settings: tuple[str, ...], unset: tuple[str, ...],
              cluster_dir: Path, store_url: str | None) -> None:
    """Change a file system's NID map, AUTO_FAILOVER or settings."""
    nid_map, extra = _pairs(nids, "--nid"), _pairs(settings, "--set")
    _edit(cluster_dir, store_url, lambda s: db.update_filesystem(
        s, name, auto_failover=auto_failover, nids=nid_map, remove_nodes=remove_nodes,
        settings=extra, remove_settings=unset))


@filesystem.command("rm")
@click.argument("name")
@dir_option
@store_option
@handle_errors
def fs_rm(name: str, cluster_dir: Path, store_url: str | None) -> None:
    """Remove a file system and all its targets from the store."""
    _edit(cluster_dir, store_url, lambda s: db.remove_filesystem(s, name))


@filesystem.command("list")
@dir_option
@store_option
@json_option
@handle_errors
def fs_list(cluster_dir: Path, store_url: str | None, as_json: bool) -> None:
    """The file systems in the store."""
    ref, fss = _run(cluster_dir, store_url, db.list_filesystems, write=False)
    if as_json:
        print_json([fs_to_json(fs) for fs in fss])
        return
    console.print(make_table(f"file systems in {ref.url}",
                             ("fs", "auto failover", "nodes", "targets", "settings"),
                             ((fs.name, "yes" if fs.auto_failover else "no",
                               " ".join(f"{n}={a}" for n, a in fs.nids.items()),
                               len(fs.targets), render_settings(fs.settings))
                              for fs in fss)))


# -- services -------------------------------------------------------------------------------


@db_group.group()
def service() -> None:
    """Services: which node may serve which target from which device (xtlustreserv2db)."""


@service.command("add")
@click.argument("target")
@click.argument("node")
@click.argument("device")
@fs_option
@dir_option
@store_option
@handle_errors
def svc_add(target: str, node: str, device: str, fs_name: str | None, cluster_dir: Path,
            store_url: str | None) -> None:
    """Let NODE serve TARGET from DEVICE: a new target, or one more node at the end of its
    failover order."""

    async def edit(s: Store) -> Diff:
        return await db.add_service(s, await _fs_of(s, target, fs_name), target, node, device)

    _edit(cluster_dir, store_url, edit)


@service.command("rm")
@click.argument("target")
@click.argument("node", required=False)
@fs_option
@dir_option
@store_option
@handle_errors
def svc_rm(target: str, node: str | None, fs_name: str | None, cluster_dir: Path,
           store_url: str | None) -> None:
    """Stop NODE serving TARGET; without NODE, remove the target."""

    async def edit(s: Store) -> Diff:
        return await db.remove_service(s, await _fs_of(s, target, fs_name), target, node)

    _edit(cluster_dir, store_url, edit)


def _rows_json(rows: list[Any]) -> list[dict[str, Any]]:
    return [{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(r).items()}
            for r in rows]


@service.command("list")
@fs_option
@dir_option
@store_option
@json_option
@handle_errors
def svc_list(fs_name: str | None, cluster_dir: Path, store_url: str | None,
             as_json: bool) -> None:
    """Every target on every node that may serve it."""
    ref, rows = _run(cluster_dir, store_url, lambda s: db.list_services(s, fs_name),
                     write=False)
    if as_json:
        print_json(_rows_json(rows))
        return
    console.print(make_table(f"services in {ref.url}",
                             ("fs", "target", "kind", "index", "node", "device"),
                             ((r.fs, r.target, r.kind, r.index, r.node, r.device)
                              for r in rows)))


# -- failover -------------------------------------------------------------------------------


@db_group.group()
def failover() -> None:
    """Failover orders: primary first, then the backups (xtlustrefailover2db)."""


@failover.command("add")
@click.argument("target")
@click.argument("nodes", nargs=-1, required=True)
@click.option("--device", "devices", multiple=True, metavar="NODE=DEVICE",
              help="Device of a node new to the target (default: the primary's path).")
@fs_option
@dir_option
@store_option
@handle_errors
def fo_add(target: str, nodes: tuple[str, ...], devices: tuple[str, ...], fs_name: str | None,
           cluster_dir: Path, store_url: str | None) -> None:
    """Set TARGET's failover order to NODES (primary first, then the backups)."""
    devs = _pairs(devices, "--device")

    async def edit(s: Store) -> Diff:
        fs = await _fs_of(s, target, fs_name)
        return await db.set_failover(s, fs, target, nodes, devices=devs)

    _edit(cluster_dir, store_url, edit)


@failover.command("rm")
@click.argument("target")
@fs_option
@dir_option
@store_option
@handle_errors
def fo_rm(target: str, fs_name: str | None, cluster_dir: Path, store_url: str | None) -> None:
    """Drop TARGET's backups: only its primary may serve it."""

    async def edit(s: Store) -> Diff:
        return await db.remove_failover(s, await _fs_of(s, target, fs_name), target)

    _edit(cluster_dir, store_url, edit)


@failover.command("list")
@fs_option
@dir_option
@store_option
@json_option
@handle_errors
def fo_list(fs_name: str | None, cluster_dir: Path, store_url: str | None,
            as_json: bool) -> None:
    """Every target's failover order."""
    ref, rows = _run(cluster_dir, store_url, lambda s: db.list_failover(s, fs_name),
                     write=False)
    if as_json:
        print_json(_rows_json(rows))
        return
    console.print(make_table(f"failover in {ref.url}", ("fs", "target", "primary", "backups"),
                             ((r.fs, r.target, r.primary, " ".join(r.backups))
                              for r in rows)))


def register(cli: click.Group) -> None:
    cli.add_command(db_group)
