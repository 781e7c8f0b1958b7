"""The Shoal client: configuration from the MGS, one import per target, and the file API.

Async at heart (one event loop drives every import and every parallel per-OST transfer);
`shoal.client.sync.SyncClient` wraps it for plain synchronous callers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from pathlib import Path
from typing import Any

from shoal.client import fileio, params
from shoal.client.background import CommitPressure, Destroyer
from shoal.client.data_locks import LRU_SIZE as DATA_LRU_SIZE
from shoal.client.data_locks import DataLocks
from shoal.client.imports import NODE_TARGET, Import
from shoal.client.md_locks import MetadataLocks
from shoal.client.open_cache import OpenCache
from shoal.errors import AuthFailure, ConfigError, NotConnected, ShoalError, TimedOut
from shoal.net.client import RpcConnection
from shoal.net.tls import client_context
from shoal.protocol import messages as m
from shoal.protocol.adaptive import ATParams
from shoal.protocol.ldlm import CALLBACK, CANCEL_OP, Mode
from shoal.protocol.ping_evict import DEFAULT_PING_INTERVAL

log = logging.getLogger(__name__)

MGS_TARGET = "MGS"
SILENT_CLOSES = 3  # connections the MGS closed in a row without a frame: a wrong key
PING_INTERVAL = 1.0  # seconds between checks of idle imports' connections
MGS_RETRY = 1.0  # seconds between attempts to get the MGS link (and so IR notices) back


class Client(fileio.FileOps):
    """A mounted Shoal file system, as a library: the namespace and file operations
    (client/namespace.py, client/fileio.py) over the imports it owns."""

    def __init__(
        self,
        mgs_nids: list[str],
        key: bytes,
        *,
        name: str | None = None,
        request_timeout: float | None = None,
        connect_timeout: float = 2.0,
        recovery_timeout: float = 300.0,
        max_uncommitted_bytes: int = 128 << 20,
        max_rpc_bytes: int = 4 << 20,
        at: ATParams | None = None,
        ir: bool = True,
        fs: str = "",
        tls: ssl.SSLContext | None = None,
        locks: bool = False,
        uid: int = 0,
        gid: int = 0,
    ) -> None:
        """request_timeout: a fixed RPC timeout instead of adaptive timeouts (`at`);
        ir=False is Lustre's `noir` mount option: IR notices are ignored, and a moved
        target is found through timeouts and round robin over its failover NIDs;
        tls: connect to nodes over TLS, verifying them with this context (RPC_TLS);
        locks: keep attributes and names under the MDT's locks (client/md_locks.py);
        uid, gid: who owns what this client creates (a process's fsuid and fsgid, as a
        Lustre client sends them; the mount sends each caller's own), and so whose
        quotas it counts in."""
        self.uuid = name or f"client-{uuid.uuid4().hex[:12]}"
        self.owner = {"uid": uid, "gid": gid}
        self.key = key
        self.tls = tls
        self.request_timeout = request_timeout
        self.at_params = at or ATParams()
        self.ir = ir
        self.locks = locks
        self.nidtbl_version = 0  # newest IR notice seen (Lustre's mgc ir_state)
        self.connect_timeout = connect_timeout
        self.recovery_timeout = recovery_timeout
        self.max_rpc_bytes = max_rpc_bytes
        self.uncommitted_bytes = 0
        self.inflight: set[int] = set()
        self._xid = 0
        self._conns: dict[str, RpcConnection] = {}
        self._conn_locks: dict[str, asyncio.Lock] = {}
        # per node: how often to ping it when idle, as it said (protocol/ping_evict.py)
        self.ping_every: dict[str, float] = {}
        self._pinging: set[str] = set()
        self.mgs = Import(self, MGS_TARGET, "MGT", list(mgs_nids))
        self.by_target: dict[str, Import] = {MGS_TARGET: self.mgs}
        self._ir_pending: dict[str, m.Notice] = {}  # for targets not mounted yet
        self.config: dict[str, Any] = {}
        self.mdts: list[Import] = []
        self.osts: dict[int, Import] = {}
        self.fs = fs  # which file system to ask the MGS for ("": the one it serves)
        self._background: set[asyncio.Task[Any]] = set()
        self._connecting: list[asyncio.Task[None]] = []  # the OSTs' connects at mount
        self.pressure = CommitPressure(lambda: self.uncommitted_bytes, lambda: self.imports,
                                       max_uncommitted_bytes)
        self.destroyer = Destroyer(self.osts)
        self.silent_closes = 0  # connections in a row the server closed without a frame
        self._silence = asyncio.Event()

    @classmethod
    def from_cluster_dir(cls, cluster_dir: Path | str, **kw: Any) -> Client:
        """A client of the local cluster in cluster_dir (cluster.json and the key), or, on a
        host where $SHOAL_STORE is set, of the file system the store configures (its MGS's
        NIDs, $SHOAL_KEY, $SHOAL_FS: cluster/site.py)."""
        import os

        from shoal.node.spec import KEY_FILE, ClusterSpec, read_key

        if os.environ.get("SHOAL_STORE"):
            import concurrent.futures

            from shoal.cluster.site import resolve_site  # only on a host with a store

            # a thread of its own: this may be called with an event loop running
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                site = pool.submit(asyncio.run, resolve_site(Path(cluster_dir))).result()
            spec, key = site.spec, site.key
        else:
            d = Path(cluster_dir)
            spec, key = ClusterSpec.load(d), read_key(d / KEY_FILE)
        kw.setdefault("tls", client_context(spec.settings))
        return cls(spec.target_nids(spec.mgs), key, fs=spec.fs, **kw)

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
                                            timeout=self.connect_timeout, tls=self.tls,
                                            on_notice=lambda n: self._on_notice(n, nid))
            self._conns[nid] = conn
            watch = asyncio.get_running_loop().create_task(self._watch_silence(conn))
            self._background.add(watch)
            watch.add_done_callback(self._background.discard)
            return conn

    async def _watch_silence(self, conn: RpcConnection) -> None:
        await conn.wait_closed()
        self.silent_closes = 0 if conn.heard else self.silent_closes + 1
        self._silence.set()

    def _on_notice(self, notice: m.Notice, nid: str) -> None:
        """A server push: route it to the import of the target it names."""
        data = notice.data
        target = str(data.get("target", ""))
        imp = self.by_target.get(target)
        if notice.what == "evicted":
            if imp is not None:
                imp.evicted_notice(nid)
        elif notice.what == "ir":
            if not self.ir:
                return  # noir
            try:
                version = int(data["version"])
                where, epoch = str(data["nid"]), int(data["epoch"])
            except (KeyError, TypeError, ValueError):
                log.warning("malformed IR notice from %s: %s", nid, data)
                return
            self.nidtbl_version = max(self.nidtbl_version, version)
            if imp is None:
                old = self._ir_pending.get(target)
                if old is None or int(old.data["version"]) < version:
                    self._ir_pending[target] = notice
                return
            imp.ir_notice(where, epoch, version, str(data.get("node", "")))
        elif notice.what == CALLBACK:
            handle = data.get("handle")
            if imp is None or not isinstance(handle, int):
                return
            if imp.md_locks is not None:
                imp.md_locks.called_back(handle, own=data.get("own") is True)
            elif imp.data_locks is not None:
                imp.data_locks.called_back(handle)
        else:
            log.debug("notice %s from %s: %s", notice.what, nid, data)

    # -- set-up --------------------------------------------------------------------------
    def keep_data(self, release: Callable[[Mode, Any], Awaitable[None]], *,
                  limit: int = DATA_LRU_SIZE) -> None:
        """Hold extent locks on the OSTs' objects for the data this client keeps (the
        mount's pages and buffered writes: client/data_locks.py); `release(mode, data)`
        lands and drops what a lock covered when it goes (`data`: what it was held for)."""
        for imp in self.osts.values():
            imp.data_locks = DataLocks(partial(_data_call, imp), release, limit=limit)

    async def mount(self) -> Client:
        """Fetch the configuration from the MGS and set up one import per target.
        AuthFailure, within seconds, when the MGS keeps closing our connections without a
        word: what a server does with a hello signed by another cluster's key."""
        get = asyncio.ensure_future(self.mgs.call("get_config",
                                                  {"fs": self.fs} if self.fs else {}))
        try:
            while not get.done():
                self._silence.clear()
                waiter = asyncio.ensure_future(self._silence.wait())
                await asyncio.wait({get, waiter}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if self.silent_closes >= SILENT_CLOSES and not get.done():
                    self.mgs.close()  # the call ends with "import closed": wait for it
                    await asyncio.gather(get, return_exceptions=True)
                    raise AuthFailure(
                        f"the MGS ({', '.join(self.mgs.nids)}) closed {self.silent_closes} "
                        "connections in a row without a word: this client's key is most "
                        "likely not the cluster's (check $SHOAL_KEY / --key)"
                        + ("" if self.tls else ", or the nodes speak TLS (RPC_TLS) and this "
                           "client does not"))
        finally:
            if not get.done():
                get.cancel()  # it ends when the import closes: its error is ours to take
                get.add_done_callback(lambda t: t.cancelled() or t.exception())
        reply = get.result()
        cfg = reply.data
        self.config = cfg
        self.fs = cfg["fs"]
        for t in cfg["targets"]:
            imp = Import(self, t["name"], t["kind"], list(t["nids"]))
            if t["kind"] == "MDT":
                self.mdts.append(imp)
                if self.locks:
                    imp.md_locks = MetadataLocks(_canceller(imp))
                    imp.opens = OpenCache(imp.md_locks, partial(self._close_kept, imp))
            elif t["kind"] == "OST":
                self.osts[int(t["index"])] = imp
            else:
                continue
            self.by_target[imp.target] = imp
            pending = self._ir_pending.pop(imp.target, None)
            if pending is not None:
                self._on_notice(pending, "")
        if not self.mdts:
            raise ConfigError(f"file system {self.fs} has no MDT")
        # Connect at mount, as Lustre does: a target writes a client's last_rcvd slot when
        # it connects, so a restarted target knows this client whenever its first change
        # comes. The MDT is needed at once; the OSTs connect in the background, so a mount
        # does not wait for an OST that is down.
        await asyncio.gather(*(imp.connect() for imp in self.mdts))
        self._connecting = [self._in_background(self._connect_quietly(imp),
                                                f"connect-{imp.target}")
                            for imp in self.osts.values()]
        if self.ir:
            self._in_background(self._watch_mgs(), "mgs-watch")
        self._in_background(self._pinger(), "pinger")
        return self

    async def connected(self) -> None:
        """Until the OSTs' connects begun at mount have ended (answered, or given up): then
        every target that answered knows this client (its slot is on disk there)."""
        if self._connecting:
            await asyncio.gather(*self._connecting, return_exceptions=True)

    @staticmethod
    async def _connect_quietly(imp: Import) -> None:
        try:
            await imp.connect()
        except ShoalError as exc:  # the first request to it tries again and reports
            log.debug("%s: connect at mount: %s", imp.target, exc)

    def _in_background(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run coro until it ends or the client closes (close() cancels what is left)."""
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _pinger(self) -> None:
        """Lustre's ptlrpc pinger, for two cases.

        An import that is idle when its server dies: its connection closes under it,
        nobody is waiting on it, and without IR it would not notice until its next
        request, while the target's recovery window waits for it and then evicts it with
        its uncommitted writes. So every PING_INTERVAL a FULL import whose connection is
        gone starts reconnecting.

        A node that has not heard from this client for its eviction timeout evicts it
        (protocol/ping_evict.py): a connection with nothing sent for the interval the node
        asked for carries a ping."""
        while True:
            await asyncio.sleep(min([PING_INTERVAL, *self.ping_every.values()]))
            for imp in [*self.mdts, *self.osts.values()]:
                if imp.state != "FULL":
                    continue
                conn = self._conns.get(imp.nid)
                if conn is None or conn.closed:
                    imp.connection_lost(imp.nid)
                    self._in_background(self._reconnect(imp), f"ping-{imp.target}")
            now = time.monotonic()
            for nid, conn in list(self._conns.items()):
                if now - conn.last_sent >= self.ping_every.get(nid, DEFAULT_PING_INTERVAL):
                    self.ping_soon(nid)

    def ping_soon(self, nid: str) -> None:
        """Ping the node now (unless a ping to it is under way): a request to it timed out,
        or it has heard nothing from us for its ping interval."""
        conn = self._conns.get(nid)
        if conn is None or conn.closed or nid in self._pinging:
            return
        self._pinging.add(nid)
        self._in_background(self._ping(nid, conn), f"ping-{nid}")

    async def _ping(self, nid: str, conn: RpcConnection) -> None:
        try:
            req = m.Request(self.next_xid(), "ping", NODE_TARGET)
            reply = await conn.call(req, timeout=self.connect_timeout)
            if reply.status is None:
                self.node_said(nid, reply.data)
        except TimedOut as exc:
            # a node that lost power or dropped off the network closes no socket: only
            # silence tells. As Lustre's pinger does, give up on the connection so everything
            # using it reconnects (the MGS link to the MGS's partner, idle imports elsewhere)
            log.warning("ping %s: %s; closing the connection", nid, exc)
            await conn.close()
        except ShoalError as exc:  # a lost node is the imports' business, not the pinger's
            log.debug("ping %s: %s", nid, exc)
        finally:
            self._pinging.discard(nid)

    async def _close_kept(self, imp: Import, handle: int) -> None:
        """Close an open handle kept past its File's close (client/open_cache.py)."""
        data = (await imp.call("close", {"handle": handle})).data
        if data.get("destroy"):
            self.destroyer.queue(data["destroy"])

    def node_said(self, nid: str, data: dict[str, Any]) -> None:
        """A node's connect or ping reply: how often it wants an idle client to ping it."""
        every = data.get("ping_interval")
        if isinstance(every, (int, float)) and every > 0:
            self.ping_every[nid] = float(every)

    async def _reconnect(self, imp: Import) -> None:
        try:
            await imp.connect()
        except ShoalError as exc:
            log.warning("%s: reconnect after a lost connection failed: %s", imp.target, exc)

    async def _watch_mgs(self) -> None:
        """Keep a connection to the MGS, which is where IR notices come from (Lustre's MGC
        re-queues its config lock for the same reason). Recovery itself needs none of it:
        without the MGS, imports still find their targets by round robin (invariant 3)."""
        while True:
            try:
                await self.mgs.connect()
                nid = self.mgs.nid
                conn = await self.connection(nid)
            except ShoalError as exc:
                log.debug("MGS link: %s", exc)
                await asyncio.sleep(MGS_RETRY)
                continue
            await conn.wait_closed()
            self.mgs.connection_lost(nid)

    @property
    def mdt(self) -> Import:
        return self.mdts[0]

    @property
    def imports(self) -> list[Import]:
        return [self.mgs, *self.mdts, *self.osts.values()]

    async def close(self) -> None:
        await self.destroyer.close()
        await self.pressure.settle()
        # a connect still on its way would leave a slot behind once answered: let it end
        # (briefly) so that its import can say goodbye too
        pending = [t for t in self._connecting if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=self.connect_timeout)
        await asyncio.gather(*(imp.leave() for imp in self.imports))
        for task in list(self._background):
            task.cancel()
        for imp in self.imports:
            imp.close()
        for conn in list(self._conns.values()):
            await conn.close()
        self._conns.clear()

    async def __aenter__(self) -> Client:
        return await self.mount()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- durability ----------------------------------------------------------------------
    async def sync_all(self) -> None:
        """Commit everything this client has changed (what fsync of everything means)."""
        await asyncio.gather(*(imp.sync() for imp in self.imports
                               if imp.replay or imp.lost_to_eviction))

    def describe(self) -> str:
        return json.dumps({imp.target: imp.state for imp in self.imports})

    # -- parameters ----------------------------------------------------------------------
    def param_tree(self) -> dict[str, Callable[[], str]]:
        """The client's get_param tree (mdc.*.state, osc.*.import, *.timeouts, ...)."""
        return params.client_params(self)

    def get_param(self, pattern: str = "*") -> dict[str, str]:
        return params.match(self.param_tree(), pattern)


async def connect(mgs_nids: list[str], key: bytes, **kw: Any) -> Client:
    client = Client(mgs_nids, key, **kw)
    try:
        return await client.mount()
    except BaseException:
        await client.close()
        raise


__all__ = ["Client", "connect", "NotConnected"]


async def _data_call(imp: Import, op: str, args: dict[str, Any]) -> dict[str, Any]:
    return (await imp.call(op, args)).data


def _canceller(imp: Import) -> Callable[[list[int]], Coroutine[Any, Any, m.Reply]]:
    """How the MDT import's lock cache gives locks back."""

    async def cancel(handles: list[int]) -> m.Reply:
        return await imp.call(CANCEL_OP, {"handles": handles})

    return cancel
