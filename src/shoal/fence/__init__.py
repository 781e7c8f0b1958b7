"""Fencing (STONITH): make sure a node is off before anyone else touches its devices.

Drivers (base.FenceDriver): `local` (SIGKILL a local cluster node's process group),
`manual` (an administrator powers the node off and runs `shoal fence confirm NODE`) and
`fence-agent:<agent> key=value ...` (any ClusterLabs fence agent: fence_ipmilan,
fence_redfish, fence_virsh, ...).

Configuration, in fs_defs (kept verbatim in the cluster's settings):

    FENCE_METHOD="manual"                        # every node; default `local` in a local cluster
    FENCE[nid00062]="fence-agent:fence_ipmilan ip=10.0.0.62 username=admin password=secret lanplus=1"
    FENCE[nid00063]="fence-agent:fence_virsh ip=hv1 username=root identity_file=/root/.ssh/id plug={node}"
    FENCE_TIMEOUT=20                             # seconds per attempt (agent: per call)
    FENCE_TIMEOUT[nid00060]=none                 # manual only: wait for ever

`FENCE[<node>]` overrides `FENCE_METHOD` for that node, `FENCE_TIMEOUT[<node>]` overrides
`FENCE_TIMEOUT`. Defaults: local 1 s, fence agents 30 s per call, manual 1 hour. Agent
options are shell words (quote a value with spaces); `{node}` in a value becomes the node's
name. Prefer the agents' `password_script=` to a password in the file.

Every driver module is imported here, at import time, not when a fence starts: fencing is on
the recovery path, which must not depend on loading code (DESIGN.md invariant 3).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from shoal.errors import ConfigError
from shoal.fence import agent as agent_mod
from shoal.fence import local as local_mod
from shoal.fence import manual as manual_mod
from shoal.fence.agent import AgentFenceDriver, redact
from shoal.fence.base import FenceDriver, FenceFailed, FenceResult, PowerState
from shoal.fence.local import LocalFenceDriver
from shoal.fence.manual import ManualFenceDriver, fence_confirm_key, fence_request_key
from shoal.node.spec import SPEC_FILE, ClusterSpec
from shoal.store.base import Store

__all__ = [
    "AgentFenceDriver",
    "FenceDriver",
    "FenceFailed",
    "FenceMethod",
    "FenceResult",
    "LocalFenceDriver",
    "ManualFenceDriver",
    "PowerState",
    "driver_for_node",
    "fence_confirm_key",
    "fence_method",
    "fence_request_key",
    "fence_timeout",
    "is_local_cluster",
    "make_driver",
    "parse_method",
    "validate_settings",
]

METHOD_KEY = "FENCE_METHOD"
NODE_METHOD_KEY = "FENCE"  # FENCE[<node>]
TIMEOUT_KEY = "FENCE_TIMEOUT"  # and FENCE_TIMEOUT[<node>]
AGENT_PREFIX = "fence-agent:"
KINDS = ("local", "manual", "fence-agent")
DEFAULT_TIMEOUTS: dict[str, float | None] = {
    "local": local_mod.DEFAULT_TIMEOUT,
    "fence-agent": agent_mod.DEFAULT_TIMEOUT,
    "manual": manual_mod.DEFAULT_TIMEOUT,
}
FOREVER_WORDS = frozenset({"none", "forever", "never"})
FORMS = "local, manual, or fence-agent:<agent> key=value ..."
_KEY_RE = re.compile(r"^(?P<name>FENCE(?:_[A-Z_]+)?)(?:\[(?P<node>[^\]]*)\])?$")


@dataclass(frozen=True, slots=True)
class FenceMethod:
    """A parsed method setting."""

    kind: str  # local | manual | fence-agent
    agent: str = ""  # fence-agent only: name or absolute path
    options: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """For humans and logs: secrets hidden."""
        if self.kind != "fence-agent":
            return self.kind
        shown = redact(self.options)
        opts = " ".join(f"{k}={v if v != self.options[k] else shlex.quote(v)}"
                        for k, v in shown.items())
        return f"{AGENT_PREFIX}{self.agent}" + (f" {opts}" if opts else "")


def parse_method(text: str, *, where: str = METHOD_KEY) -> FenceMethod:
    """Parse a method setting; ConfigError naming `where` and the reason if it is bad."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where}: empty fence method; use {FORMS}")
    text = text.strip()
    if text.lower() in ("local", "manual"):
        return FenceMethod(text.lower())
    if not text.startswith(AGENT_PREFIX):
        hint = (f" (did you mean {AGENT_PREFIX}{text}?)" if text.startswith("fence_") else "")
        raise ConfigError(f"{where}: unknown fence method {text.split()[0]!r}{hint}; "
                          f"use {FORMS}")
    try:
        words = shlex.split(text[len(AGENT_PREFIX):])
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc} in the fence agent's options") from None
    if not words:
        raise ConfigError(f"{where}: {AGENT_PREFIX} needs an agent name, as in "
                          f"{AGENT_PREFIX}fence_ipmilan ip=10.0.0.62 username=admin ...")
    agent, options = words[0], {}
    if "=" in agent:
        raise ConfigError(f"{where}: {AGENT_PREFIX} must be followed by the agent's name, "
                          f"not an option ({agent.split('=')[0]}=)")
    if "/" in agent and not agent.startswith("/"):
        raise ConfigError(f"{where}: fence agent {agent!r}: give a bare name or an absolute "
                          "path")
    for word in words[1:]:
        key, eq, value = word.partition("=")
        if not eq:
            raise ConfigError(f"{where}: fence agent option {word!r} has no value "
                              f"(write {word}=1 for a flag)")
        if key in options:
            raise ConfigError(f"{where}: fence agent option {key} given twice")
        options[key] = value
    try:
        options = agent_mod.check_options(options)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return FenceMethod("fence-agent", agent, options)


