"""`shoal ctl get_param|set_param`: the Lustre-like parameter tree of every node.

`--node` limits either to the named nodes (a fail point is usually set on one node);
`get_param --client` mounts a client of its own and prints its tree (imports, timeouts, IR
state and its fail point) instead of the nodes'.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from shoal.cli.common import dir_option, handle_errors, json_option, print_json, run, site_of
from shoal.cluster.local import LocalCluster
from shoal.errors import NotConnected, NotFound, TimedOut
from shoal.node.admin import all_nodes, node_call
from shoal.node.spec import ClusterSpec

node_option = click.option(
    "--node", "nodes", multiple=True, metavar="NODE",
    help="Only this node (repeatable); default: every node.")


async def _on_nodes(spec: ClusterSpec, key: bytes, nodes: tuple[str, ...], op: str,
                    args: dict[str, Any]) -> dict[str, dict[str, Any] | None]:
    """One admin RPC to the named nodes (every node if none); None where none answered."""
    if not nodes:
        return await all_nodes(spec, key, op, args)
    unknown = [n for n in nodes if n not in spec.nids]
    if unknown:
        raise NotFound(f"no node {', '.join(unknown)} in this cluster "
                       f"({', '.join(spec.nids)})")

    async def one(node: str) -> dict[str, Any] | None:
        try:
            return await node_call(spec, key, node, op, args)
        except (NotConnected, TimedOut):
            return None

    return dict(zip(nodes, await asyncio.gather(*(one(n) for n in nodes)), strict=True))


async def _client_params(cluster_dir: Path, patterns: tuple[str, ...]) -> dict[str, str]:
    from shoal.client.client import Client
    from shoal.client.faults import faults_for
    from shoal.client.params import match

    async with Client.from_cluster_dir(cluster_dir) as client:
        await asyncio.gather(*(imp.connect() for imp in client.imports),
                             return_exceptions=True)  # a target that is down shows so
        tree = {**client.param_tree(),
                **{name: (lambda v=value: v)
                   for name, value in faults_for(client).params().items()}}
        found: dict[str, str] = {}
        for pattern in patterns:
            found.update(match(tree, pattern))
        return found


@click.group()
def ctl() -> None:
    """Parameters and controls (lctl)."""


@ctl.command("get_param")
@dir_option
@click.argument("patterns", nargs=-1, required=True)
@click.option("-n", "values_only", is_flag=True, help="Values only, without names.")
@node_option
@click.option("--client", "client", is_flag=True,
              help="Mount a client and print its parameters (mdc.*, osc.*, mgc.*, fail_*).")
@json_option
@handle_errors
def get_param(cluster_dir: Path, patterns: tuple[str, ...], values_only: bool,
              nodes: tuple[str, ...], client: bool, as_json: bool) -> None:
    """Print parameters matching PATTERN (e.g. health_check, 'obdfilter.*.stats', fail_loc)."""
    site = site_of(cluster_dir)
    spec, key = site.spec, site.key
    found: dict[str, dict[str, str]] = {}
    if client:
        found["client"] = run(_client_params(cluster_dir, patterns))
    for pattern in () if client else patterns:
        answers = run(_on_nodes(spec, key, nodes, "get_param", {"pattern": pattern}))
        for node, data in answers.items():
            if data:
                found.setdefault(node, {}).update(data["params"])
    if as_json:
        print_json(found)
        return
    if not any(found.values()):
        raise click.ClickException(f"no parameter matches {' '.join(patterns)}")
    multi_node = len([n for n in found if found[n]]) > 1
    for node, params in found.items():
        for name, value in params.items():
            # node-wide names (health_check, fail_loc, ...) would read the same on every node
            shown = f"{node}:{name}" if multi_node and "." not in name else name
            if values_only:
                click.echo(value)
            elif "\n" in value:
                click.echo(f"{shown}=\n{value}")
            else:
                click.echo(f"{shown}={value}")


@ctl.command("set_param")
@dir_option
@node_option
@click.argument("assignments", nargs=-1, required=True)
@handle_errors
def set_param(cluster_dir: Path, nodes: tuple[str, ...], assignments: tuple[str, ...]) -> None:
    """Set NAME=VALUE on every node that has it (or on --node NODE), e.g.
    'obdfilter.scratch-OST0000.inject_unhealthy=path to device lost' (empty value: clear),
    or a fail point: `--node nid00062 fail_loc=0x80000506 fail_opc=write`
    (docs/fault-injection.md); fail_loc=0 clears it."""
    site = site_of(cluster_dir)
    spec, key = site.spec, site.key
    pairs = []
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{assignment!r}: expected NAME=VALUE")
        pairs.append((name, value))
    # fail_loc last: a point must not fire before its fail_val/fail_opc/... are in place
    pairs.sort(key=lambda p: p[0] == "fail_loc")
    for name, value in pairs:
        answers = run(_on_nodes(spec, key, nodes, "set_param", {"name": name, "value": value}))
        done = [(n, p) for n, data in answers.items() if data for p in data["set"]]
        if not done:
            raise click.ClickException(f"no node has a settable parameter matching {name}")
        for node, param in done:
            click.echo(f"{node}: {param}={value}")
        if name == "fail_loc" and site.local is not None:
            for node in sorted({n for n, _ in done}):
                LocalCluster(site.local).note_fault(node, f"fail_loc={value}")



@ctl.command("abort_recovery")
@dir_option
@click.argument("target")
@handle_errors
def abort_recovery(cluster_dir: Path, target: str) -> None:
    """End TARGET's recovery window now (lctl abort_recovery): clients that have not
    finished replaying are evicted, everyone else goes on."""
    site = site_of(cluster_dir)
    answers = run(all_nodes(site.spec, site.key, "abort_recovery", {"target": target}))
    done = [(n, t) for n, data in answers.items() if data for t in data["aborted"]]
    if not done:
        raise click.ClickException(f"no target matching {target} is recovering")
    for node, name in done:
        click.echo(f"{node}: {name}: recovery aborted")


def register(cli: click.Group) -> None:
    cli.add_command(ctl)
