"""How configuration commands find the cluster store (`--store URL`, else the cluster's own),
the table printing they share, and `shoal store ls|get` to look at raw keys.

Every `shoal config|db|foadmin|store` command takes `--store URL` (sqlite:///path.db, a file
path, or etcd://host:port[,...]); without it, the store of the cluster in `--dir`: what its
cluster.json records (`shoal up --store ...`), else the SQLite file `<dir>/store.db`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from shoal.cli.common import console, dir_option, handle_errors, json_option, print_json, run
from shoal.cluster.store_setup import cluster_store_url, normalize_url
from shoal.errors import NotFound
from shoal.store import Store, open_store
from shoal.store.base import ROOT

store_option = click.option(
    "--store", "store_url", metavar="URL", default=None, envvar="SHOAL_STORE",
    help="The cluster store: sqlite:///path.db, a file path, or etcd://host:port[,...] "
         "[$SHOAL_STORE] (default: the store of the cluster in --dir: what its cluster.json "
         "records, else <dir>/store.db).")


@dataclass(frozen=True, slots=True)
class StoreRef:
    """Which store a command works on."""

    url: str
    cluster_dir: Path
    default: bool  # found from --dir, not named by --store


def store_ref(cluster_dir: Path, store_url: str | None) -> StoreRef:
    if store_url:
        return StoreRef(normalize_url(store_url), Path(cluster_dir).resolve(), False)
    return StoreRef(cluster_store_url(cluster_dir), Path(cluster_dir).resolve(), True)


@asynccontextmanager
async def connected(ref: StoreRef, *, write: bool = False) -> AsyncIterator[Store]:
    """The store, closed afterwards. A SQLite store that does not exist yet is created only
    by a command that writes (the cluster's default one in a directory made for it); one
    that reads says there is nothing there rather than leave an empty file behind."""
    store = open_store(ref.url)
    try:
        path = getattr(store, "path", None)
        if isinstance(path, Path) and not path.exists():
            if not write:
                raise NotFound(f"store {ref.url} does not exist: nothing is configured there "
                               "yet (`shoal config write` or `shoal up` creates it)")
            if ref.default:
                path.parent.mkdir(parents=True, exist_ok=True)
        yield store
    finally:
        await store.close()


def make_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """A rich table whose cells are shown as they are (no markup: `MDSDEV[0]` stays)."""
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*(c if isinstance(c, Text) else Text("-" if c in (None, "") else str(c))
                        for c in row))
    return table


def _value(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


@click.group()
def store() -> None:
    """Look at the raw keys of the cluster store (see DESIGN.md: Store layout)."""


@store.command("ls")
@click.argument("prefix", default=ROOT + "/")
@dir_option
@store_option
@json_option
@handle_errors
def ls(prefix: str, cluster_dir: Path, store_url: str | None, as_json: bool) -> None:
    """Every key under PREFIX (default /shoal/), with its revisions and lease."""
    ref = store_ref(cluster_dir, store_url)

    async def go() -> tuple[list[Any], int]:
        async with connected(ref) as s:
            return await s.range(prefix)

    kvs, revision = run(go())
    if as_json:
        print_json({"store": ref.url, "revision": revision, "keys": [
            {"key": kv.key, "value": _value(kv.value), "create_revision": kv.create_revision,
             "mod_revision": kv.mod_revision, "version": kv.version, "lease": kv.lease}
            for kv in kvs]})
        return
    console.print(make_table(
        f"{ref.url} at revision {revision}",
        ("key", "value", "created", "modified", "lease"),
        ((kv.key, kv.value.decode(errors="replace"), kv.create_revision, kv.mod_revision,
          f"{kv.lease:x}" if kv.lease else "") for kv in kvs)))


@store.command("get")
@click.argument("key")
@dir_option
@store_option
@handle_errors
def get(key: str, cluster_dir: Path, store_url: str | None) -> None:
    """Print one key's value (exit 1 if it is absent)."""
    ref = store_ref(cluster_dir, store_url)

    async def go() -> bytes | None:
        async with connected(ref) as s:
            kv = await s.get(key)
            return kv.value if kv is not None else None

    value = run(go())
    if value is None:
        raise NotFound(f"no key {key} in store {ref.url}")
    click.echo(value.decode(errors="replace"))


def register(cli: click.Group) -> None:
    cli.add_command(store)
