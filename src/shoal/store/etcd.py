"""EtcdStore: the store on an etcd v3 cluster (real deployments), over gRPC.

We speak etcd's v3 gRPC API with grpc.aio and the generated stubs that the `aetcd` package
ships (`aetcd.rpc`), but not aetcd's `Client`: that one talks to a single host and multiplexes
watches in a way that hides compaction and reconnects. Here:

- One gRPC channel holds every member (`ipv4:a:p,b:p,...`) with round-robin balancing, so a
  dead member drops out of rotation and a restarted one rejoins (reconnect backoff capped at
  1 s instead of gRPC's default 120 s).
- Every unary call has a deadline (`timeout`, 2 s default) and waits for a ready connection
  within it. Failures to reach a quorum map to StoreUnreachable naming the URL; absence of a
  key is None, never an error.
- Retries: reads, lease grant/keepalive/revoke and plain puts are retried on UNAVAILABLE until
  the deadline (repeating them is harmless). Conditional writes (create, CAS, delete,
  transaction) are retried only on errors etcd raises *before* proposing ("no leader"), since
  a retried CAS that had in fact been applied would report a lost race; on an ambiguous
  failure they raise StoreUnreachable and the caller re-reads.
- A watch is its own gRPC stream with `hasleader` metadata (etcd cancels it if its member
  loses the leader, instead of going silent). It resumes after a broken stream from the
  revision after the last event it yielded, so no event is missed or repeated; if that
  history was compacted meanwhile it raises Compacted. Being unable to reconnect for
  `reconnect_grace` seconds raises StoreUnreachable.

TLS (`etcds://`, EtcdTLS): the channel verifies every member's certificate against the CA and
presents the client's certificate (etcd's --client-cert-auth). gRPC checks one name for every
member of a channel, so with several members each certificate must carry the name given as
`server_name` (a cluster-wide SAN such as etcd.example.org, besides each member's own); with
one member its address is the name. Without that rule only the member whose certificate
matched would take requests, and losing it would look like losing the store.

Thread and event-loop rules: the gRPC channel is created lazily on the first call and belongs
to that call's event loop. Use a store object only from that loop; another thread with its own
loop (the agent's keepalive thread) opens its own store. Using it from another loop raises
StoreError rather than failing in obscure ways inside gRPC.

etcd specifics callers see: lease TTLs are whole seconds (rounded up) and at least etcd's
minimum (1.5 x election timeout, 2 s with the defaults); a lease expires up to ~0.5 s after
its TTL because etcd's leader checks expiries twice a second; and a new leader renews every
lease once when it takes over, so across an election a dead holder's key outlives its TTL by
up to an election timeout. None of this makes a lease expire early.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from aetcd import rpc

from shoal.errors import ConfigError, InvalidArgument, LeaseExpired, StoreError, StoreUnreachable
from shoal.store.base import Compacted, EventType, KeyValue, Lease, Store, WatchEvent
from shoal.store.keys import check_key, check_txn, check_value, prefix_range

T = TypeVar("T")

_EQUAL = rpc.Compare.CompareResult.EQUAL
_MOD = rpc.Compare.CompareTarget.MOD
_CREATE = rpc.Compare.CompareTarget.CREATE
_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
# etcd refuses these before proposing anything, so even a CAS may be sent again.
_NOT_APPLIED = ("no leader", "not capable", "too many requests")
_CHANNEL_OPTIONS = [
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Pings find a frozen member under a long-lived watch stream. etcd's default
    # --grpc-keepalive-min-time is 5 s: pinging more often gets the connection closed.
    ("grpc.keepalive_time_ms", 5_000),
    ("grpc.keepalive_timeout_ms", 2_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]
_HASLEADER = (("hasleader", "true"),)


def _code(exc: grpc.aio.AioRpcError) -> grpc.StatusCode:
    """The status code, with etcd's server-side timeouts (sent as UNKNOWN when our deadline
    ran out inside the member, e.g. waiting for a new leader) counted as deadline errors."""
    code = exc.code()
    if code == grpc.StatusCode.UNKNOWN and "deadline exceeded" in (exc.details() or ""):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return code


@dataclass(frozen=True)
class EtcdTLS:
    """The files for etcd over TLS: the CA that signed the members' certificates, and this
    client's certificate and key; `server_name` is what every member's certificate must be
    valid for ('' with one member: its address)."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    server_name: str = ""

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ConfigError("etcd TLS needs both cert= and key= (or neither)")

    def credentials(self) -> grpc.ChannelCredentials:
        def read(what: str, path: Path | None) -> bytes | None:
            if path is None:
                return None
            try:
                return Path(path).read_bytes()
            except OSError as exc:
                raise ConfigError(f"etcd TLS {what} {path}: {exc.strerror or exc}") from None
        return grpc.ssl_channel_credentials(read("ca", self.ca), read("key", self.key),
                                            read("cert", self.cert))


