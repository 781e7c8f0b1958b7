"""`shoal fs put|get|cat|ls|stat|mkdir|rm|mv`: the file system from the command line."""

from __future__ import annotations

import asyncio
import os
import stat as stat_mod
import sys
import time
from pathlib import Path

import click
from rich.table import Table

from shoal.cli.clientctx import with_client
from shoal.cli.common import console, dir_option, handle_errors, json_option, print_json
from shoal.client.client import Client
from shoal.client.fileio import File

CHUNK = 16 << 20  # one 4 MiB RPC to each of 4 OSTs per chunk
WINDOW = 4  # chunks in flight


async def stream_to(f: File, read_chunk, total: int | None = None) -> int:
    """Write chunks from read_chunk() with up to WINDOW writes in flight."""
    sem = asyncio.Semaphore(WINDOW)
    offset = 0
    async with asyncio.TaskGroup() as tg:
        while True:
            chunk = read_chunk()
            if not chunk:
                break
            await sem.acquire()
            task = tg.create_task(f.write(chunk, offset))
            task.add_done_callback(lambda _t: sem.release())
            offset += len(chunk)
    return offset


async def stream_from(f: File, write_chunk, size: int) -> int:
    """Read the file in CHUNK pieces, WINDOW in flight, handing them over in order."""
    offsets = list(range(0, size, CHUNK))
    pending: dict[int, asyncio.Task[bytes]] = {}
    done = 0
    for i, off in enumerate(offsets):
        pending[i] = asyncio.create_task(f.read(CHUNK, off))
        if len(pending) >= WINDOW:
            first = min(pending)
            data = await pending.pop(first)
            write_chunk(data)
            done += len(data)
    for i in sorted(pending):
        data = await pending.pop(i)
        write_chunk(data)
        done += len(data)
    return done


@click.group()
def fs() -> None:
    """Use the file system: put, get, cat, ls, stat, mkdir, rm, mv."""


@fs.command()
@dir_option
@click.argument("local", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("remote")
@click.option("-c", "--stripe-count", type=int)
@click.option("-S", "--stripe-size", type=int)
@handle_errors
def put(cluster_dir: Path, local: Path, remote: str, stripe_count: int | None,
        stripe_size: int | None) -> None:
    """Copy a local file into Shoal."""

    async def body(c: Client) -> int:
        t0 = time.monotonic()
        f = await c.open(remote, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                         stripe_count=stripe_count, stripe_size=stripe_size)
        with open(local, "rb") as src:
            n = await stream_to(f, lambda: src.read(CHUNK))
        await f.close()
        console.print(f"{local} -> {remote}: {n} bytes in {time.monotonic() - t0:.2f}s")
        return n

    with_client(cluster_dir, body)


@fs.command()
@dir_option
@click.argument("remote")
@click.argument("local", type=click.Path(dir_okay=False, path_type=Path))
@handle_errors
def get(cluster_dir: Path, remote: str, local: Path) -> None:
    """Copy a file out of Shoal."""

    async def body(c: Client) -> None:
        f = await c.open(remote)
        with open(local, "wb") as dst:
            await stream_from(f, dst.write, f.size)
        await f.close()

    with_client(cluster_dir, body)


@fs.command()
@dir_option
@click.argument("remote")
@handle_errors
def cat(cluster_dir: Path, remote: str) -> None:
    """Print a file."""

    async def body(c: Client) -> None:
        f = await c.open(remote)
        await stream_from(f, sys.stdout.buffer.write, f.size)
        await f.close()
        sys.stdout.flush()

    with_client(cluster_dir, body)


def _mode_string(mode: int) -> str:
    return stat_mod.filemode(mode)


@fs.command()
@dir_option
@click.argument("path", default="/")
@click.option("-l", "long", is_flag=True, help="Long listing.")
@json_option
@handle_errors
def ls(cluster_dir: Path, path: str, long: bool, as_json: bool) -> None:
    """List a directory."""

    async def body(c: Client) -> None:
        attr = await c.stat(path)
        names = [(path.rsplit("/", 1)[-1], attr)] if not attr.is_dir else None
        if names is None:
            entries = await c.readdir(path)
            base = path.rstrip("/")
            attrs = await asyncio.gather(*(c.stat(f"{base}/{n}") for n, _, _ in entries))
            names = [(n, a) for (n, _, _), a in zip(entries, attrs, strict=True)]
        if as_json:
            print_json([{"name": n, "type": a.type, "size": a.size, "mode": a.mode,
                         "mtime": a.mtime} for n, a in names])
            return
        for n, a in names:
            if long:
                mtime = time.strftime("%b %d %H:%M", time.localtime(a.mtime))
                click.echo(f"{_mode_string(a.mode)} {a.nlink:>3} {a.uid:>5} {a.gid:>5} "
                           f"{a.size:>12} {mtime} {n}")
            else:
                click.echo(n)

    with_client(cluster_dir, body)


@fs.command("stat")
@dir_option
@click.argument("path")
@json_option
@handle_errors
def stat_cmd(cluster_dir: Path, path: str, as_json: bool) -> None:
    """Show a file's attributes."""

    async def body(c: Client) -> None:
        a = await c.stat(path)
        if as_json:
            print_json({k: getattr(a, k) for k in a.__slots__})
            return
        table = Table(show_header=False, title=path)
        for k in ("ino", "type", "size", "nlink", "uid", "gid", "version"):
            table.add_row(k, str(getattr(a, k)))
        table.add_row("mode", f"{_mode_string(a.mode)} ({a.mode & 0o7777:o})")
        for k in ("atime", "mtime", "ctime"):
            table.add_row(k, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(getattr(a, k))))
        console.print(table)

    with_client(cluster_dir, body)


@fs.command()
@dir_option
@click.argument("path")
@click.option("-p", "parents", is_flag=True, help="Make parents as needed, no error if existing.")
@handle_errors
def mkdir(cluster_dir: Path, path: str, parents: bool) -> None:
    """Make a directory."""

    async def body(c: Client) -> None:
        if parents:
            await c.makedirs(path)
        else:
            await c.mkdir(path)

    with_client(cluster_dir, body)


async def _remove_tree(c: Client, path: str) -> None:
    for name, _, typ in await c.readdir(path):
        child = f"{path.rstrip('/')}/{name}"
        if typ == "d":
            await _remove_tree(c, child)
        else:
            await c.unlink(child)
    await c.rmdir(path)


@fs.command()
@dir_option
@click.argument("path")
@click.option("-r", "recursive", is_flag=True, help="Remove directories and their contents.")
@handle_errors
def rm(cluster_dir: Path, path: str, recursive: bool) -> None:
    """Remove a file (or a tree with -r)."""

    async def body(c: Client) -> None:
        attr = await c.stat(path)
        if attr.is_dir:
            if recursive:
                await _remove_tree(c, path)
            else:
                await c.rmdir(path)
        else:
            await c.unlink(path)

    with_client(cluster_dir, body)


@fs.command()
@dir_option
@click.argument("src")
@click.argument("dst")
@handle_errors
def mv(cluster_dir: Path, src: str, dst: str) -> None:
    """Rename a file or directory."""
    with_client(cluster_dir, lambda c: c.rename(src, dst))


def register(cli: click.Group) -> None:
    cli.add_command(fs)
