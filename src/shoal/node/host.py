"""What one node process serves: every file system that names the node, as one view.

One process per host serves all its targets of all file systems (Cray ran several file
systems with MDS pairs active/active across them). Targets keep their file system
(`TargetSpec.fs`); a shared MGS is one target, named "MGS" whatever it serves, and serves the
configuration of each file system that names it. Settings that steer the node as a whole
(its lease, failback, MMP, ping eviction) must agree between the file systems it serves:
one process cannot keep two lease TTLs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shoal.config.settings import SCHEMA
from shoal.errors import ConfigError, NotFound
from shoal.node.spec import ClusterSpec, TargetSpec

# Settings of the node as a whole, not of one file system (config/settings.py says which).
NODE_WIDE = tuple(s.name for s in SCHEMA.values() if s.node_wide)


@dataclass
class HostSpec:
    node: str
    fss: dict[str, ClusterSpec]  # every file system that names the node, by name
    store_url: str
    targets: list[TargetSpec] = field(init=False)
    settings: dict[str, Any] = field(init=False)  # node-wide ones, and fencing's

    def __post_init__(self) -> None:
        if not self.fss:
            raise NotFound(f"node {self.node!r} is in no configured file system")
        byname: dict[str, TargetSpec] = {}
        for spec in self.fss.values():
            for t in spec.targets:
                seen = byname.get(t.name)
                if seen is None:
                    byname[t.name] = t
                elif (seen.nodes, seen.devices) != (t.nodes, t.devices):
                    raise ConfigError(f"{t.name} is configured twice, differently: "
                                      f"{seen.nodes} {seen.devices} and {t.nodes} {t.devices}")
        self.targets = list(byname.values())
        self.settings = {}
        for fs, spec in self.fss.items():
            for key, value in spec.settings.items():
                if key == "auto_failover":
                    continue  # per file system: auto_failover_for()
                if key in NODE_WIDE and key in self.settings and self.settings[key] != value:
                    raise ConfigError(
                        f"node {self.node}: {key} is {self.settings[key]!r} in one file "
                        f"system and {value!r} in {fs}; a node-wide setting must agree")
                self.settings.setdefault(key, value)
        for spec in self.fss.values():
            for node, addr in spec.nids.items():
                other = self._addr_port(node)
                if other is not None and other != (addr, spec.port):
                    raise ConfigError(f"node {node} is at {other[0]}:{other[1]} in one file "
                                      f"system and {addr}:{spec.port} in {spec.fs}")

    @classmethod
    def single(cls, spec: ClusterSpec, node: str) -> HostSpec:
        return cls(node, {spec.fs: spec}, spec.store_url)

    def _addr_port(self, node: str) -> tuple[str, int] | None:
        for spec in self.fss.values():
            if node in spec.nids:
                return spec.nids[node], spec.port
        return None

    # -- the ClusterSpec questions a node asks --------------------------------------------
    @property
    def nids(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for spec in self.fss.values():
            out.update(spec.nids)
        return out

    @property
    def nodes(self) -> list[str]:
        return list(self.nids)

    @property
    def address(self) -> str:
        return self.nids[self.node]

    @property
    def port(self) -> int:
        ap = self._addr_port(self.node)
        assert ap is not None  # __post_init__: the node is in one of them
        return ap[1]

    def addr_port(self, node: str) -> tuple[str, int]:
        ap = self._addr_port(node)
        if ap is None:
            raise NotFound(f"node {node!r} is in none of {', '.join(self.fss)}")
        return ap

    def nid(self, node: str) -> str:
        addr, port = self.addr_port(node)
        return f"{addr}:{port}"

    def target(self, name: str) -> TargetSpec:
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(name)

    def spec_of(self, t: TargetSpec) -> ClusterSpec:
        """The file system a target belongs to (a shared MGS: the first that names it)."""
        if t.fs:
            return self.fss[t.fs]
        return next(s for s in self.fss.values() if any(x.name == t.name for x in s.targets))

    def fss_of(self, t: TargetSpec) -> list[ClusterSpec]:
        """Every file system a target serves: one, or each that shares the MGS."""
        return [s for s in self.fss.values() if any(x.name == t.name for x in s.targets)]

    def stopping_names(self, t: TargetSpec) -> list[str]:
        return [s.fs for s in self.fss_of(t)]

    def ir(self, t: TargetSpec) -> bool:
        return self.spec_of(t).ir

    def auto_failover_for(self, t: TargetSpec) -> bool:
        return bool(self.spec_of(t).settings.get("auto_failover", True))

    def fs_setting(self, t: TargetSpec, key: str, default: Any) -> Any:
        return self.spec_of(t).settings.get(key, default)

    @property
    def my_targets(self) -> list[TargetSpec]:
        return [t for t in self.targets if self.node in t.nodes]
