"""`shoal ctl get_param|set_param`: the Lustre-like parameter tree of every node."""

from __future__ import annotations

from pathlib import Path

import click

from shoal.cli.common import dir_option, handle_errors, json_option, print_json, run
from shoal.cluster.local import LocalCluster
from shoal.node.admin import all_nodes


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


@ctl.command("set_param")
@dir_option
@click.argument("assignments", nargs=-1, required=True)
@handle_errors
def set_param(cluster_dir: Path, assignments: tuple[str, ...]) -> None:
    """Set NAME=VALUE on every node that has it, e.g.
    'obdfilter.scratch-OST0000.inject_unhealthy=path to device lost' (empty value: clear)."""
    cluster = LocalCluster(cluster_dir)
    spec, key = cluster.spec, cluster.key
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{assignment!r}: expected NAME=VALUE")
        answers = run(all_nodes(spec, key, "set_param", {"name": name, "value": value}))
        done = [(n, p) for n, data in answers.items() if data for p in data["set"]]
        if not done:
            raise click.ClickException(f"no node has a settable parameter matching {name}")
        for node, param in done:
            click.echo(f"{node}: {param}={value}")


@ctl.command("abort_recovery")
@dir_option
@click.argument("target")
@handle_errors
def abort_recovery(cluster_dir: Path, target: str) -> None:
    """End TARGET's recovery window now (lctl abort_recovery): clients that have not
    finished replaying are evicted, everyone else goes on."""
    cluster = LocalCluster(cluster_dir)
    answers = run(all_nodes(cluster.spec, cluster.key, "abort_recovery", {"target": target}))
    done = [(n, t) for n, data in answers.items() if data for t in data["aborted"]]
    if not done:
        raise click.ClickException(f"no target matching {target} is recovering")
    for node, name in done:
        click.echo(f"{node}: {name}: recovery aborted")


def register(cli: click.Group) -> None:
    cli.add_command(ctl)
