"""Run a real local etcd (Debian's `etcd-server`, binary `etcd`) on free loopback ports.

Used by the test fixtures, by `shoal store bench`, and by `shoal up --store etcd
--etcd-members N`. One member or N members, all on 127.0.0.1, each member under
`<data_dir>/<name>/` with its log beside it in `<data_dir>/<name>.log`.

The cluster layout (member names, ports, pids) is saved in `<data_dir>/etcd-cluster.json`,
so a later process (`shoal down`, `shoal status`) can `EtcdCluster.attach(data_dir)` and stop
or restart members it did not start itself. Restarting a member keeps its data directory and
ports, so it rejoins with its history: exactly what a real member reboot looks like.

Everything here is synchronous (subprocess + urllib) so it can be called from a CLI command or a
pytest fixture without an event loop; call it through `asyncio.to_thread` from async code.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shoal.errors import ConfigError, StoreUnreachable, TimedOut

LOOPBACK = "127.0.0.1"
STATE_FILE = "etcd-cluster.json"


def etcd_binary() -> str | None:
    """Path of the etcd binary, or None (install Debian's `etcd-server`)."""
    return shutil.which("etcd") or next(
        (p for p in ("/usr/bin/etcd", "/usr/local/bin/etcd") if os.access(p, os.X_OK)), None
    )


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that were free a moment ago.

    All sockets are held open until every port is chosen, so the kernel cannot hand the
    same port out twice; another process may still grab one before etcd binds it, which
    `EtcdCluster.start` handles by retrying on fresh ports."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    pid: int = 0  # 0 when not running (as far as this process knows)

    @property
    def endpoint(self) -> str:
        return f"{LOOPBACK}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://{LOOPBACK}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{LOOPBACK}:{self.peer_port}"


@dataclass
class EtcdCluster:
    """A local etcd cluster of `size` members under `data_dir`.

    `heartbeat_ms` / `election_ms` are etcd's raft timings; the defaults match etcd's own.
    Tests pass shorter ones so a leader election after a kill takes well under a second.
    Note etcd's minimum lease TTL is 1.5 x election timeout (rounded up to whole seconds).
    """

    data_dir: Path
    size: int = 1
    heartbeat_ms: int = 100
    election_ms: int = 1000
    history_revisions: int = 10_000  # auto-compaction keeps this many revisions
    members: list[EtcdMember] = field(default_factory=list)
    token: str = ""
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        if self.size < 1:
            raise ConfigError(f"an etcd cluster needs at least one member, not {self.size}")

    # -- addresses ----------------------------------------------------------------------
    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def url(self) -> str:
        """The store URL for `open_store`: etcd://127.0.0.1:p1,127.0.0.1:p2,..."""
        return "etcd://" + ",".join(self.endpoints)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> EtcdCluster:
        """Start every member (fresh ports on first start) and wait until the cluster is healthy."""
        binary = etcd_binary()
        if binary is None:
            raise ConfigError("etcd not found on PATH: install Debian's etcd-server package")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fresh = not self.members
        for attempt in range(3):
            if fresh:
                ports = free_ports(2 * self.size)
                self.members = [
                    EtcdMember(f"etcd{i}", ports[2 * i], ports[2 * i + 1]) for i in range(self.size)
                ]
                self.token = f"shoal-{os.getpid()}-{time.monotonic_ns()}"
                for m in self.members:
                    shutil.rmtree(self.data_dir / m.name, ignore_errors=True)
            for i, m in enumerate(self.members):
                if not self._running(m):
                    self._spawn(i, binary, new=fresh)
            self._save()
            try:
                self.wait_healthy(timeout)
                return self
            except TimedOut:
                # A port race with another process shows as a member that exited at once;
                # anything else is a real failure and is reported with the member's log.
                died = [m for m in self.members if not self._running(m)]
                self.stop()
                if not (fresh and died and attempt < 2):
                    raise
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every member (SIGTERM, then SIGKILL) and wait for them to exit."""
        for i in range(len(self.members)):
            self.stop_member(i, timeout=timeout)

    def kill_member(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to one member (SIGKILL: a crash; SIGSTOP: a hang) without waiting."""
        member = self.members[index]
        if member.pid:
            try:
                os.kill(member.pid, sig)
            except ProcessLookupError:
                pass
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self._reap(member, timeout=10.0)
            self._save()

    def stop_member(self, index: int, timeout: float = 10.0) -> None:
        member = self.members[index]
        if not member.pid:
            return
        try:
            os.kill(member.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            os.kill(member.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if not self._reap(member, timeout=timeout):
            try:
                os.kill(member.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._reap(member, timeout=timeout)
        self._save()

    def start_member(self, index: int, timeout: float = 30.0) -> None:
        """(Re)start one member on its old ports and data; waits until it serves again."""
        binary = etcd_binary()
        if binary is None:
            raise ConfigError("etcd not found on PATH: install Debian's etcd-server package")
        member = self.members[index]
        if member.pid and self._running(member):
            return
        self._spawn(index, binary, new=False)
        self._save()
        self._wait_member(member, time.monotonic() + timeout)

    def restart_member(self, index: int, timeout: float = 30.0) -> None:
        self.stop_member(index)
        self.start_member(index, timeout=timeout)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until every running member answers /health with a leader elected."""
        deadline = time.monotonic() + timeout
        for m in self.members:
            if m.pid:
                self._wait_member(m, deadline)

    def leader(self) -> int | None:
        """Index of the current raft leader (asked of the running members), None if none."""
        ids: dict[str, int] = {}
        leader = None
        for i, m in enumerate(self.members):
            if not m.pid:
                continue
            status = _post_json(m.client_url + "/v3/maintenance/status")
            if status is None:
                continue
            ids[status["header"]["member_id"]] = i
            leader = status.get("leader") or leader
        return ids.get(leader) if leader else None

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- persistence --------------------------------------------------------------------
    @classmethod
    def at(cls, data_dir: Path, size: int = 1, **timings: int) -> EtcdCluster:
        """The cluster kept under `data_dir` if there is one (same members, ports and data,
        for `shoal up` after `shoal down`), else a new one of `size` members; not started."""
        if (Path(data_dir) / STATE_FILE).exists():
            cluster = cls.attach(data_dir)
            if cluster.size != size:
                raise ConfigError(
                    f"{data_dir}: holds an etcd cluster of {cluster.size} members, not {size}"
                )
            return cluster
        return cls(data_dir=Path(data_dir), size=size, **timings)

    @classmethod
    def attach(cls, data_dir: Path) -> EtcdCluster:
        """The cluster another process started under `data_dir` (read from its state file)."""
        path = Path(data_dir).resolve() / STATE_FILE
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: no etcd cluster state here ({exc})") from exc
        members = [EtcdMember(**m) for m in state.pop("members")]
        return cls(data_dir=Path(data_dir), members=members, **state)

    def _save(self) -> None:
        state = {
            "size": self.size,
            "heartbeat_ms": self.heartbeat_ms,
            "election_ms": self.election_ms,
            "history_revisions": self.history_revisions,
            "token": self.token,
            "members": [asdict(m) for m in self.members],
        }
        tmp = self.data_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.data_dir / STATE_FILE)

    # -- internals ----------------------------------------------------------------------
    def _spawn(self, index: int, binary: str, *, new: bool) -> None:
        m = self.members[index]
        initial = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        args = [
            binary,
            f"--name={m.name}",
            f"--data-dir={self.data_dir / m.name}",
            f"--listen-client-urls={m.client_url}",
            f"--advertise-client-urls={m.client_url}",
            f"--listen-peer-urls={m.peer_url}",
            f"--initial-advertise-peer-urls={m.peer_url}",
            f"--initial-cluster={initial}",
            f"--initial-cluster-state={'new' if new else 'existing'}",
            f"--initial-cluster-token={self.token}",
            f"--heartbeat-interval={self.heartbeat_ms}",
            f"--election-timeout={self.election_ms}",
            "--auto-compaction-mode=revision",
            f"--auto-compaction-retention={self.history_revisions}",
            "--logger=zap",
            "--log-outputs=stderr",
        ]
        log = open(self.data_dir / f"{m.name}.log", "ab")  # noqa: SIM115 - child owns it
        try:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # a Ctrl-C meant for the CLI must not kill the store
            )
        finally:
            log.close()
        self._procs[m.name] = proc
        m.pid = proc.pid

    def _running(self, member: EtcdMember) -> bool:
        proc = self._procs.get(member.name)
        if proc is not None and proc.pid == member.pid:
            return proc.poll() is None
        return bool(member.pid) and _pid_is_member(member.pid, member.name)

    def _reap(self, member: EtcdMember, timeout: float) -> bool:
        """Wait for the member to exit; True if it did. Clears its pid."""
        proc = self._procs.get(member.name)
        deadline = time.monotonic() + timeout
        if proc is not None and proc.pid == member.pid:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return False
        else:
            while self._running(member):
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.02)
        member.pid = 0
        self._procs.pop(member.name, None)
        return True

    def _wait_member(self, member: EtcdMember, deadline: float) -> None:
        last = "no answer"
        while time.monotonic() < deadline:
            if not self._running(member):
                raise TimedOut(
                    f"etcd member {member.name} exited; see {self.data_dir / member.name}.log"
                )
            try:
                with urllib.request.urlopen(member.client_url + "/health", timeout=1.0) as r:
                    body = json.loads(r.read())
                if body.get("health") in (True, "true"):
                    return
                last = json.dumps(body)
            except (OSError, ValueError, urllib.error.URLError) as exc:
                last = str(exc)
            time.sleep(0.05)
        raise TimedOut(f"etcd member {member.name} at {member.client_url} not healthy: {last}")


def _post_json(url: str) -> dict[str, Any] | None:
    """POST {} to etcd's JSON gateway; the answer, or None if the member did not answer."""
    req = urllib.request.Request(url, data=b"{}", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=1.0) as r:
            body = json.loads(r.read())
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def _pid_is_member(pid: int, name: str) -> bool:
    """True if `pid` is a live (not zombie) etcd process for member `name`.

    Checking the command line guards `attach` against a pid reused after a reboot."""
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our exited child
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X") and f"--name={name}".encode() in cmdline


def wait_reachable(url: str, timeout: float = 10.0) -> None:
    """Wait until one member of an etcd:// URL answers /health; StoreUnreachable if none."""
    hosts = url.removeprefix("etcd://").split(",")
    deadline = time.monotonic() + timeout
    while True:
        for host in hosts:
            try:
                with urllib.request.urlopen(f"http://{host}/health", timeout=1.0) as r:
                    if json.loads(r.read()).get("health") in (True, "true"):
                        return
            except (OSError, ValueError):
                continue
        if time.monotonic() > deadline:
            raise StoreUnreachable(f"etcd store {url} unreachable")
        time.sleep(0.05)
