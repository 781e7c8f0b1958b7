"""What every command shares: --dir, error reporting, async running, output helpers."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from shoal.errors import (
    ConfigError,
    IllegalByteSequence,
    InvalidArgument,
    NameTooLong,
    NotFound,
    ShoalError,
)
from shoal.net import loop

F = TypeVar("F", bound=Callable[..., Any])
# on a terminal, its width; to a pipe or a file, room enough that no table cuts a name
# short (rich would fit every table into 80 columns: "scratch-O…")
WIDE = 1000
console = Console(width=None if sys.stdout.isatty() else WIDE)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else WIDE)


def _default_dir() -> str:
    from shoal.cluster.local import default_dir

    return str(default_dir())


dir_option = click.option(
    "--dir", "cluster_dir", type=click.Path(file_okay=False, path_type=Path),
    default=_default_dir, show_default="$SHOAL_DIR or ./shoal-run",
    help="The local cluster's directory.")

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


# Exit codes (README): 0 done; 1 it failed (I/O, timeout, refused, busy, a wrong key); 2 a
# usage or configuration mistake (bad argument, bad setting: change what you typed); 3 what
# was named does not exist (a file, target, node, host).
EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND = 1, 2, 3
_USAGE = (InvalidArgument, ConfigError, IllegalByteSequence, NameTooLong)


def exit_code(exc: ShoalError) -> int:
    if isinstance(exc, NotFound):
        return EXIT_NOT_FOUND
    return EXIT_USAGE if isinstance(exc, _USAGE) else EXIT_FAILED


def handle_errors(fn: F) -> F:
    """Turn Shoal errors into a one-line message and a non-zero exit, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except ShoalError as exc:
            err_console.print(f"[red]shoal: {exc.errno_name}:[/red] {exc}", highlight=False)
            sys.exit(exit_code(exc))
        except OSError as exc:
            err_console.print(f"[red]shoal:[/red] {exc}", highlight=False)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return loop.run(coro)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


fs_option = click.option(
    "--fs", "fs_name", default=None, envvar="SHOAL_FS",
    help="Which file system, when the store holds several [$SHOAL_FS].")


def site_of(cluster_dir: Path, fs: str | None = None) -> Any:
    """The file system this command acts on: the store's ($SHOAL_STORE, with $SHOAL_KEY),
    else the local cluster's in --dir (cluster/site.py)."""
    from shoal.cluster.site import resolve_site

    return run(resolve_site(cluster_dir, fs=fs))
