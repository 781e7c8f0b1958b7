"""`shoal config generate|write|show`: fs_defs -> CSV tables -> the store, and back.

    shoal config generate FS_DEFS --out DIR      CSV tables a person can read and edit
    shoal config write DIR_OR_FS_DEFS            validate, show the difference, apply it in
                                                 one transaction (--dry-run, --prune)
    shoal config show [FS] [--format ...]        what the store holds

Input is read and checked completely before the store is contacted, so a corrupt table or
fs_defs file (reported as `file:line: reason`) never writes anything.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from shoal.cli.common import dir_option, err_console, handle_errors, print_json, run
from shoal.cli.store_cmds import StoreRef, connected, make_table, store_option, store_ref
from shoal.config import settings as settings_schema
from shoal.config import tables
from shoal.config.fs_defs import render_fs_defs
from shoal.config.model import FileSystemDef
from shoal.config.write_conf import Diff, config_generation, read_conf, write_conf
from shoal.errors import ConfigError
from shoal.fence import validate_settings as validate_fence
from shoal.store import open_store


def warn(text: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {escape(text)}", highlight=False)


def fs_to_json(fs: FileSystemDef) -> dict[str, Any]:
    return {
        "name": fs.name,
        "auto_failover": fs.auto_failover,
        "nids": dict(fs.nids),
        "settings": dict(fs.settings),
        "targets": [
            {"name": t.name, "kind": t.kind, "index": t.index, "nodes": list(t.nodes),
             "devices": [list(d) for d in t.devices]}
            for t in fs.targets
        ],
    }


def report_diff(diff: Diff, ref_url: str, *, dry_run: bool = False) -> None:
    """Print what a configuration change did (or would do) to the store."""
    if diff.empty:
        click.echo(f"no changes: store {ref_url} already holds this configuration")
        return
    click.echo(settings_schema.mask_secrets(diff.render()))
    counts = (f"{len(diff.added)} added, {len(diff.changed)} changed, "
              f"{len(diff.removed)} removed")
    if dry_run:
        click.echo(f"dry run: nothing written to {ref_url} ({counts})")
    else:
        click.echo(f"written to {ref_url} at revision {diff.revision} ({counts})")


@click.group()
def config() -> None:
    """File system configuration: fs_defs -> CSV tables -> the cluster store."""


@config.command()
@click.argument("fs_defs", type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Directory for filesystems.csv, nodes.csv, services.csv, failover.csv "
                   "(file systems already there are kept, or replaced by name).")
@handle_errors
def generate(fs_defs: Path, out_dir: Path) -> None:
    """Turn an fs_defs file (or a tables directory) into CSV tables."""
    fss, warnings = tables.load(fs_defs)
    for w in warnings:
        warn(w)
    paths = tables.generate(fss, out_dir)
    names = ", ".join(fs.name for fs in fss)
    click.echo(f"{names}: wrote {', '.join(str(p) for p in paths)}")


async def _dry_run_on_empty(fss: list[FileSystemDef]) -> Diff:
    """What writing into a store that does not exist yet would do: the diff against an
    empty store, computed on a scratch one (the real one is not created by a dry run)."""
    with tempfile.TemporaryDirectory(prefix="shoal-dry-run-") as tmp:
        async with open_store(str(Path(tmp) / "empty.db")) as scratch:
            return await write_conf(scratch, fss, dry_run=True)


@config.command("write")
@click.argument("source", type=click.Path(exists=True, path_type=Path),
                metavar="DIR_OR_FS_DEFS")
@click.option("--dry-run", is_flag=True, help="Show the difference, write nothing.")
@click.option("--prune", is_flag=True,
              help="Also remove file systems from the store that SOURCE does not define.")
@dir_option
@store_option
@handle_errors
def write(source: Path, dry_run: bool, prune: bool, cluster_dir: Path,
          store_url: str | None) -> None:
    """Validate a tables directory or an fs_defs file and push it into the store in one
    transaction, showing what changed (running it twice changes nothing)."""
    fss, warnings = tables.load(source)  # all checked before the store is touched
    for fs in fss:
        try:
            validate_fence(fs.settings, fs.nodes)
        except ConfigError as exc:
            raise ConfigError(f"{fs.source or source}: fencing: {exc}") from None
    for w in warnings:
        warn(w)
    ref = store_ref(cluster_dir, store_url)

    async def go() -> Diff:
        if dry_run and _missing_sqlite(ref):
            return await _dry_run_on_empty(fss)
        async with connected(ref, write=True) as store:
            return await write_conf(store, fss, dry_run=dry_run, prune=prune)

    report_diff(run(go()), ref.url, dry_run=dry_run)


def _missing_sqlite(ref: StoreRef) -> bool:
    path = getattr(open_store(ref.url), "path", None)
    return isinstance(path, Path) and not path.exists()


@config.command("show")
@click.argument("fs", required=False)
@click.option("--format", "fmt", type=click.Choice(["fs_defs", "tables", "json"]),
              default="fs_defs", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="With --format tables: write the CSV files into this directory.")
@click.option("--show-secrets", is_flag=True,
              help="Print fence passwords and the like as they are (masked as *** else).")
@dir_option
@store_option
@handle_errors
def show(fs: str | None, fmt: str, out_dir: Path | None, show_secrets: bool,
         cluster_dir: Path, store_url: str | None) -> None:
    """Print the configuration the store holds (all file systems, or FS). Secrets (a fence
    agent's password=, ...) are masked unless --show-secrets; --out files hold them, 0600."""
    def echo(text: str, nl: bool = True) -> None:
        click.echo(text if show_secrets else settings_schema.mask_secrets(text), nl=nl)

    if out_dir is not None and fmt != "tables":
        raise click.UsageError("--out goes with --format tables")
    ref = store_ref(cluster_dir, store_url)

    async def go() -> tuple[list[FileSystemDef], int, str | None]:
        async with connected(ref) as store:
            problems = None
            try:
                await read_conf(store, fs, strict=True)
            except ConfigError as exc:
                problems = str(exc)
            return (await read_conf(store, fs, strict=False), await config_generation(store),
                    problems)

    fss, generation, problems = run(go())
    if problems:
        warn(f"the configuration in the store is not complete or not valid "
             f"(`shoal up` would refuse it):\n{problems}")
    if fmt == "json":
        echo(json.dumps({"store": ref.url, "generation": generation,
                         "filesystems": [fs_to_json(x) for x in fss]}, indent=2))
        return
    if not fss:
        err_console.print(f"store {ref.url} holds no file system configuration",
                          highlight=False, markup=False)
        return
    if fmt == "fs_defs":
        if len(fss) == 1:
            echo(render_fs_defs(fss[0]), nl=False)
            return
        echo("\n".join(f"# file system {x.name}\n{render_fs_defs(x)}" for x in fss),
             nl=False)
        return
    if out_dir is not None:
        paths = tables.generate(fss, out_dir)
        click.echo(f"wrote {', '.join(str(p) for p in paths)}")
        return
    rendered = tables.render_tables(fss)
    echo("\n".join(f"==> {name} <==\n{text}" for name, text in rendered.items()), nl=False)


def register(cli: click.Group) -> None:
    cli.add_command(config)


@config.command("settings")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def settings_cmd(as_json: bool) -> None:
    """Every fs_defs setting Shoal reads: type, default, allowed values, what it does."""
    rows = settings_schema.describe()
    if as_json:
        print_json(rows)
        return
    from rich.console import Console

    Console().print(make_table(
        "fs_defs settings (node-wide ones must agree between file systems sharing a node)",
        ("name", "type", "default", "allowed", "node-wide", "what it does"),
        ((r["name"], r["type"], r["default"], r["allowed"], "yes" if r["node_wide"] else "",
          r["help"]) for r in rows)))