def parse_endpoints(spec: str) -> list[tuple[str, int]]:
    """'h1:p1,h2:p2' (port defaults to 2379) -> [(h1, p1), (h2, p2)]; ValueError if malformed."""
    out = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            raise ValueError("empty member address")
        host, sep, port = item.rpartition(":")
        if not sep:
            host, port = item, "2379"
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad member address {item!r} (want host:port)")
        out.append((host, int(port)))
    return out


class EtcdStore(Store):
    """The store on an etcd cluster; see the module docstring for the rules."""

    def __init__(
        self,
        endpoints: list[tuple[str, int]],
        *,
        timeout: float = 2.0,
        reconnect_grace: float | None = None,
        tls: EtcdTLS | None = None,
    ) -> None:
        if not endpoints:
            raise InvalidArgument("an etcd store needs at least one member address")
        if tls is not None and len(endpoints) > 1 and not tls.server_name:
            raise ConfigError(
                "etcd over TLS with several members needs server_name=NAME, a name every "
                "member's certificate carries (gRPC checks one name for all members)")
        self.endpoints = endpoints
        self.tls = tls
        self.url = ("etcds://" if tls else "etcd://") + ",".join(f"{h}:{p}" for h, p in endpoints)
        self.timeout = timeout
        self.reconnect_grace = reconnect_grace if reconnect_grace is not None else 5 * timeout
        self._channel: grpc.aio.Channel | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kv: Any = None
        self._lease: Any = None
        self._watch: Any = None
        self._closed = False

    # -- plumbing -----------------------------------------------------------------------
    async def _target(self) -> str:
        addrs = []
        for host, port in self.endpoints:
            try:
                ipaddress.IPv4Address(host)
                addrs.append(f"{host}:{port}")
                continue
            except ValueError:
                pass
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, family=socket.AF_INET, type=socket.SOCK_STREAM
                )
            except OSError as exc:
                raise StoreUnreachable(
                    f"etcd store {self.url}: cannot resolve {host}: {exc}"
                ) from exc
            addrs.extend(f"{info[4][0]}:{port}" for info in infos[:1])
        return "ipv4:" + ",".join(addrs)

    async def _ensure(self) -> None:
        if self._closed:
            raise StoreError(f"etcd store {self.url} is closed")
        loop = asyncio.get_running_loop()
        if self._channel is None:
            target = await self._target()
            if self._channel is not None:  # another call connected while we resolved names
                return
            if self.tls is None:
                self._channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
            else:
                options = list(_CHANNEL_OPTIONS)
                if self.tls.server_name:
                    options.append(("grpc.ssl_target_name_override", self.tls.server_name))
                self._channel = grpc.aio.secure_channel(target, self.tls.credentials(),
                                                        options=options)
            self._loop = loop
            self._kv = rpc.KVStub(self._channel)
            self._lease = rpc.LeaseStub(self._channel)
            self._watch = rpc.WatchStub(self._channel)
        elif loop is not self._loop:
            raise StoreError(
                f"etcd store {self.url} used from another event loop; open one store per loop"
            )

    def _closed_under_us(self) -> bool:
        """True if a CancelledError came from close() cancelling our RPC (gRPC raises it for
        a locally cancelled call), not from someone cancelling the task we run in."""
        task = asyncio.current_task()
        return self._closed and task is not None and not task.cancelling()

    def _error(self, exc: grpc.aio.AioRpcError) -> StoreError:
        code, details = _code(exc), exc.details() or ""
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return StoreUnreachable(
                f"etcd store {self.url} unreachable: no answer within {self.timeout:g} s"
            )
        if code in _UNREACHABLE:
            return StoreUnreachable(f"etcd store {self.url} unreachable: {details or code.name}")
        if code == grpc.StatusCode.NOT_FOUND and "lease not found" in details:
            return LeaseExpired(f"etcd store {self.url}: {details}")
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidArgument(f"etcd store {self.url}: {details}")
        return StoreError(f"etcd store {self.url}: {code.name}: {details}")

    async def _call(
        self, make: Callable[[float], Awaitable[T]], *, idempotent: bool
    ) -> T:
        """Run one RPC (`make(seconds)`) with the store's deadline and retry rules.

        An idempotent call gets a third of the deadline per attempt, so a hung member (which
        round-robin still picks) costs one attempt and the retry goes to another member."""
        await self._ensure()
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            attempt = max(remaining / 3, min(remaining, 0.2)) if idempotent else remaining
            try:
                return await make(max(attempt, 0.001))
            except asyncio.CancelledError:
                if self._closed_under_us():
                    raise StoreError(f"etcd store {self.url} is closed") from None
                raise
            except grpc.aio.AioRpcError as exc:
                details = exc.details() or ""
                retry = _code(exc) in _UNREACHABLE if idempotent else (
                    _code(exc) == grpc.StatusCode.UNAVAILABLE
                    and any(s in details for s in _NOT_APPLIED)
                )
                if not retry or deadline - time.monotonic() < 0.06:
                    raise self._error(exc) from exc
            await asyncio.sleep(0.05)

    def _unary(self, method: Any, request: Any, *, idempotent: bool) -> Awaitable[Any]:
        return self._call(
            lambda t: method(request, timeout=t, wait_for_ready=True), idempotent=idempotent
        )

    @staticmethod
    def _kvs(kv: Any) -> KeyValue:
        return KeyValue(
            kv.key.decode(), bytes(kv.value), kv.create_revision, kv.mod_revision, kv.version,
            kv.lease,
        )

    @staticmethod
    def _event(ev: Any) -> WatchEvent:
        if ev.type == rpc.Event.EventType.PUT:
            return WatchEvent(
                EventType.PUT, ev.kv.key.decode(), bytes(ev.kv.value), int(ev.kv.mod_revision),
                int(ev.kv.create_revision),
            )
        return WatchEvent(
            EventType.DELETE, ev.kv.key.decode(), b"", int(ev.kv.mod_revision),
            int(ev.prev_kv.create_revision),
        )

    # -- reads --------------------------------------------------------------------------
    async def get(self, key: str) -> KeyValue | None:
        await self._ensure()
        resp = await self._unary(
            self._kv.Range, rpc.RangeRequest(key=check_key(key)), idempotent=True
        )
        return self._kvs(resp.kvs[0]) if resp.kvs else None

    async def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        await self._ensure()
        lo, hi = prefix_range(prefix)
        # etcd spells "every key >= lo" as range_end \0, and "every key" as key \0 too.
        req = rpc.RangeRequest(key=lo or b"\0", range_end=hi or b"\0")
        resp = await self._unary(self._kv.Range, req, idempotent=True)
        return [self._kvs(kv) for kv in resp.kvs], resp.header.revision

    async def revision(self) -> int:
        await self._ensure()
        # A linearizable count-only read of one key: the header carries the store revision.
        req = rpc.RangeRequest(key=b"\0", count_only=True)
        resp = await self._unary(self._kv.Range, req, idempotent=True)
        return int(resp.header.revision)

    # -- writes -------------------------------------------------------------------------
    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        await self._ensure()
        req = rpc.PutRequest(key=check_key(key), value=check_value(value), lease=lease)
        resp = await self._unary(self._kv.Put, req, idempotent=True)
        return int(resp.header.revision)

    async def _txn(
        self, compares: list[Any], success: list[Any]
    ) -> tuple[bool, int, list[Any]]:
        await self._ensure()
        req = rpc.TxnRequest(compare=compares, success=success, failure=[])
        resp = await self._unary(self._kv.Txn, req, idempotent=False)
        return resp.succeeded, int(resp.header.revision), list(resp.responses)

    @staticmethod
    def _put_op(key: bytes, value: bytes, lease: int = 0) -> Any:
        return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))

    async def create(self, key: str, value: bytes, *, lease: int = 0) -> int | None:
        k = check_key(key)
        cmp = rpc.Compare(result=_EQUAL, target=_CREATE, key=k, create_revision=0)
        ok, rev, _ = await self._txn([cmp], [self._put_op(k, check_value(value), lease)])
        return rev if ok else None

    async def compare_and_swap(
        self, key: str, value: bytes, *, mod_revision: int, lease: int = 0
    ) -> int | None:
        k = check_key(key)
        cmp = rpc.Compare(result=_EQUAL, target=_MOD, key=k, mod_revision=mod_revision)
        ok, rev, _ = await self._txn([cmp], [self._put_op(k, check_value(value), lease)])
        return rev if ok else None

    async def delete(self, key: str, *, mod_revision: int | None = None) -> bool:
        k = check_key(key)
        if mod_revision is None:
            await self._ensure()
            req = rpc.DeleteRangeRequest(key=k)
            resp = await self._unary(self._kv.DeleteRange, req, idempotent=False)
            return resp.deleted > 0
        cmp = rpc.Compare(result=_EQUAL, target=_MOD, key=k, mod_revision=mod_revision)
        op = rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k))
        ok, _, responses = await self._txn([cmp], [op])
        return ok and responses[0].response_delete_range.deleted > 0

    async def transaction(
        self,
        compares: list[tuple[str, int]],
        puts: list[tuple[str, bytes]],
        deletes: list[str],
    ) -> int | None:
        check_txn(puts, deletes)
        cmps = [
            rpc.Compare(result=_EQUAL, target=_MOD, key=check_key(k), mod_revision=rev)
            for k, rev in compares
        ]
        ops = [self._put_op(check_key(k), check_value(v)) for k, v in puts]
        ops += [
            rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=check_key(k)))
            for k in deletes
        ]
        ok, rev, _ = await self._txn(cmps, ops)
        return rev if ok else None

    # -- leases -------------------------------------------------------------------------
    async def grant_lease(self, ttl: float) -> Lease:
        if not ttl > 0:
            raise InvalidArgument(f"lease TTL must be positive, not {ttl!r}")
        await self._ensure()
        req = rpc.LeaseGrantRequest(TTL=math.ceil(ttl), ID=0)
        resp = await self._unary(self._lease.LeaseGrant, req, idempotent=True)
        if resp.error:
            raise StoreError(f"etcd store {self.url}: lease grant failed: {resp.error}")
        return Lease(id=int(resp.ID), ttl=float(resp.TTL))

    async def keepalive(self, lease_id: int) -> float:
        await self._ensure()

        async def once(timeout: float) -> Any:
            # LeaseKeepAlive is a stream; one request and one answer per renewal keeps no
            # stream state to repair after a reconnect.
            call = self._lease.LeaseKeepAlive(timeout=timeout, wait_for_ready=True)
            try:
                await call.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
                resp = await call.read()
            finally:
                call.cancel()
            if resp is grpc.aio.EOF:
                raise StoreUnreachable(f"etcd store {self.url}: keepalive stream closed")
            return resp

        resp = await self._call(once, idempotent=True)
        if resp.TTL <= 0:
            raise LeaseExpired(f"etcd store {self.url}: lease {lease_id} expired or revoked")
        return float(resp.TTL)

    async def revoke_lease(self, lease_id: int) -> None:
        await self._ensure()
        try:
            await self._unary(
                self._lease.LeaseRevoke, rpc.LeaseRevokeRequest(ID=lease_id), idempotent=True
            )
        except LeaseExpired:
            pass

    async def lease_ttl(self, lease_id: int) -> float | None:
        """Seconds the lease has left (whole seconds, as etcd counts), None if it is gone."""
        await self._ensure()
        req = rpc.LeaseTimeToLiveRequest(ID=lease_id)
        resp = await self._unary(self._lease.LeaseTimeToLive, req, idempotent=True)
        return None if resp.TTL < 0 else float(resp.TTL)

    # -- history ------------------------------------------------------------------------
    async def compact(self, revision: int) -> None:
        """Forget history before `revision` (watches from below it get Compacted)."""
        await self._ensure()
        req = rpc.CompactionRequest(revision=revision, physical=False)
        try:
            await self._unary(self._kv.Compact, req, idempotent=True)
        except StoreError as exc:
            if "compacted" not in str(exc):  # already compacted that far: nothing to do
                raise

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Events under prefix from start_revision (<= 0: from the next revision) on.

        Ends quietly when the store is closed. Raises Compacted when the history it needs is
        gone, StoreUnreachable after `reconnect_grace` seconds without a working stream."""
        lo, hi = prefix_range(prefix)
        next_rev = start_revision if start_revision > 0 else await self.revision() + 1
        down_since: float | None = None
        while not self._closed:
            await self._ensure()
            create = rpc.WatchCreateRequest(
                key=lo or b"\0", range_end=hi or b"\0", start_revision=next_rev,
                prev_kv=True,  # a DELETE's kv is a tombstone; prev_kv has its create_revision
            )
            call = self._watch.Watch(metadata=_HASLEADER)
            try:
                await call.write(rpc.WatchRequest(create_request=create))
                while True:
                    resp = await call.read()
                    if resp is grpc.aio.EOF:
                        break  # the member closed the stream: open another one
                    down_since = None
                    if resp.compact_revision:
                        raise Compacted(
                            f"etcd store {self.url}: watch from revision {next_rev} but "
                            f"history before {resp.compact_revision} is compacted",
                            compact_revision=int(resp.compact_revision),
                        )
                    if resp.canceled:
                        if "no leader" in resp.cancel_reason:
                            break
                        raise StoreError(f"etcd store {self.url}: watch: {resp.cancel_reason}")
                    for ev in resp.events:
                        next_rev = ev.kv.mod_revision + 1
                        yield self._event(ev)
            except asyncio.CancelledError:
                if self._closed_under_us():
                    return
                raise
            except grpc.aio.AioRpcError as exc:
                if self._closed:
                    return
                if _code(exc) not in _UNREACHABLE and _code(exc) != grpc.StatusCode.CANCELLED:
                    raise self._error(exc) from exc
            finally:
                call.cancel()
            now = time.monotonic()
            down_since = down_since or now
            if now - down_since > self.reconnect_grace:
                raise StoreUnreachable(
                    f"etcd store {self.url} unreachable: watch could not reconnect for "
                    f"{self.reconnect_grace:.0f} s"
                )
            await asyncio.sleep(0.1)

    # -- lifecycle ----------------------------------------------------------------------
    async def close(self) -> None:
        self._closed = True
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()
