"""`shoal ctl get_param|set_param`: the Lustre-like parameter tree of every node."""

from __future__ import annotations

from pathlib import Path

import click

from shoal.cli.common import dir_option, handle_errors, json_option, print_json, run
from shoal.node.admin import all_nodes
from shoal.cluster.local import LocalCluster


@click.group()
def ctl() -> None:
    """Parameters and controls (lctl)."""


@ctl.command("get_param")
@dir_option
@click.argument("patterns", nargs=-1, required=True)
@click.option("-n", "values_only", is_flag=True, help="Values only, without names.")
@json_option
@handle_errors
def get_param(cluster_dir: Path, patterns: tuple[str, ...], values_only: bool,
              as_json: bool) -> None:
    """Print parameters matching PATTERN (e.g. health_check, 'obdfilter.*.stats')."""
    cluster = LocalCluster(cluster_dir)
    spec, key = cluster.spec, cluster.key
    found: dict[str, dict[str, str]] = {}
    for pattern in patterns:
        answers = run(all_nodes(spec, key, "get_param", {"pattern": pattern}))
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
            shown = f"{node}:{name}" if multi_node and name == "health_check" else name
            if values_only:
                click.echo(value)
            elif "\n" in value:
                click.echo(f"{shown}=\n{value}")
            else:
                click.echo(f"{shown}={value}")


def register(cli: click.Group) -> None:
    cli.add_command(ctl)
