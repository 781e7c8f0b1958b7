"""What a node process needs to know to serve: the cluster spec, as `shoal up` wrote it.

`cluster.json` in the cluster directory is the hand-off between `shoal up` (which parsed the
fs_defs) and every `shoal node run` process and client. It is plain JSON so an administrator
can read it; the key file beside it is mode 0600.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shoal.config.model import FileSystemDef
from shoal.config.settings import value as setting
from shoal.errors import ConfigError
from shoal.net.frame import KEY_BYTES

SPEC_FILE = "cluster.json"
KEY_FILE = "key"
# Every node of a file system listens on one TCP port: the fs_defs PORT setting, else this
# (Lustre's acceptor uses 988, which needs root; Shoal's daemons need not run as root).
DEFAULT_PORT = 9988


@dataclass(frozen=True)
class TargetSpec:
    name: str
    kind: str  # MGT | MDT | OST
    index: int
    nodes: list[str]  # failover order, primary first
    devices: dict[str, str]  # node -> absolute device path
    fs: str = ""  # the file system it belongs to ("" for a shared MGS: every one it serves)

    @property
    def primary(self) -> str:
        return self.nodes[0]


@dataclass(frozen=True)
class ClusterSpec:
    fs: str
    port: int
    nids: dict[str, str]  # node -> address
    targets: list[TargetSpec]
    commit_interval: float = 1.0
    stripe_size: int = 1 << 20
    stripe_count: int = -1
    store_url: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def nodes(self) -> list[str]:
        return list(self.nids)

    @property
    def ir(self) -> bool:
        """Imperative recovery (fs_defs IR, default on): the MGS tells clients where a
        restarted target lives, and recovery windows use the shorter IR soft timeout."""
        return bool(setting(self.settings, "IR"))

    def target(self, name: str) -> TargetSpec:
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(name)

    def nid(self, node: str) -> str:
        return f"{self.nids[node]}:{self.port}"

    def addr_port(self, node: str) -> tuple[str, int]:
        return self.nids[node], self.port

    def target_nids(self, t: TargetSpec) -> list[str]:
        return [self.nid(n) for n in t.nodes]

    @property
    def mgs(self) -> TargetSpec:
        return next(t for t in self.targets if t.kind == "MGT")

    @property
    def osts(self) -> list[TargetSpec]:
        return [t for t in self.targets if t.kind == "OST"]

    def client_config(self) -> dict[str, Any]:
        """What the MGS serves to clients: targets and their failover NIDs in order."""
        return {
            "fs": self.fs,
            "version": 1,
            "stripe_size": self.stripe_size,
            "stripe_count": self.stripe_count,
            "targets": [
                {"name": t.name, "kind": t.kind, "index": t.index, "nids": self.target_nids(t)}
                for t in self.targets if t.kind != "MGT"
            ],
        }

    def save(self, cluster_dir: Path) -> None:
        tmp = cluster_dir / (SPEC_FILE + ".tmp")
        # 0600 from the start: its settings may hold a fence agent's password
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(asdict(self), indent=2) + "\n")
        os.chmod(tmp, 0o600)  # an older file's mode, if it was there
        tmp.replace(cluster_dir / SPEC_FILE)

    @classmethod
    def load(cls, cluster_dir: Path) -> ClusterSpec:
        path = Path(cluster_dir) / SPEC_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no cluster here (run `shoal up` first)") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{exc.lineno}: {exc.msg}") from None
        fs = raw.get("fs", "")
        raw["targets"] = [TargetSpec(**{"fs": "" if t["kind"] == "MGT" else fs, **t})
                          for t in raw["targets"]]
        return cls(**raw)


def fs_port(fsdef: FileSystemDef) -> int:
    """The port the file system's nodes listen on: its PORT setting, else DEFAULT_PORT."""
    try:
        return int(setting(fsdef.settings, "PORT"))
    except ValueError as exc:
        raise ConfigError(f"{fsdef.source or fsdef.name}: {exc}") from None


def spec_from_fsdef(fsdef: FileSystemDef, devices_dir: Path, *, port: int,
                    commit_interval: float = 1.0, store_url: str = "") -> ClusterSpec:
    """The spec of a configured file system; a relative device path is under `devices_dir`
    (a local cluster's `<dir>/devices`, a daemon's `<state dir>/devices`)."""
    targets = []
    for t in fsdef.targets:
        devices = {}
        for node, dev in t.devices:
            p = Path(dev)
            devices[node] = str(p if p.is_absolute() else Path(devices_dir) / p)
        targets.append(TargetSpec(t.name, t.kind, t.index, list(t.nodes), devices,
                                  fs="" if t.kind == "MGT" else fsdef.name))
    settings = dict(fsdef.settings)
    try:
        stripe_size = int(setting(settings, "STRIPE_SIZE"))
        stripe_count = int(setting(settings, "STRIPE_COUNT"))
        if settings.get("COMMIT_INTERVAL"):
            commit_interval = float(setting(settings, "COMMIT_INTERVAL"))
    except ValueError as exc:
        raise ConfigError(f"{fsdef.source or fsdef.name}: {exc}") from None
    for used in ("PORT", "STRIPE_SIZE", "STRIPE_COUNT", "COMMIT_INTERVAL"):
        settings.pop(used, None)
    return ClusterSpec(
        fs=fsdef.name, port=port, nids=dict(fsdef.nids), targets=targets,
        commit_interval=commit_interval, stripe_size=stripe_size, stripe_count=stripe_count,
        store_url=store_url,
        settings={"auto_failover": fsdef.auto_failover, **settings},
    )


def write_key(cluster_dir: Path) -> bytes:
    return write_key_file(Path(cluster_dir) / KEY_FILE)


def write_key_file(path: Path, *, exclusive: bool = False) -> bytes:
    """A new random cluster key in `path`, hex, mode 0600 from the start (never readable
    by others, not even for a moment). `exclusive`: FileExistsError rather than replace."""
    key = secrets.token_bytes(KEY_BYTES)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.hex().encode() + b"\n")
    return key


def read_key(path: Path) -> bytes:
    try:
        text = Path(path).read_text().strip()
        key = bytes.fromhex(text)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no cluster key") from None
    except ValueError:
        raise ConfigError(f"{path}: not a hex key") from None
    if len(key) < 16:
        raise ConfigError(f"{path}: key too short")
    return key
