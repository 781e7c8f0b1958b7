"""`shoal web`: the live status page (cli/web.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click
from aiohttp import web

from shoal.cli.common import console, dir_option, fs_option, handle_errors, site_of
from shoal.cli.web import EVENTS_READ, StatusPage
from shoal.cluster.site import fleet_status


@click.command("web")
@dir_option
@fs_option
@click.option("--listen", default="127.0.0.1:8090", show_default=True,
              help="ADDR:PORT to serve the page on.")
@click.option("--interval", type=click.FloatRange(0.1, 60), default=1.0, show_default=True,
              help="Seconds between reads of the file system's status.")
@handle_errors
def web_cmd(cluster_dir: Path, fs_name: str | None, listen: str, interval: float) -> None:
    """Serve the live status page: failover pairs, who serves what, recent failovers drawn
    to scale. Read-only; it updates itself (server-sent events)."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter(f"{listen!r}: expected ADDR:PORT", param_hint="--listen")
    site = site_of(cluster_dir, fs_name)

    async def read() -> dict:
        return await fleet_status(site.spec, site.key, events=EVENTS_READ)

    page = StatusPage(site.spec.fs, read, interval)

    async def main() -> None:
        runner = web.AppRunner(page.app())
        await runner.setup()
        await web.TCPSite(runner, host, int(port)).start()
        console.print(f"status page of {site.spec.fs}: http://{host}:{port}/", highlight=False)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


def register(cli: click.Group) -> None:
    cli.add_command(web_cmd)
