"""The rig's state file: everything the rig made, so `rig down` can undo it after a crash.

Every kernel object is recorded *before* it is made (intent first), so a rig killed halfway
through `up` still leaves a state file naming all it may have left behind; cleaning up
tolerates entries that are already gone.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shoal.errors import ConfigError, NotFound

STATE_FILE = "rig.json"
LOCK_FILE = "rig.lock"
SUBNET = "10.77.0"  # a /24; host addresses are SUBNET.<n>
PREFIX_LEN = 24
FIRST_SERVER = 60  # nid00060 = 10.77.0.60, as in scratch.fs_defs
FIRST_CLIENT = 101  # client1 = 10.77.0.101
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
MAX_SERVERS = 40  # .60 .. .99
MAX_CLIENTS = 150  # .101 .. .250


def rig_prefix(rig_dir: Path) -> str:
    """`shoal-<hash>-`: unique per rig directory, so two rigs never share a namespace name."""
    digest = hashlib.sha1(str(Path(rig_dir).resolve()).encode()).hexdigest()[:8]
    return f"shoal-{digest}-"


@dataclass
class HostRecord:
    """One host: a network namespace and a persisted mount namespace."""

    name: str
    role: str  # "server" or "client"
    address: str
    netns: str  # name under /run/netns
    mntns: str  # file the mount namespace is bound onto
    port: str  # its veth end on the bridge (in the bridge namespace)
    etcd: bool = False  # runs an etcd member
    powered: bool = True


@dataclass
class ProcRecord:
    """A long-lived process started in a host (an etcd member, a daemon)."""

    host: str
    name: str
    pid: int
    create_time: float  # psutil's, to tell our process from a later one with the same pid
    argv: list[str]
    log: str


@dataclass
class LoopRecord:
    """A loop device on an image file in the rig directory: a shared LUN for a target."""

    target: str  # "mgt", "mdt0", "ost0", ...
    image: str
    device: str = ""  # "/dev/loopN" once attached


@dataclass
class RigState:
    dir: str
    prefix: str
    bridge_ns: str = ""
    hosts: list[HostRecord] = field(default_factory=list)
    procs: list[ProcRecord] = field(default_factory=list)
    loops: list[LoopRecord] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)  # bind mounts in the root mount namespace
    partitions: list[list[str]] = field(default_factory=list)  # [a, b] pairs, a < b
    store_cuts: list[str] = field(default_factory=list)  # hosts cut from the etcd client port
    store_url: str = ""
    etcd_token: str = ""
    # argv template for a host's Shoal daemon ({host} {address} {dir} {store} {key} {fs_defs});
    # empty: power-on starts no daemon (see Rig.start_daemon)
    daemon_command: list[str] = field(default_factory=list)

    def host(self, name: str) -> HostRecord | None:
        return next((h for h in self.hosts if h.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RigState:
        data = dict(data)
        hosts = [HostRecord(**h) for h in data.pop("hosts", [])]
        procs = [ProcRecord(**p) for p in data.pop("procs", [])]
        loops = [LoopRecord(**x) for x in data.pop("loops", [])]
        return cls(hosts=hosts, procs=procs, loops=loops, **data)


def load(rig_dir: Path) -> RigState | None:
    """The state kept in `rig_dir`, or None if there is none (never up, or cleanly down)."""
    path = Path(rig_dir) / STATE_FILE
    try:
        return RigState.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: unreadable rig state ({exc})") from exc


def require(rig_dir: Path) -> RigState:
    """The state kept in `rig_dir`; NotFound if there is none."""
    state = load(rig_dir)
    if state is None:
        raise NotFound(f"no rig in {rig_dir}: `shoal rig up --dir {rig_dir}` first")
    return state


def require_host(state: RigState, name: str) -> HostRecord:
    h = state.host(name)
    if h is None:
        raise NotFound(f"no host {name!r} in the rig (hosts: "
                       f"{', '.join(x.name for x in state.hosts)})")
    return h


def save(rig_dir: Path, state: RigState) -> None:
    """Write atomically: a crash mid-write must not lose the record of what exists."""
    path = Path(rig_dir) / STATE_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=2) + "\n")
    os.replace(tmp, path)


def remove(rig_dir: Path) -> None:
    (Path(rig_dir) / STATE_FILE).unlink(missing_ok=True)


@contextmanager
def locked(rig_dir: Path) -> Iterator[None]:
    """Serialise rig commands on one directory (two `rig up`s must not race)."""
    Path(rig_dir).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(rig_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
