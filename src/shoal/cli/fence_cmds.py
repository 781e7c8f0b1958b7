"""`shoal fence`: fence a node by hand, look at a node's fencing, confirm a manual fence.

    shoal fence NODE                 fence it now with its configured method (= `fence off`)
    shoal fence off NODE [--method M]
    shoal fence status NODE          method, power state, a manual fence waiting, if any
    shoal fence confirm NODE         "I powered NODE off": lets a waiting manual fence go on

The method comes from the cluster's settings (FENCE[NODE], FENCE_METHOD; see shoal.fence):
cluster.json in --dir, or, without one, the file system in the store that has NODE.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from shoal.cli.common import console, dir_option, handle_errors, json_option, print_json, run
from shoal.cli.store_cmds import StoreRef, connected, store_option, store_ref
from shoal.config.db import list_filesystems
from shoal.errors import NotFound
from shoal.fence import (
    fence_confirm_key,
    fence_method,
    fence_request_key,
    make_driver,
    parse_method,
)
from shoal.fence.manual import confirmation_value
from shoal.node.spec import SPEC_FILE, ClusterSpec
from shoal.store import Store, open_store


class _FenceGroup(click.Group):
    """`shoal fence NODE` means `shoal fence off NODE`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["off", *args]
        return super().parse_args(ctx, args)


def _store_or_none(ref: StoreRef) -> Store | None:
    """The store, unless it is a SQLite file that does not exist (nothing to read there, and
    a local fence needs no store)."""
    store = open_store(ref.url)
    path = getattr(store, "path", None)
    if isinstance(path, Path) and not path.exists():
        return None
    return store


async def _settings(node: str, cluster_dir: Path, store: Store | None) -> dict[str, Any]:
    """The settings that configure NODE's fencing: cluster.json's, else the store's."""
    if (cluster_dir / SPEC_FILE).exists():
        spec = ClusterSpec.load(cluster_dir)
        if node not in spec.nids:
            raise NotFound(f"no node {node!r} in {cluster_dir / SPEC_FILE} "
                           f"({', '.join(spec.nids)})")
        return dict(spec.settings)
    if store is not None:
        for fs in await list_filesystems(store):
            if node in fs.nids:
                return dict(fs.settings)
    raise NotFound(f"no node {node!r}: no cluster in {cluster_dir} and no file system in "
                   "the store has it (give --dir or --store)")


@click.group(cls=_FenceGroup, invoke_without_command=False)
def fence() -> None:
    """Fence nodes (STONITH): `shoal fence NODE` fences NODE now."""


@fence.command("off")
@click.argument("node")
@click.option("--method", default=None, metavar="METHOD",
              help="Use this method instead of the configured one (local, manual, "
                   "fence-agent:<agent> key=value ...).")
@dir_option
@store_option
@json_option
@handle_errors
def off(node: str, method: str | None, cluster_dir: Path, store_url: str | None,
        as_json: bool) -> None:
    """Fence NODE now and verify it is off (exit 1 if that fails)."""
    cluster_dir = cluster_dir.resolve()
    ref = store_ref(cluster_dir, store_url)

    async def go() -> dict[str, Any]:
        store = _store_or_none(ref)
        try:
            settings = await _settings(node, cluster_dir, store)
            chosen = method or fence_method(settings, node, cluster_dir=cluster_dir)
            if store is None and parse_method(chosen).kind == "manual":
                # the request and its confirmation live in the store: make it
                ref.cluster_dir.mkdir(parents=True, exist_ok=True)
                store = open_store(ref.url)
            driver = make_driver(chosen, cluster_dir=cluster_dir, store=store,
                                 settings=settings, node=node, requester="shoal fence")
            return asdict(await driver.fence(node))
        finally:
            if store is not None:
                await store.close()

    result = run(go())
    if as_json:
        print_json(result)
    else:
        console.print(f"{node} fenced ({result['method']}): {result['detail']} "
                      f"[{result['seconds']:.3f}s]", highlight=False)


@fence.command("status")
@click.argument("node")
@dir_option
@store_option
@json_option
@handle_errors
def status(node: str, cluster_dir: Path, store_url: str | None, as_json: bool) -> None:
    """NODE's fence method, its power state as that method sees it, and any manual fence
    waiting for a confirmation."""
    cluster_dir = cluster_dir.resolve()
    ref = store_ref(cluster_dir, store_url)

    async def go() -> dict[str, Any]:
        store = _store_or_none(ref)
        try:
            settings = await _settings(node, cluster_dir, store)
            method = fence_method(settings, node, cluster_dir=cluster_dir)
            parsed = parse_method(method)
            out: dict[str, Any] = {
                "node": node, "method": parsed.describe(), "driver": parsed.kind,
                "power": "unknown", "request": None, "confirmation": None}
            if store is not None or parsed.kind != "manual":
                # (a manual fence knows nothing of power; without a store it has no driver)
                driver = make_driver(method, cluster_dir=cluster_dir, store=store,
                                     settings=settings, node=node)
                out["driver"], out["power"] = driver.name, await driver.status(node)
            if store is not None:
                for field, key in (("request", fence_request_key(node)),
                                   ("confirmation", fence_confirm_key(node))):
                    kv = await store.get(key)
                    if kv is not None:
                        out[field] = {"value": _decode(kv.value), "revision": kv.mod_revision}
            return out
        finally:
            if store is not None:
                await store.close()

    out = run(go())
    if as_json:
        print_json(out)
        return
    console.print(f"{node}: method {out['method']}, power {out['power']}", highlight=False)
    if out["request"]:
        req = out["request"]["value"]
        who = (f"requested by {req.get('requester') or '?'} at {req.get('at', '?')}"
               if isinstance(req, dict) else str(req))
        console.print(f"  a manual fence is waiting ({who}): run `shoal fence confirm {node}` "
                      "once it is off", highlight=False)
    if out["confirmation"]:
        console.print(f"  confirmation not yet consumed: {out['confirmation']['value']}",
                      highlight=False)


@fence.command("confirm")
@click.argument("node")
@click.option("--by", "who", default=None, help="Who confirms (default: your user name).")
@click.option("--force", is_flag=True,
              help="Write the confirmation even if no manual fence of NODE is waiting "
                   "(it counts only for a fence that is already waiting).")
@dir_option
@store_option
@handle_errors
def confirm(node: str, who: str | None, force: bool, cluster_dir: Path,
            store_url: str | None) -> None:
    """Confirm that NODE is powered off: a manual fence waiting for it goes on.

    Only confirm what you have checked: the node's targets will be mounted elsewhere, and a
    node still writing to them corrupts them."""
    ref = store_ref(cluster_dir, store_url)

    async def go() -> tuple[Any, int]:
        async with connected(ref, write=force) as s:
            request = await s.get(fence_request_key(node))
            if request is None and not force:
                raise NotFound(f"no manual fence of {node} is waiting for a confirmation "
                               f"(store {ref.url}); --force writes one anyway, but it counts "
                               "only for a fence that is already waiting")
            rev = await s.put(fence_confirm_key(node), confirmation_value(who))
            return (_decode(request.value) if request else None), rev

    request, rev = run(go())
    waiting = f"; the fence requested by {request.get('requester') or '?'} goes on" \
        if isinstance(request, dict) else ""
    console.print(f"{node}: fence confirmed at revision {rev}{waiting}", highlight=False)


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def register(cli: click.Group) -> None:
    cli.add_command(fence)
