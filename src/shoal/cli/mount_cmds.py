"""`shoal mount` and `shoal umount`: the file system as a POSIX mount, through FUSE."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from shoal.cli.common import dir_option, err_console, handle_errors, run
from shoal.errors import (
    Busy,
    InvalidArgument,
    IOFailure,
    NotFound,
    ShoalError,
    TimedOut,
    Unsupported,
    from_errno_name,
)
from shoal.mount.mounts import alive, mount_entry, serving_pid
from shoal.mount.options import parse_options

if TYPE_CHECKING:
    from shoal.client.client import Client


def _client_factory(cluster_dir: Path, mgs: str | None, key: Path | None,
                    fs: str | None = None, tls_ca: Path | None = None) -> Callable[[], Client]:
    from shoal.client.client import Client
    from shoal.net.tls import client_context
    from shoal.node.spec import read_key

    if mgs:
        if key is None:
            raise InvalidArgument("--mgs needs --key FILE (the cluster key, in hex)")
        nids = [n.strip() for n in mgs.split(",") if n.strip()]
        secret = read_key(key)
        tls = client_context({"RPC_TLS": "yes", "TLS_CA": str(tls_ca)}) if tls_ca else None
        return lambda: Client(nids, secret, fs=fs or "", tls=tls)
    if tls_ca:
        raise InvalidArgument("--tls-ca goes with --mgs; otherwise TLS_CA comes from the "
                              "configuration")
    if fs:
        os.environ["SHOAL_FS"] = fs  # which file system of the store ($SHOAL_STORE)
    return lambda: Client.from_cluster_dir(cluster_dir)


def _daemonize(argv: list[str], log_file: Path | None) -> tuple[int, str]:
    """Start the serving process in its own session; wait until it says the mount is ready.
    Returns (pid, file system name); raises with the child's own message if it failed."""
    r, w = os.pipe()
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "shoal", *argv, "--ready-fd", str(w)], pass_fds=(w,),
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd="/", start_new_session=True)
    finally:
        os.close(w)
        if log_file:
            out.close()  # type: ignore[union-attr]
    with os.fdopen(r, "r") as pipe:
        msg = pipe.readline().strip()  # EOF when the child exits without a word
    if msg.startswith("ok "):
        return child.pid, msg[3:]
    try:
        code = child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        child.kill()
        code = child.wait()
    if msg.startswith("error: "):
        name, _, text = msg.removeprefix("error: ").partition(": ")
        if name.isupper() and text:
            raise from_errno_name(name, text)  # the child's own error, as it raised it
        raise IOFailure(msg.removeprefix("error: "))
    raise IOFailure(f"the mount process exited with {code}"
                    + (f" (see {log_file})" if log_file else " (run with --foreground to see why)"))


@click.command("mount")
@dir_option
@click.option("--mgs", metavar="NID[,NID...]",
              help="The MGS's address(es), host:port, failover order (instead of --dir).")
@click.option("--key", type=click.Path(dir_okay=False, path_type=Path),
              help="The cluster key file (with --mgs).")
@click.option("--tls-ca", type=click.Path(dir_okay=False, path_type=Path),
              help="With --mgs, when the nodes speak TLS (RPC_TLS): the CA that signed "
                   "their certificates.")
@click.option("--fs", "fs_name", default=None, metavar="NAME",
              help="Which file system, when the MGS (or the store) serves several "
                   "(Lustre's mgsnid:/fsname).")
@click.option("-o", "options", multiple=True, metavar="OPT[,OPT...]",
              help="Mount options: ro, allow_other, attr_timeout=S, entry_timeout=S, "
                   "max_tasks=N, readahead_mb=N, writebehind_mb=N, ...")
