"""The Shoal client: configuration from the MGS, one import per target, and the file API.

Async at heart (one event loop drives every import and every parallel per-OST transfer);
`shoal.client.sync.SyncClient` wraps it for plain synchronous callers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from pathlib import Path
from typing import Any

from shoal.client import fileio, namespace
from shoal.client.imports import Import
from shoal.errors import ConfigError, NotConnected
from shoal.net.client import RpcConnection
from shoal.protocol import messages as m

log = logging.getLogger(__name__)

MGS_TARGET = "MGS"


class Client(namespace.NamespaceOps, fileio.FileOps):
    """A mounted Shoal file system, as a library."""

    def __init__(
        self,
        mgs_nids: list[str],
        key: bytes,
        *,
        name: str | None = None,
        request_timeout: float = 30.0,
        connect_timeout: float = 2.0,
        recovery_timeout: float = 300.0,
        max_uncommitted_bytes: int = 128 << 20,
        max_rpc_bytes: int = 4 << 20,
    ) -> None:
        self.uuid = name or f"client-{uuid.uuid4().hex[:12]}"
        self.key = key
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.recovery_timeout = recovery_timeout
        self.max_uncommitted_bytes = max_uncommitted_bytes
        self.max_rpc_bytes = max_rpc_bytes
        self.uncommitted_bytes = 0
        self.inflight: set[int] = set()
        self._xid = 0
        self._conns: dict[str, RpcConnection] = {}
        self._conn_locks: dict[str, asyncio.Lock] = {}
        self.mgs = Import(self, MGS_TARGET, "MGT", list(mgs_nids))
        self.config: dict[str, Any] = {}
        self.mdts: list[Import] = []
        self.osts: dict[int, Import] = {}
        self.fs = ""
        self._background: set[asyncio.Task[Any]] = set()
        self._destroy_queue: dict[int, list[int]] = {}
        self._destroy_flush: asyncio.Task[None] | None = None

    @classmethod
    def from_cluster_dir(cls, cluster_dir: Path | str, **kw: Any) -> Client:
        """A client for the local cluster in cluster_dir (reads cluster.json and the key)."""
        from shoal.node.spec import KEY_FILE, ClusterSpec, read_key

        d = Path(cluster_dir)
        spec = ClusterSpec.load(d)
        return cls(spec.target_nids(spec.mgs), read_key(d / KEY_FILE), **kw)

    # -- xids and connections ------------------------------------------------------------
    def next_xid(self) -> int:
        self._xid += 1
        return self._xid

    def known_xid(self) -> int:
        """Every xid below this one has had its reply."""
        return min(self.inflight) if self.inflight else self._xid + 1

    async def connection(self, nid: str) -> RpcConnection:
        conn = self._conns.get(nid)
        if conn is not None and not conn.closed:
            return conn
        lock = self._conn_locks.setdefault(nid, asyncio.Lock())
        async with lock:
            conn = self._conns.get(nid)
            if conn is not None and not conn.closed:
                return conn
            host, _, port = nid.rpartition(":")
            conn = await RpcConnection.open(host, int(port), self.key, m.Hello(self.uuid),
                                            timeout=self.connect_timeout,
                                            on_notice=self._on_notice)
            self._conns[nid] = conn
            return conn

    def _on_notice(self, notice: m.Notice) -> None:
        log.debug("notice %s: %s", notice.what, notice.data)

    # -- set-up --------------------------------------------------------------------------
    async def mount(self) -> Client:
        """Fetch the configuration from the MGS and set up one import per target."""
        reply = await self.mgs.call("get_config", {})
        cfg = reply.data
        self.config = cfg
        self.fs = cfg["fs"]
        for t in cfg["targets"]:
            imp = Import(self, t["name"], t["kind"], list(t["nids"]))
            if t["kind"] == "MDT":
                self.mdts.append(imp)
            elif t["kind"] == "OST":
                self.osts[int(t["index"])] = imp
        if not self.mdts:
            raise ConfigError(f"file system {self.fs} has no MDT")
        return self

    @property
    def mdt(self) -> Import:
        return self.mdts[0]

    @property
    def imports(self) -> list[Import]:
        return [self.mgs, *self.mdts, *self.osts.values()]

    async def close(self) -> None:
        await self.flush_destroys()
        for task in list(self._background):
            task.cancel()
        for conn in list(self._conns.values()):
            await conn.close()
        self._conns.clear()

    async def __aenter__(self) -> Client:
        return await self.mount()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- durability ----------------------------------------------------------------------
    async def commit_pressure(self) -> None:
        """Past the uncommitted-bytes limit, force commits on the targets holding the most."""
        if self.uncommitted_bytes <= self.max_uncommitted_bytes:
            return
        heavy = [imp for imp in self.imports if imp.uncommitted_bytes > 0]
        await asyncio.gather(*(imp.sync() for imp in heavy))

    async def sync_all(self) -> None:
        """Commit everything this client has changed (what fsync of everything means)."""
        await asyncio.gather(*(imp.sync() for imp in self.imports if imp.replay))

    # -- background object destruction ---------------------------------------------------
    def queue_destroy(self, layout: dict[str, Any]) -> None:
        """Objects of a file whose last link went away: destroyed in batches, off the hot path."""
        for ost in layout["osts"]:
            self._destroy_queue.setdefault(int(ost), []).append(int(layout["oid"]))
        if self._destroy_flush is None or self._destroy_flush.done():
            self._destroy_flush = asyncio.create_task(self._flush_destroys_later())

    async def _flush_destroys_later(self) -> None:
        await asyncio.sleep(0.05)
        await self.flush_destroys()

    async def flush_destroys(self) -> None:
        queue, self._destroy_queue = self._destroy_queue, {}
        calls = []
        for ost, oids in queue.items():
            imp = self.osts.get(ost)
            if imp is not None:
                calls.append(imp.call("destroy", {"oids": oids}))
        for res in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(res, Exception):
                log.warning("object destroy failed (objects leak until lfsck): %s", res)

    def describe(self) -> str:
        return json.dumps({imp.target: imp.state for imp in self.imports})


async def connect(mgs_nids: list[str], key: bytes, **kw: Any) -> Client:
    client = Client(mgs_nids, key, **kw)
    try:
        return await client.mount()
    except BaseException:
        await client.close()
        raise


__all__ = ["Client", "connect", "NotConnected"]
