"""A fork server for the tests' node processes.

Every test with a cluster of its own starts four node processes, and a failover test starts
more. Each `python -m shoal node run` spent about half a second of CPU importing Shoal before
it did anything; four at once on two cores cost each test about a second. This server imports
once, then forks a node process on request: the same `shoal node run` command, in a session of
its own, its output in its log, its environment the caller's. Production and the CLI's own
tests still start nodes with exec (`LocalCluster.launcher` is None there).

Run as `python forkserver.py SOCKET`; `ForkServer` starts it and asks it for processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# what a node process imports before it does anything (python -X importtime)
PRELOAD = ("shoal.cli.main", "shoal.cli.cluster_cmds", "shoal.agent.agent",
           "shoal.cluster.local", "shoal.node.local", "shoal.node.server", "rich.table",
           "uvloop")


def _child(req: dict, listener: socket.socket, conn: socket.socket, started: int) -> None:
    """In the forked process: become what `subprocess.Popen(argv, start_new_session=True)`
    with stdout and stderr to the log would have made, then run the command."""
    code = 1
    try:
        listener.close()
        conn.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the server reaps by ignoring it
        os.setsid()
        os.close(started)  # its process group exists: the caller may signal it now
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(req["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        sys.argv = ["shoal", *req["args"]]
        from shoal.cli.main import main
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        import atexit
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001 - the child must end here, never in the server's loop
        import traceback
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve(path: str) -> None:
    import importlib
    for name in PRELOAD:
        importlib.import_module(name)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    listener.listen(16)
    listener.settimeout(1.0)
    parent = os.getppid()
    os.rename(path + ".tmp", path)  # ready once it is there
    while os.getppid() == parent:  # a pytest killed without its teardown: gone with it
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        with conn:
            conn.settimeout(None)
            try:
                req = json.loads(conn.makefile("rb").readline())
            except (OSError, ValueError):
                continue  # a caller that went away: the next one is served
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                _child(req, listener, conn, w)
            os.close(w)
            os.read(r, 1)  # EOF once the child is in its own session (or gone)
            os.close(r)
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")


class ForkServer:
    """The tests' end: `launch(args, env, log)` returns the new process's pid."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> None:
        log = open(self.path.with_suffix(".log"), "ab")  # noqa: SIM115 - the server keeps it
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(self.path)], stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not self.path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the tests' fork server did not start: see "
                                   f"{self.path.with_suffix('.log')}")
            time.sleep(0.02)

    def launch(self, args: list[str], env: dict[str, str], log: Path) -> int:
        if self.proc is None:
            self.start()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(str(self.path))
            s.sendall(json.dumps({"args": args, "env": env, "log": str(log),
                                  "cwd": os.getcwd()}).encode() + b"\n")
            return int(json.loads(s.makefile("rb").readline())["pid"])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


if __name__ == "__main__":
    serve(sys.argv[1])
