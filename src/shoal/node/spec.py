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

from shoal.errors import ConfigError
from shoal.net.frame import KEY_BYTES

SPEC_FILE = "cluster.json"
KEY_FILE = "key"


@dataclass(frozen=True)
class TargetSpec:
    name: str
    kind: str  # MGT | MDT | OST
    index: int
    nodes: list[str]  # failover order, primary first
    devices: dict[str, str]  # node -> absolute device path

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
        return str(self.settings.get("IR", "on")).lower() not in ("off", "no", "0", "false")

    def target(self, name: str) -> TargetSpec:
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(name)

    def nid(self, node: str) -> str:
        return f"{self.nids[node]}:{self.port}"

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
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
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
        raw["targets"] = [TargetSpec(**t) for t in raw["targets"]]
        return cls(**raw)


def write_key(cluster_dir: Path) -> bytes:
    key = secrets.token_bytes(KEY_BYTES)
    path = Path(cluster_dir) / KEY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
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
