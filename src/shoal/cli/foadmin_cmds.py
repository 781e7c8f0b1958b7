"""`shoal foadmin`: the failover admin, after Cray's xtlusfoadmin.

    shoal foadmin                                the failover table: every target's failover
                                                 nodes, current owner, automatic failover and
                                                 admin state; every node's automatic failover
    shoal foadmin disable scratch-OST0001        no automatic failover of this target
    shoal foadmin disable --node nid00062        none onto or away from this node
    shoal foadmin enable  TARGET | --node NODE   switch it back on
    shoal foadmin reset   TARGET | --node NODE   back to the default (the fs's AUTO_FAILOVER)
    shoal foadmin set-state TARGET enabled|disabled|stopped

The current owner is the store's /shoal/targets/<target>/owner (written by the node serving
it) if there is one, else what the local cluster in --dir answers, if it runs on this store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from shoal.cli.common import console, dir_option, handle_errors, json_option, print_json, run
from shoal.cli.store_cmds import StoreRef, connected, make_table, store_option, store_ref
from shoal.cluster.local import LocalCluster
from shoal.config import foadmin
from shoal.config.model import FileSystemDef
from shoal.config.write_conf import read_conf
from shoal.errors import ConfigError, ShoalError
from shoal.store.base import ROOT, KeyValue


def _ref(ctx: click.Context, cluster_dir: Path, store_url: str | None) -> StoreRef:
    """--dir / --store given to the subcommand, else to `shoal foadmin` itself."""
    parent = ctx.parent.params if ctx.parent is not None else {}
    if store_url is None:
        store_url = parent.get("store_url")
    if ctx.get_parameter_source("cluster_dir") is ParameterSource.DEFAULT and (
            ctx.parent is not None
            and ctx.parent.get_parameter_source("cluster_dir") is not ParameterSource.DEFAULT):
        cluster_dir = parent["cluster_dir"]
    return store_ref(cluster_dir, store_url)


def _owner_of(kv: KeyValue) -> str:
    """The node in an owner record: a bare node name, or JSON with a `node` field."""
    try:
        value = json.loads(kv.value)
    except ValueError:
        return kv.value.decode(errors="replace")
    if isinstance(value, dict):
        return str(value.get("node") or value.get("owner") or "?")
    return str(value)


def _cluster_owners(ref: StoreRef) -> dict[str, str | None]:
    """Owners as the local cluster in --dir answers, if one runs there on this store."""
    cluster = LocalCluster(ref.cluster_dir)
    try:
        spec = cluster.spec
    except ConfigError:
        return {}
    if (spec.store_url or "") != ref.url and not (ref.default and not spec.store_url):
        return {}
    if not any(cluster.pid(n) is not None for n in spec.nodes):
        return {}
    try:
        st = cluster.status()
    except (ShoalError, OSError):
        return {}
    return {t["name"]: t["owner"] for t in st["targets"]}


def _setting(value: bool | None) -> str | None:
    return None if value is None else ("enabled" if value else "disabled")


def failover_table(ref: StoreRef, fs_name: str | None) -> dict[str, Any]:
    """Everything `shoal foadmin` shows, as JSON-ready data."""

    async def go() -> tuple[list[FileSystemDef], foadmin.FailoverSettings, dict[str, str]]:
        async with connected(ref) as store:
            fss = await read_conf(store, fs_name, strict=False)
            settings = await foadmin.read_failover_settings(store)
            kvs, _ = await store.range(f"{ROOT}/targets/")
            owners = {kv.key[len(f"{ROOT}/targets/"):-len("/owner")]: _owner_of(kv)
                      for kv in kvs if kv.key.endswith("/owner")}
            return fss, settings, owners

    fss, settings, owners = run(go())
    cluster_owners: dict[str, str | None] = {}
    if any(t.name not in owners for fs in fss for t in fs.targets):
        cluster_owners = _cluster_owners(ref)
    targets = []
    for fs in fss:
        for t in fs.targets:
            if t.name in owners:
                owner, source = owners[t.name], "store"
            elif cluster_owners.get(t.name):
                owner, source = cluster_owners[t.name], "cluster"
            else:
                owner, source = None, None
            explicit = settings.targets.get(t.name)
            targets.append({
                "fs": fs.name, "target": t.name, "kind": t.kind, "nodes": list(t.nodes),
                "owner": owner, "owner_source": source,
                "auto_failover": explicit if explicit is not None else fs.auto_failover,
                "auto_failover_setting": _setting(explicit),
                "fs_auto_failover": fs.auto_failover,
                "admin_state": settings.admin_state(t.name),
                "effective": settings.auto_failover(fs, t.name),
            })
    nodes: dict[str, dict[str, Any]] = {}
    for fs in fss:
        for n in fs.nodes:
            entry = nodes.setdefault(n, {"node": n, "fs": [], "primary_of": [],
                                         "backs_up": []})
            entry["fs"].append(fs.name)
            entry["primary_of"] += [t.name for t in fs.targets_of(n)]
            entry["backs_up"] += [t.name for t in fs.backed_up_by(n)]
    for n in settings.nodes:
        nodes.setdefault(n, {"node": n, "fs": [], "primary_of": [], "backs_up": []})
    for n, entry in nodes.items():
        entry["auto_failover"] = settings.nodes.get(n, True)
        entry["auto_failover_setting"] = _setting(settings.nodes.get(n))
    return {"store": ref.url, "targets": targets, "nodes": list(nodes.values())}


def _auto_text(value: bool, setting: str | None, default_name: str) -> str:
    word = "enabled" if value else "disabled"
    return word if setting is not None else f"{word} ({default_name})"


@click.group(invoke_without_command=True)
@click.option("--fs", "fs_name", default=None, help="Only this file system.")
@dir_option
@store_option
@json_option
@click.pass_context
@handle_errors
def foadmin_group(ctx: click.Context, fs_name: str | None, cluster_dir: Path,
                  store_url: str | None, as_json: bool) -> None:
    """The failover admin (xtlusfoadmin): with no command, show the failover table."""
    if ctx.invoked_subcommand is not None:
        return
    data = failover_table(store_ref(cluster_dir, store_url), fs_name)
    if as_json:
        print_json(data)
        return
    console.print(make_table(
        f"failover in {data['store']}",
        ("fs", "target", "failover nodes", "owner", "auto failover", "admin state"),
        ((t["fs"], t["target"], " ".join(t["nodes"]), t["owner"],
          _auto_text(t["auto_failover"], t["auto_failover_setting"], "fs default"),
          t["admin_state"]) for t in data["targets"])))
    console.print(make_table(
        "nodes", ("node", "fs", "primary of", "backs up", "auto failover"),
        ((n["node"], " ".join(n["fs"]), " ".join(n["primary_of"]), " ".join(n["backs_up"]),
          _auto_text(n["auto_failover"], n["auto_failover_setting"], "default"))
         for n in data["nodes"])))


def _switch(verb: str, enabled: bool | None, doc: str) -> click.Command:
    @click.command(verb, help=doc)
    @click.argument("target", required=False)
    @click.option("--node", default=None, help="A node instead of a target.")
    @dir_option
    @store_option
    @click.pass_context
    @handle_errors
    def cmd(ctx: click.Context, target: str | None, node: str | None, cluster_dir: Path,
            store_url: str | None) -> None:
        if (target is None) == (node is None):
            raise click.UsageError("give a TARGET or --node NODE (one of them)")
        ref = _ref(ctx, cluster_dir, store_url)

        async def go() -> int:
            async with connected(ref) as store:
                if node is not None:
                    return await foadmin.set_node_auto_failover(store, node, enabled)
                assert target is not None
                return await foadmin.set_auto_failover(store, target, enabled)

        revision = run(go())
        what = f"node {node}" if node is not None else target
        state = {True: "enabled", False: "disabled", None: "back to the default"}[enabled]
        click.echo(f"{what}: automatic failover {state} (store {ref.url}, "
                   f"revision {revision})")

    return cmd


for _verb, _enabled, _doc in (
        ("enable", True, "Enable automatic failover of TARGET, or onto and away from --node."),
        ("disable", False, "Disable automatic failover of TARGET, or onto and away from "
                           "--node."),
        ("reset", None, "Drop TARGET's (or --node's) own setting: back to the default.")):
    foadmin_group.add_command(_switch(_verb, _enabled, _doc))


@foadmin_group.command("set-state")
@click.argument("target")
@click.argument("state", type=click.Choice(foadmin.ADMIN_STATES))
@dir_option
@store_option
@click.pass_context
@handle_errors
def set_state(ctx: click.Context, target: str, state: str, cluster_dir: Path,
              store_url: str | None) -> None:
    """Set TARGET's administrative state (enabled, disabled, stopped)."""
    ref = _ref(ctx, cluster_dir, store_url)

    async def go() -> int:
        async with connected(ref) as store:
            return await foadmin.set_admin_state(store, target, state)

    revision = run(go())
    click.echo(f"{target}: admin state {state} (store {ref.url}, revision {revision})")


def register(cli: click.Group) -> None:
    cli.add_command(foadmin_group, "foadmin")
