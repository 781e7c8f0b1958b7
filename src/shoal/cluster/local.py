"""A local cluster: every node a process on its own loopback address, devices in one directory.

    <dir>/cluster.json      the spec every node and client reads (node/spec.py), with the
                            store's URL (store_url)
    <dir>/store.db          the cluster store (SQLite, the default; see store_setup.py)
    <dir>/etcd/             local etcd members, with `shoal up --store etcd`
    <dir>/key               the cluster's HMAC key, mode 0600
    <dir>/devices/<dev>     target devices (shared storage: both nodes of a pair use the path)
    <dir>/logs/<node>.log   each node's log
    <dir>/run/<node>.pid    each node's process (its own process group)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar, Protocol

from shoal.agent.events import record
from shoal.agent.records import STOPPING_TTL, stopping_key
from shoal.cluster.site import ENV_FS, ENV_STORE, fleet_status
from shoal.cluster.store_setup import (
    Layout,
    layout_from_store,
    start_store,
    stop_local_etcd,
)
from shoal.errors import ConfigError, Exists, IOFailure, NotFound, StoreError, TimedOut
from shoal.net.tls import rpc_tls
from shoal.node.admin import all_nodes
from shoal.node.services import format_targets
from shoal.node.spec import (
    KEY_FILE,
    ClusterSpec,
    fs_port,
    read_key,
    spec_from_fsdef,
    write_key,
)
from shoal.store import open_store

DEFAULT_FS_DEFS = Path(__file__).with_name("scratch.fs_defs")


def default_dir() -> Path:
    return Path(os.environ.get("SHOAL_DIR") or "./shoal-run").resolve()


def _free_port(addresses: list[str]) -> int:
    """A TCP port free on every node address (each node binds its own address)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind((addresses[0], 0))
            port = s.getsockname()[1]
        ok = True
        for addr in addresses[1:]:
            with socket.socket() as s:
                try:
                    s.bind((addr, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise OSError("no TCP port is free on every node address")


class NodeLauncher(Protocol):
    def __call__(self, args: list[str], env: dict[str, str], log: Path) -> int: ...


class LocalCluster:
    # starts `shoal <args>` in a session of its own, output to `log`, and returns its pid;
    # None: exec a new Python. The tests put a fork server here (tests/forkserver.py) that
    # has imported Shoal once, rather than once a node.
    launcher: ClassVar[NodeLauncher | None] = None

    def __init__(self, cluster_dir: Path | str) -> None:
        self.dir = Path(cluster_dir).resolve()
        self.layout: Layout | None = None  # what the last create() read from the store

    @property
    def spec(self) -> ClusterSpec:
        return ClusterSpec.load(self.dir)

    @property
    def key(self) -> bytes:
        return read_key(self.dir / KEY_FILE)

    def pidfile(self, node: str) -> Path:
        return self.dir / "run" / f"{node}.pid"

    def pid(self, node: str) -> int | None:
        try:
            pid = int(self.pidfile(node).read_text())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        if _is_zombie(pid):
            return None
        return pid

    # -- up / down -----------------------------------------------------------------------
    def create(self, fs_defs: Path | None = None, *, commit_interval: float = 1.0,
               store: str | None = None, etcd_members: int | None = None,
               fs: str | None = None) -> ClusterSpec:
        """Write cluster.json for a cluster whose layout comes from the store.

        `store` is `sqlite` (`<dir>/store.db`), `etcd` (local members under `<dir>/etcd/`)
        or a store URL; None: the store this directory's cluster used last, else sqlite.
        The fs_defs file, if given, is written into the store first; without one the
        store's own configuration is used (the built-in example if it has none). What was
        written is left in `self.layout` (its diff and warnings)."""
        running = self._running_nodes()
        if running:
            raise Exists(f"{self.dir}: nodes {', '.join(running)} are already running "
                         "(`shoal down` first)")
        previous = self._previous_spec()
        setup = start_store(self.dir, store, etcd_members=etcd_members,
                            previous_url=previous.store_url if previous else "")
        try:
            self.layout = asyncio.run(layout_from_store(
                setup.url, fs_defs, fs=fs, previous_fs=previous.fs if previous else None,
                example=DEFAULT_FS_DEFS))
        except BaseException:
            setup.undo()
            raise
        fsdef = self.layout.fsdef
        self.dir.mkdir(parents=True, exist_ok=True)
        for sub in ("devices", "logs", "run"):
            (self.dir / sub).mkdir(exist_ok=True)
        # a fixed PORT if the fs_defs sets one; else any port free on every node address,
        # so local clusters of several test runs on one machine never meet
        port = (fs_port(fsdef) if fsdef.settings.get("PORT")
                else _free_port(list(fsdef.nids.values())))
        spec = spec_from_fsdef(fsdef, self.dir / "devices", port=port,
                               commit_interval=commit_interval, store_url=setup.url)
        if not (self.dir / KEY_FILE).exists():
            write_key(self.dir)
        spec.save(self.dir)
        # first use formats: each target's device on its primary's path (a backup's path
        # that names another directory stays unformatted, and is refused at a takeover)
        format_targets(spec)
        return spec

    def _running_nodes(self) -> list[str]:
        run = self.dir / "run"
        if not run.is_dir():
            return []
        return sorted(p.stem for p in run.glob("*.pid") if self.pid(p.stem) is not None)

    def _previous_spec(self) -> ClusterSpec | None:
        try:
            return self.spec
        except ConfigError:
            return None

    def start_node(self, node: str) -> int:
        spec = self.spec
        if node not in spec.nids:
            raise NotFound(f"no node {node!r} in this cluster ({', '.join(spec.nids)})")
        if (pid := self.pid(node)) is not None:
            return pid
        logfile = self.dir / "logs" / f"{node}.log"
        # a host's store settings in this shell must not turn the node into a daemon
        env = {k: v for k, v in os.environ.items() if k not in (ENV_STORE, ENV_FS)}
        args = ["node", "run", "--dir", str(self.dir), node]
        if LocalCluster.launcher is not None:
            pid = LocalCluster.launcher(args, env, logfile)
        else:
            log = open(logfile, "ab")  # noqa: SIM115 - the child keeps it
            pid = subprocess.Popen(
                [sys.executable, "-m", "shoal", *args], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=env, start_new_session=True, close_fds=True).pid
            log.close()
        self.pidfile(node).write_text(f"{pid}\n")
        return pid

    def up(self, fs_defs: Path | None = None, *, timeout: float = 60.0,
           commit_interval: float = 1.0, store: str | None = None,
           etcd_members: int | None = None, fs: str | None = None) -> ClusterSpec:
        """Start the cluster (see `create` for where its layout comes from) and return when
        every target is served."""
        spec = self.create(fs_defs, commit_interval=commit_interval, store=store,
                           etcd_members=etcd_members, fs=fs)
        rpc_tls(spec.settings, serve=True)  # a missing certificate: said now, not by every node
        asyncio.run(self._set_stopping(spec, False))
        for node in spec.nodes:
            self.start_node(node)
        asyncio.run(self.wait_serving(timeout=timeout))
        return spec

    async def wait_serving(self, *, timeout: float = 60.0,
                           targets: list[str] | None = None) -> None:
        """Return once every target (or the named ones) is served by some node."""
        spec, key = self.spec, self.key
        want = set(targets or [t.name for t in spec.targets])
        deadline = time.monotonic() + timeout
        while True:
            served = set()
            for data in (await all_nodes(spec, key, "status", timeout=1.0)).values():
                if data:
                    served.update(n for n, t in data["targets"].items() if t["state"] == "UP")
            if want <= served:
                return
            dead = [n for n in spec.nodes if self.pid(n) is None]
            if dead and len(dead) == len(spec.nodes):
                raise IOFailure(f"every node died at start: {self._last_words(dead[0])} "
                                 f"(see {self.dir}/logs)")
            if time.monotonic() > deadline:
                raise TimedOut(f"targets not up after {timeout:.0f}s: "
                               f"{', '.join(sorted(want - served))}; dead nodes: "
                               f"{', '.join(dead) or 'none'} (see {self.dir}/logs)")
            await asyncio.sleep(0.1)

    def _last_words(self, node: str) -> str:
        """The last line a node's log has (a dead node's reason)."""
        try:
            lines = (self.dir / "logs" / f"{node}.log").read_text(errors="replace").splitlines()
        except OSError:
            return f"{node} left no log"
        last = next((ln for ln in reversed(lines) if ln.strip()), "")
        return f"{node}: {last.strip()}" if last else f"{node} logged nothing"

    def signal_node(self, node: str, sig: int) -> bool:
        pid = self.pid(node)
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        self.note_fault(node, f"{signal.Signals(sig).name} to process group {pid}")
        return True

    def kill_node(self, node: str) -> bool:
        """Power off: SIGKILL the node's process group, and make sure it is gone."""
        pid = self.pid(node)
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        self.note_fault(node, f"killed (SIGKILL, power off) process group {pid}")
        _wait_gone(pid, 5.0)
        return True

    def note_fault(self, node: str, detail: str) -> None:
        """Put an injected fault in the event log, so a failover's timeline starts at it."""

        async def put() -> None:
            store = open_store(self.spec.store_url)
            try:
                await record(store, "admin", "fault", "", f"{node}: {detail}", victim=node)
            finally:
                await store.close()

        def body() -> None:
            with contextlib.suppress(StoreError, ConfigError):
                asyncio.run(put())

        # its own thread: callers may be inside an event loop (tests, the demo)
        t = threading.Thread(target=body, daemon=True)
        t.start()
        t.join(5.0)

    def stop_node(self, node: str, timeout: float = 10.0) -> None:
        pid = self.pid(node)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGCONT)
            os.killpg(pid, signal.SIGTERM)
        if not _wait_gone(pid, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            _wait_gone(pid, 5.0)

    def down(self) -> list[str]:
        """Stop every node, then the local etcd members `shoal up --store etcd` started;
        returns what was stopped (node names, then `etcd member <name>`)."""
        try:
            nodes = self.spec.nodes
        except ConfigError:
            nodes = []
        stopped = [n for n in nodes if self.pid(n) is not None]
        if stopped:
            # tell the agents this is the whole cluster stopping, not a node to fail over
            with contextlib.suppress(StoreError, ConfigError):
                asyncio.run(self._set_stopping(self.spec, True))
        for n in stopped:
            pid = self.pid(n)
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGCONT)
                    os.killpg(pid, signal.SIGTERM)
        for n in stopped:
            self.stop_node(n)
        return stopped + [f"etcd member {m}" for m in stop_local_etcd(self.dir)]

    # -- status --------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The store's view (nodes alive/dead/fenced, targets' owner, state, epoch, recent
        events), with what each live node process says of its services' health."""
        spec = self.spec
        return asyncio.run(self._status(spec))

    async def _status(self, spec: ClusterSpec) -> dict[str, Any]:
        st = await fleet_status(spec, self.key)
        for n in st["nodes"]:
            pid = self.pid(n["name"])
            n["pid"] = pid
            n["process"] = ("none" if pid is None else
                            "paused" if _is_stopped(pid) else "running")
        return {"dir": str(self.dir), **st}

    async def _set_stopping(self, spec: ClusterSpec, stopping: bool) -> None:
        store = open_store(spec.store_url)
        try:
            key = stopping_key(spec.fs)
            if stopping:
                lease = await store.grant_lease(STOPPING_TTL)
                await store.put(key, b"shoal down", lease=lease.id)
            else:
                await store.delete(key)
        finally:
            await store.close()


def _proc_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return ""


def _is_zombie(pid: int) -> bool:
    return _proc_state(pid) in ("Z", "X")


def _is_stopped(pid: int) -> bool:
    return _proc_state(pid) in ("T", "t")


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if _is_zombie(pid):
            return True
        time.sleep(0.02)
    return False
