"""The `shoal` command: one module per command group, each imported only when one of its
commands runs. Every process of a cluster is a `shoal` command (a node's daemon, a mount,
a load's workers), and importing all groups (the rig's, the benchmarks', the web page's
aiohttp) cost each of them half a second of CPU at start."""

from __future__ import annotations

import importlib
import logging
import os

import click

from shoal.cli.stdio import use_whole_writes

# command -> the module of shoal.cli whose register() adds it (tests/unit/test_cli_main.py
# checks that each module adds exactly the commands listed for it)
COMMANDS = {
    "up": "cluster_cmds", "down": "cluster_cmds", "start": "cluster_cmds",
    "status": "cluster_cmds", "format": "cluster_cmds", "keygen": "cluster_cmds",
    "node": "cluster_cmds",
    "fs": "fs_cmds", "lfs": "lfs_cmds", "ctl": "ctl_cmds", "load": "load_cmds",
    "bench": "bench_cmds", "demo": "demo_cmds", "config": "config_cmds", "db": "db_cmds",
    "foadmin": "foadmin_cmds", "store": "store_cmds",
    "events": "failover_cmds", "failback": "failover_cmds", "failover": "failover_cmds",
    "fence": "fence_cmds", "mount": "mount_cmds", "umount": "mount_cmds", "rig": "rig_cmds",
    "sim": "sim_cmds", "top": "top_cmds", "torture": "torture_cmds", "web": "web_cmds",
}


def commands_of(module: str) -> dict[str, click.Command]:
    """The commands module shoal.cli.`module` registers."""
    group = click.Group()
    importlib.import_module(f"shoal.cli.{module}").register(group)
    return dict(group.commands)


class LazyGroup(click.Group):
    """Click's group, loading a command's module when it is asked for (click's documented
    pattern for lazily loaded subcommands)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        return commands_of(module).get(cmd_name) if module is not None else None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def cli(verbose: int) -> None:
    """Shoal: a parallel file system with Lustre's architecture and automatic failover."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main() -> None:
    # whatever Shoal writes (cluster.json with fence passwords, the store, devices and the
    # file system's objects, logs) is its owner's alone
    os.umask(0o077)
    use_whole_writes()
    cli(prog_name=os.environ.get("SHOAL_PROG", "shoal"))
