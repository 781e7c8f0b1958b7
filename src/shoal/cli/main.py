"""The `shoal` command: one module per command group, registered here."""

from __future__ import annotations

import logging
import os

import click

from shoal.cli import (
    bench_cmds,
    cluster_cmds,
    config_cmds,
    ctl_cmds,
    db_cmds,
    demo_cmds,
    failover_cmds,
    fence_cmds,
    foadmin_cmds,
    fs_cmds,
    lfs_cmds,
    load_cmds,
    mount_cmds,
    rig_cmds,
    sim_cmds,
    store_cmds,
    top_cmds,
    torture_cmds,
    web_cmds,
)
from shoal.cli.stdio import use_whole_writes


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def cli(verbose: int) -> None:
    """Shoal: a parallel file system with Lustre's architecture and automatic failover."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for module in (cluster_cmds, fs_cmds, lfs_cmds, ctl_cmds, load_cmds, bench_cmds, demo_cmds,
               config_cmds, db_cmds, foadmin_cmds, store_cmds, failover_cmds,
               fence_cmds, mount_cmds, rig_cmds, sim_cmds, top_cmds, torture_cmds, web_cmds):
    module.register(cli)


def main() -> None:
    # whatever Shoal writes (cluster.json with fence passwords, the store, devices and the
    # file system's objects, logs) is its owner's alone
    os.umask(0o077)
    use_whole_writes()
    cli(prog_name=os.environ.get("SHOAL_PROG", "shoal"))
