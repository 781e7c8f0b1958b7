"""`shoal lfs df|getstripe|setstripe|project`, printed as Lustre's lfs prints them; setquota,
quota and quotacheck are in cli/quota_cmds.py."""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any

import click

from shoal.cli import quota_cmds
from shoal.cli.clientctx import with_client
from shoal.cli.common import dir_option, err_console, handle_errors, json_option, print_json
from shoal.client import quota
from shoal.client.client import Client
from shoal.client.namespace import Attr
from shoal.errors import InvalidArgument


@click.group()
def lfs() -> None:
    """Lustre-style space, layout and quota tools."""


quota_cmds.add_to(lfs)


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


# -- project ---------------------------------------------------------------------------------------
async def _below(c: Client, top: str, recursive: bool) -> list[tuple[str, Attr]]:
    """The entries of directory `top`, each followed by what is below it if `recursive`."""

    async def entries(d: str) -> list[str]:
        return [posixpath.join(d, n) for n in sorted((n for n, _, _ in await c.readdir(d)),
                                                     reverse=True)]

    out: list[tuple[str, Attr]] = []
    stack = await entries(top)
    while stack:
        p = stack.pop()
        a = await c.lstat(p)
        out.append((p, a))
        if recursive and a.is_dir:
            stack += await entries(p)
    return out


def project_line(p: str, a: Attr) -> str:
    return f"{a.projid:>5} {'P' if a.projinherit else '-'} {p}"


@lfs.command()
@dir_option
@click.option("-p", "--proj", "projid", metavar="ID", help="Set this project id.")
@click.option("-s", "--set-inherit", "inherit", is_flag=True,
              help="Directories pass their project on to what is created in them.")
@click.option("-C", "--clear", "clear", is_flag=True,
              help="Clear the inherit flag (and the project id, unless -k).")
@click.option("-k", "--keep", "keep", is_flag=True, help="With -C: keep the project id.")
@click.option("-r", "--recursive", "recursive", is_flag=True, help="The whole tree below.")
@click.option("-d", "--directory", "directory", is_flag=True,
              help="List a directory itself, not its entries.")
@click.argument("paths", nargs=-1, required=True)
@handle_errors
def project(cluster_dir: Path, projid: str | None, inherit: bool, clear: bool, keep: bool,
            recursive: bool, directory: bool, paths: tuple[str, ...]) -> None:
    """List files' projects (` 1000 P /dir`: P when a directory passes its project on), or
    set them: -p ID [-s] [-r] PATH..., -C [-k] [-r] PATH..."""
    setting = projid is not None or inherit or clear
    if clear and (projid is not None or inherit):
        raise InvalidArgument("-C clears: it goes with neither -p nor -s")
    if keep and not clear:
        raise InvalidArgument("-k goes with -C")
    if directory and (recursive or setting):
        raise InvalidArgument("-d lists a directory itself: it goes with neither -r nor -p, "
                              "-s or -C")
    pid = quota_cmds.resolve_id("p", projid) if projid is not None else None

    async def set_all(c: Client) -> None:
        for top in paths:
            a = await c.lstat(top)
            todo = [(top, a)] + (await _below(c, top, True) if recursive and a.is_dir else [])
            for p, attr in todo:
                if not (attr.is_dir or attr.is_file):
                    if p == top:
                        err_console.print(f"shoal: {p}: not a file or directory: skipped",
                                          highlight=False)
                    continue  # a symlink's project is not set: setattr would follow it
                new = 0 if clear and not keep else (pid if pid is not None else attr.projid)
                flag = False if clear else (True if inherit else attr.projinherit)
                await quota.set_project(c, p, new, inherit=flag)

    async def list_all(c: Client) -> None:
        for top in paths:
            a = await c.lstat(top)
            if a.is_dir and not directory:
                for p, attr in await _below(c, top, recursive):
                    click.echo(project_line(p, attr))
            else:
                click.echo(project_line(top, a))

    with_client(cluster_dir, set_all if setting else list_all)


def register(cli: click.Group) -> None:
    cli.add_command(lfs)