def _setting(settings: Mapping[str, Any], name: str, node: str) -> tuple[str, str] | None:
    """(key, value) of the per-node setting, else of the global one, else None."""
    for key in (f"{name}[{node}]", name):
        if key in settings:
            value = settings[key]
            if not isinstance(value, str):
                raise ConfigError(f"{key}: expected text, not {value!r}")
            return key, value
    return None


def is_local_cluster(cluster_dir: Path | str) -> bool:
    """A local cluster's directory has `run/`, where node processes leave their pids."""
    return (Path(cluster_dir) / "run").is_dir()


def fence_method(settings: Mapping[str, Any], node: str, *,
                 cluster_dir: Path | str | None = None) -> str:
    """The method setting that applies to `node`: FENCE[node], else FENCE_METHOD, else
    `local` when `cluster_dir` is a local cluster's; ConfigError when none applies."""
    for key in (f"{NODE_METHOD_KEY}[{node}]", METHOD_KEY):
        if key in settings:
            value = settings[key]
            if not isinstance(value, str):
                raise ConfigError(f"{key}: expected text, not {value!r}")
            return value
    if cluster_dir is not None and is_local_cluster(cluster_dir):
        return "local"
    raise ConfigError(f"no fence method for {node}: set {METHOD_KEY} or "
                      f"{NODE_METHOD_KEY}[{node}] in fs_defs ({FORMS})")


def _parse_timeout(key: str, value: str, kind: str) -> float | None:
    if value.strip().lower() in FOREVER_WORDS:
        if kind != "manual":
            raise ConfigError(f"{key}={value}: only a manual fence may wait for ever; a "
                              f"{kind} fence needs a time limit in seconds")
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(f"{key}={value!r}: expected seconds (or none, for manual)") from None
    if not seconds > 0 or seconds != seconds or seconds == float("inf"):
        raise ConfigError(f"{key}={value}: must be a positive number of seconds")
    return seconds


def fence_timeout(settings: Mapping[str, Any], node: str, kind: str) -> float | None:
    """FENCE_TIMEOUT[node], else FENCE_TIMEOUT, else the method's default (None: for ever,
    manual only)."""
    found = _setting(settings, TIMEOUT_KEY, node)
    if found is None:
        return DEFAULT_TIMEOUTS[kind]
    return _parse_timeout(found[0], found[1], kind)


def _check_loopback(cluster_dir: Path, node: str, address: str | None = None) -> None:
    """Refuse local fencing of a node that does not run on this machine: in a multi-host
    setup its pid file is absent here, which local fencing would read as "already off".
    `address`: the node's, as the caller knows it (a daemon); else cluster.json's."""
    if address is None:
        if not (cluster_dir / SPEC_FILE).exists():
            return
        spec = ClusterSpec.load(cluster_dir)
        address = spec.nids.get(node)
        if address is None:
            raise ConfigError(f"no node {node!r} in {cluster_dir / SPEC_FILE}")
    if not _on_this_host(address):
        raise ConfigError(f"{node} is at {address}, not a loopback address nor one of this "
                          "host's: local fencing only works on one machine; set {NODE_METHOD_KEY}[{node}] "
                          f"or {METHOD_KEY} ({FORMS})")


