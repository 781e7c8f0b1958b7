"""`shoal lfs df|getstripe|setstripe`, printed as Lustre's lfs prints them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from shoal.cli.clientctx import with_client
from shoal.cli.common import dir_option, handle_errors, json_option, print_json
from shoal.client.client import Client


@click.group()
def lfs() -> None:
    """Lustre-style space and layout tools."""


def _df_row(uuid: str, st: dict[str, Any], where: str, inodes: bool) -> str:
    if inodes:
        total, free = st.get("files", 0), st.get("ffree", 0)
        used = total - free
        avail = free
    else:
        k = st.get("bsize", 4096) / 1024
        total = int(st.get("blocks", 0) * k)
        free = int(st.get("bfree", 0) * k)
        avail = int(st.get("bavail", 0) * k)
        used = total - free
    pct = f"{(100 * used + max(used + avail, 1) - 1) // max(used + avail, 1)}%"
    return f"{uuid:<20}{total:>15}{used:>15}{avail:>15}{pct:>6} {where}"


@lfs.command()
@dir_option
@click.option("-i", "inodes", is_flag=True, help="Inodes instead of blocks.")
@json_option
@handle_errors
def df(cluster_dir: Path, inodes: bool, as_json: bool) -> None:
    """Space on every MDT and OST, and the file system summary."""

    async def body(c: Client) -> None:
        st = await c.statfs()
        if as_json:
            print_json(st)
            return
        mnt = f"/{c.fs}"
        head = "Inodes" if inodes else "1K-blocks"
        click.echo(f"{'UUID':<20}{head:>15}{'Used':>15}{'Available':>15}{'Use%':>6} Mounted on")
        for name, mdt in st["mdt"].items():
            idx = int(name[-4:], 16)
            click.echo(_df_row(f"{name}_UUID", mdt, f"{mnt}[MDT:{idx}]", inodes))
        for name, ost in st["osts"].items():
            idx = int(name[-4:], 16)
            click.echo(_df_row(f"{name}_UUID", ost, f"{mnt}[OST:{idx}]", inodes))
        click.echo("")
        click.echo(_df_row("filesystem_summary:", st["total"], mnt, inodes))

    with_client(cluster_dir, body)


def format_layout(path: str, layout: dict[str, Any] | None, is_dir: bool) -> str:
    if layout is None:
        return f"{path}\nstripe_count:  -1 stripe_size:   0 pattern:       raid0 stripe_offset: -1"
    lines = [path,
             f"lmm_stripe_count:  {layout['stripe_count']}",
             f"lmm_stripe_size:   {layout['stripe_size']}",
             f"lmm_pattern:       {layout.get('pattern', 'raid0')}",
             "lmm_layout_gen:    0",
             f"lmm_stripe_offset: {layout['osts'][0] if layout.get('osts') else -1}"]
    if not is_dir and layout.get("osts"):
        oid = layout["oid"]
        lines.append("\tobdidx\t\t objid\t\t objid\t\t group")
        for idx in layout["osts"]:
            lines.append(f"\t{idx:>6}\t{oid:>14}\t{hex(oid):>14}\t{0:>14}")
    return "\n".join(lines)


@lfs.command()
@dir_option
@click.argument("path")
@json_option
@handle_errors
def getstripe(cluster_dir: Path, path: str, as_json: bool) -> None:
    """Show a file's layout (or a directory's default layout)."""

    async def body(c: Client) -> None:
        attr = await c.stat(path)
        layout = attr.layout if attr.is_file else attr.default_layout
        if as_json:
            print_json(layout)
            return
        if attr.is_dir and layout is not None:
            layout = {**layout, "osts": [layout.get("stripe_offset", -1)]}
        click.echo(format_layout(path, layout, attr.is_dir))

    with_client(cluster_dir, body)


@lfs.command()
@dir_option
@click.argument("path")
@click.option("-c", "--stripe-count", type=int, default=-1, show_default=True,
              help="-1: all OSTs.")
@click.option("-S", "--stripe-size", type=str, default="1M", show_default=True)
@click.option("-i", "--stripe-index", type=int, default=-1, show_default=True,
              help="First OST (-1: the MDT chooses).")
@handle_errors
def setstripe(cluster_dir: Path, path: str, stripe_count: int, stripe_size: str,
              stripe_index: int) -> None:
    """Set a directory's default layout, or create an empty file with a layout."""
    size = parse_size(stripe_size)
    with_client(cluster_dir, lambda c: c.setstripe(
        path, stripe_count=stripe_count, stripe_size=size, stripe_offset=stripe_index))


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower()
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise click.BadParameter(f"not a size: {text!r}") from None


def register(cli: click.Group) -> None:
    cli.add_command(lfs)