@click.option("-f", "--foreground", is_flag=True, help="Serve in this process (until unmounted).")
@click.option("--log", "log_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Where the background process logs.")
@click.option("--ready-fd", type=int, hidden=True)
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path))
@handle_errors
def mount(cluster_dir: Path, mgs: str | None, key: Path | None, tls_ca: Path | None,
          fs_name: str | None, options: tuple[str, ...],
          foreground: bool, log_file: Path | None, ready_fd: int | None,
          mountpoint: Path) -> None:
    """Mount the file system on MOUNTPOINT; returns once it is ready (unless --foreground)."""
    mountpoint = Path(os.path.abspath(mountpoint))
    opts = parse_options(options)
    factory = _client_factory(Path(os.path.abspath(cluster_dir)), mgs, key, fs_name, tls_ca)
    if not foreground:
        argv = ["mount", "--foreground", "--dir", os.path.abspath(cluster_dir)]
        if mgs:
            argv += ["--mgs", mgs, "--key", os.path.abspath(key or "")]
            if tls_ca:
                argv += ["--tls-ca", os.path.abspath(tls_ca)]
        if fs_name:
            argv += ["--fs", fs_name]
        for o in options:
            argv += ["-o", o]
        level = logging.getLogger().level
        verbose = ["-v"] if level <= logging.INFO else []
        if level <= logging.DEBUG:
            verbose = ["-vv"]
        pid, fs = _daemonize([*verbose, *argv, str(mountpoint)],
                             Path(os.path.abspath(log_file)) if log_file else None)
        err_console.print(f"shoal: mounted {fs} on {mountpoint} (pid {pid})", highlight=False)
        return
    if log_file:
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
    # imported here, not at the top: `shoal` must run where pyfuse3 is missing. This is the
    # process's start, before the mount exists; run.py imports everything it will need.
    try:
        from shoal.mount import run as mount_run
    except ImportError as exc:
        raise Unsupported(f"the FUSE binding is missing ({exc}): pip install pyfuse3") from None

    def ready(fs: str) -> None:
        if ready_fd is None:
            # plain stderr: rich loads modules lazily, and the mount is up by now
            print(f"shoal: mounted {fs} on {mountpoint} (pid {os.getpid()})", file=sys.stderr,
                  flush=True)
            return
        os.write(ready_fd, f"ok {fs}\n".encode())
        os.close(ready_fd)

    mount_run.confine_imports(mountpoint)
    try:
        run(mount_run.serve(factory, mountpoint, opts, ready))
    except (ShoalError, OSError) as exc:
        if ready_fd is not None:
            try:
                os.write(ready_fd, f"error: {mount_run.shoal_error_text(exc)}\n".encode())
            except OSError:
                pass  # already said ready: the pipe is closed
        raise


@click.command("umount")
@click.option("-z", "--lazy", is_flag=True, help="Detach now, clean up when no longer busy.")
@click.option("--wait", "wait_s", type=float, default=30.0, show_default=True,
              help="Seconds to wait for the serving process to finish.")
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path))
@handle_errors
def umount(lazy: bool, wait_s: float, mountpoint: Path) -> None:
    """Unmount a Shoal mount; waits until its process has closed everything."""
    mp = os.path.abspath(mountpoint)
    entry = mount_entry(mp)
    if entry is None:
        raise NotFound(f"{mp}: not mounted")
    if not entry[1].startswith("fuse"):
        raise InvalidArgument(f"{mp}: {entry[0]} is a {entry[1]}, not a Shoal mount")
    pid = serving_pid(mp)
    fusermount = shutil.which("fusermount3")
    if fusermount:
        cmd = [fusermount, "-u", *(["-z"] if lazy else []), mp]
    elif os.geteuid() == 0:
        cmd = ["umount", *(["-l"] if lazy else []), mp]
    else:
        raise Unsupported("fusermount3 is not installed (Debian package fuse3)")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise Busy((proc.stderr or proc.stdout).strip() or f"{cmd[0]} failed")
    if pid is None:
        return
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGTERM)
    raise TimedOut(f"the mount process {pid} did not finish in {wait_s:g} s (sent SIGTERM)")


def register(cli: click.Group) -> None:
    cli.add_command(mount)
    cli.add_command(umount)