def _on_this_host(address: str) -> bool:
    """A loopback address, or one of this host's (its network namespace's) interfaces."""
    try:
        if address == "localhost" or ipaddress.ip_address(address).is_loopback:
            return True
    except ValueError:
        return False
    return any(a.address == address for addrs in psutil.net_if_addrs().values()
               for a in addrs)


def make_driver(method: str, *, cluster_dir: Path, store: Store | None,
                settings: Mapping[str, Any], node: str, requester: str = "",
                on_alert: Callable[[str], None] | None = None,
                address: str | None = None) -> FenceDriver:
    """The driver that fences `node` by `method` (a method setting's text, see
    fence_method), with its timeout from `settings`. ConfigError, with the reason, for a
    method that cannot work here (bad syntax, agent not installed, manual without a store,
    local fencing of a node that is not on this machine)."""
    where = f"{NODE_METHOD_KEY}[{node}]" if f"{NODE_METHOD_KEY}[{node}]" in settings \
        else METHOD_KEY
    m = parse_method(method, where=where)
    timeout = fence_timeout(settings, node, m.kind)
    cluster_dir = Path(cluster_dir)
    if m.kind == "local":
        _check_loopback(cluster_dir, node, address)
        assert timeout is not None  # _parse_timeout refuses "none" for local
        return LocalFenceDriver(cluster_dir, timeout=timeout)
    if m.kind == "manual":
        if store is None:
            raise ConfigError(f"{where}: manual fencing needs the cluster store (the "
                              "confirmation is a store key)")
        return ManualFenceDriver(store, timeout=timeout, requester=requester,
                                 on_alert=on_alert)
    assert timeout is not None
    try:
        return AgentFenceDriver(m.agent, m.options, node=node, timeout=timeout)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def driver_for_node(node: str, *, cluster_dir: Path, store: Store | None,
                    settings: Mapping[str, Any], requester: str = "",
                    on_alert: Callable[[str], None] | None = None,
                    address: str | None = None) -> FenceDriver:
    """make_driver with the method the configuration rule picks for `node`."""
    return make_driver(fence_method(settings, node, cluster_dir=cluster_dir),
                       cluster_dir=cluster_dir, store=store, settings=settings, node=node,
                       requester=requester, on_alert=on_alert, address=address)


def validate_settings(settings: Mapping[str, Any], nodes: Iterable[str]) -> None:
    """Check every FENCE* setting without building drivers (agents need not be installed
    on the machine that checks); ConfigError listing every problem."""
    known = set(nodes)
    problems: list[str] = []
    kinds: dict[str, str] = {}
    for key, value in settings.items():
        m = _KEY_RE.match(key)
        if m is None:
            continue
        name, node = m["name"], m["node"]
        if name not in (METHOD_KEY, NODE_METHOD_KEY, TIMEOUT_KEY):
            problems.append(f"{key}: unknown fence setting (known: {METHOD_KEY}, "
                            f"{NODE_METHOD_KEY}[<node>], {TIMEOUT_KEY}, "
                            f"{TIMEOUT_KEY}[<node>])")
            continue
        if node is not None and node not in known:
            problems.append(f"{key}: no node {node!r} in this file system "
                            f"({', '.join(sorted(known))})")
            continue
        if name == METHOD_KEY and node is not None:
            problems.append(f"{key}: a node's method is {NODE_METHOD_KEY}[{node}]")
            continue
        if name == NODE_METHOD_KEY and node is None:
            problems.append(f"{key}: FENCE needs a node, as in FENCE[<node>]; the method "
                            f"for every node is {METHOD_KEY}")
            continue
        if name in (METHOD_KEY, NODE_METHOD_KEY):
            if not isinstance(value, str):
                problems.append(f"{key}: expected text, not {value!r}")
                continue
            try:
                kinds[key] = parse_method(value, where=key).kind
            except ConfigError as exc:
                problems.append(str(exc))
    for node in sorted(known):
        key = f"{NODE_METHOD_KEY}[{node}]"
        key = key if key in settings else METHOD_KEY
        if key in settings and key not in kinds:
            continue  # its method is bad, already reported
        try:
            fence_timeout(settings, node, kinds.get(key, "local"))
        except ConfigError as exc:
            if str(exc) not in problems:
                problems.append(str(exc))
    if problems:
        raise ConfigError("; ".join(problems))
