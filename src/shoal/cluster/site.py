"""Where a command or a daemon finds its cluster: a local cluster's directory, or the store.

A local cluster (`shoal up`) keeps cluster.json and its key in one directory. A deployment
on real hosts keeps nothing on a host but the store's URL and the key file: every daemon and
every administrator's command builds the file system's layout from the configuration in the
store (`shoal config write`), with the fs_defs PORT (or DEFAULT_PORT) as every node's port.

    SHOAL_STORE   the store's URL (etcd://host:port,...; sqlite:///path): set on a host,
                  commands use the store instead of a local cluster's directory
    SHOAL_KEY     the cluster key file (default /etc/shoal/key), mode 0600
    SHOAL_FS      which file system, when the store holds several
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.agent.records import fs_down_key
from shoal.agent.status import read_status
from shoal.config.write_conf import read_conf
from shoal.errors import ConfigError, NotFound, StoreUnreachable
from shoal.node.admin import all_nodes
from shoal.node.host import HostSpec
from shoal.node.spec import KEY_FILE, ClusterSpec, fs_port, read_key, spec_from_fsdef
from shoal.store import open_store
from shoal.store.base import Store

ENV_STORE = "SHOAL_STORE"
ENV_KEY = "SHOAL_KEY"
ENV_FS = "SHOAL_FS"
DEFAULT_KEY = Path("/etc/shoal/key")
DEFAULT_STATE = Path("/var/lib/shoal")
STORE_WAIT = 15.0  # seconds a command waits for a store that does not answer (an election)
STORE_RETRY = 0.5


@dataclass(frozen=True)
class Site:
    """One file system as a command sees it: its spec, the key, and the local cluster's
    directory if it is one (pid files, logs), else None."""

    spec: ClusterSpec
    key: bytes
    local: Path | None


def store_url_from_env() -> str | None:
    return os.environ.get(ENV_STORE) or None


def key_path_from_env() -> Path:
    return Path(os.environ.get(ENV_KEY) or DEFAULT_KEY)


async def store_specs(url: str, *, devices_dir: Path, fs: str | None = None,
                      wait: float = STORE_WAIT) -> dict[str, ClusterSpec]:
    """Every file system configured in the store (or the one named), as specs. A store
    that does not answer is asked again for `wait` seconds: an etcd whose leader's host
    just lost power answers nothing until it has elected another (a client mounting then,
    in the rig's torture, crashed on it); StoreUnreachable after that."""
    deadline = time.monotonic() + wait
    while True:
        try:
            async with open_store(url) as store:
                fsdefs = await read_conf(store, fs)
            break
        except StoreUnreachable:
            if time.monotonic() + STORE_RETRY > deadline:
                raise
            await asyncio.sleep(STORE_RETRY)
    return {d.name: spec_from_fsdef(d, devices_dir, port=fs_port(d), store_url=url)
            for d in fsdefs}


async def host_spec(url: str, node: str, *, state_dir: Path) -> HostSpec:
    """What the daemon of `node` serves: every file system of the store that names it."""
    specs = await store_specs(url, devices_dir=state_dir / "devices")
    mine = {fs: s for fs, s in specs.items()
            if node in s.nids or any(node in t.nodes for t in s.targets)}
    if not mine:
        raise NotFound(f"node {node!r} is in none of the file systems configured in {url} "
                       f"({', '.join(specs) or 'none'})")
    return HostSpec(node, mine, url)


async def resolve_site(cluster_dir: Path, *, fs: str | None = None,
                       store_url: str | None = None, key_file: Path | None = None) -> Site:
    """The store (given, or $SHOAL_STORE) if there is one, else the local cluster in
    `cluster_dir`."""
    url = store_url or store_url_from_env()
    if url is None:
        spec = ClusterSpec.load(cluster_dir)
        if fs is not None and fs != spec.fs:
            raise NotFound(f"the cluster in {cluster_dir} runs {spec.fs}, not {fs}")
        return Site(spec, read_key(Path(cluster_dir) / KEY_FILE), Path(cluster_dir))
    fs = fs or os.environ.get(ENV_FS) or None
    specs = await store_specs(url, devices_dir=DEFAULT_STATE / "devices", fs=fs)
    if not specs:
        raise NotFound(f"store {url} holds no file system configuration")
    if len(specs) > 1:
        raise ConfigError(f"store {url} holds several file systems ({', '.join(specs)}): "
                          f"choose one with --fs or ${ENV_FS}")
    (spec,) = specs.values()
    return Site(spec, read_key(key_file or key_path_from_env()), None)


async def fleet_status(spec: ClusterSpec, key: bytes, *, events: int = 10) -> dict[str, Any]:
    """The store's view of one file system (read_status, with its last `events` events),
    with what each live node says of its services' health: what `shoal status` shows from
    any host."""
    answers = await all_nodes(spec, key, "status", timeout=1.0)
    async with open_store(spec.store_url) as store:
        st = await read_status(store, spec, events=events)
    for n in st["nodes"]:
        said = answers.get(n["name"])
        n["answers"] = bool(said)
        n["metrics"] = said.get("metrics") if said else None  # its Prometheus URL
    for t in st["targets"]:
        data = answers.get(t["owner"]) if t["owner"] else None
        info = (data or {}).get("targets", {}).get(t["name"])
        t["health"] = info["health"] if info else None
        if info and t["epoch"] is None:
            t["epoch"] = info["epoch"]
    return {"fs": spec.fs, "store": spec.store_url, **st}


async def set_fs_down(spec: ClusterSpec, down: bool, *, timeout: float = 60.0) -> list[str]:
    """`shoal down --fs` (down=True) and `shoal start --fs` through the store: the daemons
    stop (or start again) that file system's targets and serve on every other one. Waits
    until every target is STOPPED (or served again); returns the targets still not there."""
    async with open_store(spec.store_url) as store:
        if down:
            await store.put(fs_down_key(spec.fs), b"shoal down")
        else:
            await store.delete(fs_down_key(spec.fs))
        # a shared MGS serves on while another file system that names it runs
        others = {fs for fs in await _configured(store) if fs != spec.fs}
        waited = [t.name for t in spec.targets if not (t.kind == "MGT" and down and others)]
        deadline = time.monotonic() + timeout
        while True:
            st = await read_status(store, spec, events=1)
            want = ("STOPPED",) if down else ("UP",)
            left = [t["name"] for t in st["targets"]
                    if t["name"] in waited and t["state"] not in want]
            if not left or time.monotonic() > deadline:
                return left
            await asyncio.sleep(0.25)


async def _configured(store: Store) -> list[str]:
    return [d.name for d in await read_conf(store, strict=False)]
