"""EtcdStore: the store on an etcd v3 cluster (real deployments), over gRPC.

We speak etcd's v3 gRPC API with grpc.aio and the generated stubs that the `aetcd` package
ships (`aetcd.rpc`), but not aetcd's `Client`: that one talks to a single host and multiplexes
watches in a way that hides compaction and reconnects. Here:

- One gRPC channel per member, and one member pinned at a time, as etcd's own Go client
  does: calls go to the pinned member until it fails to answer (unreachable, or no answer
  within an attempt's share of the deadline), then it is set aside for a while and the next
  member is pinned. A member that is up but frozen (SIGSTOP, a hung disk) keeps its TCP
  connections, so a round-robin balancer went on sending it a third of all calls: with one
  member of three paused, a third of every node's lease renewals failed and every owner
  re-acquired its keys (issue 18's second bug). Reconnect backoff is capped at 1 s instead
  of gRPC's default 120 s, so a restarted member is usable again within a second.
- Every unary call has a deadline (`timeout`, 2 s default) and waits for a ready connection
  within it. Failures to reach a quorum map to StoreUnreachable naming the URL; absence of a
  key is None, never an error.
- Retries: reads, lease grant/keepalive/revoke and plain puts are retried on UNAVAILABLE until
  the deadline (repeating them is harmless). Conditional writes (create, CAS, delete,
  transaction) are retried only on errors etcd raises *before* proposing ("no leader"), since
  a retried CAS that had in fact been applied would report a lost race; on an ambiguous
  failure they raise StoreUnreachable and the caller re-reads.
- A watch is its own gRPC stream to the pinned member, with `hasleader` metadata (etcd
  cancels it if its member loses the leader, instead of going silent), and it asks for a
  progress notification whenever the stream has been quiet for WATCH_PROBE seconds: a member
  that does not answer one is frozen, and the watch moves to another member. It resumes
  after a broken stream from the revision after the last event it yielded, so no event is
  missed or repeated; if that history was compacted meanwhile it raises Compacted. Being
  unable to reconnect for `reconnect_grace` seconds raises StoreUnreachable.

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
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from aetcd import rpc

from shoal.errors import InvalidArgument, LeaseExpired, StoreError, StoreUnreachable
from shoal.store.base import Compacted, EventType, KeyValue, Lease, Store, WatchEvent
from shoal.store.etcd_member import EtcdTLS, Member
from shoal.store.keys import check_key, check_txn, check_value, prefix_range

T = TypeVar("T")
log = logging.getLogger(__name__)

_EQUAL = rpc.Compare.CompareResult.EQUAL
_MOD = rpc.Compare.CompareTarget.MOD
_CREATE = rpc.Compare.CompareTarget.CREATE
_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
# etcd refuses these before proposing anything, so even a CAS may be sent again.
_NOT_APPLIED = ("no leader", "not capable", "too many requests")
_HASLEADER = (("hasleader", "true"),)
SET_ASIDE = 5.0  # seconds a member that did not answer is passed over (at least 2 timeouts)
WATCH_PROBE = 1.0  # seconds of a quiet watch stream before a progress request; as long again
# without an answer and the watch moves to another member


def _code(exc: grpc.aio.AioRpcError) -> grpc.StatusCode:
    """The status code, with etcd's server-side timeouts (sent as UNKNOWN when our deadline
    ran out inside the member, e.g. waiting for a new leader) counted as deadline errors."""
    code = exc.code()
    if code == grpc.StatusCode.UNKNOWN and "deadline exceeded" in (exc.details() or ""):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return code


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
        self.endpoints = endpoints
        self.tls = tls
        self.url = ("etcds://" if tls else "etcd://") + ",".join(f"{h}:{p}" for h, p in endpoints)
        self.timeout = timeout
        self.reconnect_grace = reconnect_grace if reconnect_grace is not None else 5 * timeout
        self._members: list[Member] = []
        self._pinned = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.switches = 0  # times the pinned member changed (a member failed to answer)

    # -- plumbing -----------------------------------------------------------------------
    async def _ensure(self) -> None:
        if self._closed:
            raise StoreError(f"etcd store {self.url} is closed")
        loop = asyncio.get_running_loop()
        if not self._members:
            for host, port in self.endpoints:
                self._members.append(Member.connect(f"{host}:{port}", self.tls))
            self._loop = loop
        elif loop is not self._loop:
            raise StoreError(
                f"etcd store {self.url} used from another event loop; open one store per loop"
            )

    def _pick(self, tried: set[Member]) -> Member:
        """The pinned member, or the next one not set aside and not tried by this call."""
        n = len(self._members)
        order = [self._members[(self._pinned + i) % n] for i in range(n)]
        now = time.monotonic()
        for ok in (lambda m: m.bad_until <= now, lambda m: True):
            for m in order:
                if m not in tried and ok(m):
                    return m
        return order[0]

    def _set_aside(self, member: Member) -> None:
        """`member` did not answer: the next call goes to another one for a while."""
        member.bad_until = time.monotonic() + max(SET_ASIDE, 2 * self.timeout)
        if self._members[self._pinned] is member and len(self._members) > 1:
            self._pinned = (self._pinned + 1) % len(self._members)
            self.switches += 1
            log.info("etcd store %s: member %s does not answer; using %s", self.url,
                     member.address, self._members[self._pinned].address)

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
        self, make: Callable[[Member, float], Awaitable[T]], *, idempotent: bool
    ) -> T:
        """Run one RPC (`make(member, seconds)`) with the store's deadline and retry rules.

        An idempotent call gets a third of the deadline per attempt, so a member that hangs
        costs one attempt, and the retry goes to the next member."""
        await self._ensure()
        deadline = time.monotonic() + self.timeout
        tried: set[Member] = set()
        while True:
            member = self._pick(tried)
            tried.add(member)
            if len(tried) == len(self._members):
                tried.clear()  # every member tried once: round again, from the pinned one
            remaining = deadline - time.monotonic()
            attempt = max(remaining / 3, min(remaining, 0.2)) if idempotent else remaining
            try:
                return await make(member, max(attempt, 0.001))
            except asyncio.CancelledError:
                if self._closed_under_us():
                    raise StoreError(f"etcd store {self.url} is closed") from None
                raise
            except grpc.aio.AioRpcError as exc:
                details = exc.details() or ""
                unreachable = _code(exc) in _UNREACHABLE
                not_applied = (_code(exc) == grpc.StatusCode.UNAVAILABLE
                               and any(s in details for s in _NOT_APPLIED))
                if unreachable or not_applied:
                    self._set_aside(member)
                retry = unreachable if idempotent else not_applied
                if not retry or deadline - time.monotonic() < 0.06:
                    raise self._error(exc) from exc
            await asyncio.sleep(0.05)

    def _unary(self, stub: str, method: str, request: Any, *,
               idempotent: bool) -> Awaitable[Any]:
        return self._call(
            lambda m, t: getattr(getattr(m, stub), method)(request, timeout=t),
            idempotent=idempotent,
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
        resp = await self._unary("kv", "Range", rpc.RangeRequest(key=check_key(key)), idempotent=True
        )
        return self._kvs(resp.kvs[0]) if resp.kvs else None

    async def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        await self._ensure()
        lo, hi = prefix_range(prefix)
        # etcd spells "every key >= lo" as range_end \0, and "every key" as key \0 too.
        req = rpc.RangeRequest(key=lo or b"\0", range_end=hi or b"\0")
        resp = await self._unary("kv", "Range", req, idempotent=True)
        return [self._kvs(kv) for kv in resp.kvs], resp.header.revision

    async def revision(self) -> int:
        await self._ensure()
        # A linearizable count-only read of one key: the header carries the store revision.
        req = rpc.RangeRequest(key=b"\0", count_only=True)
        resp = await self._unary("kv", "Range", req, idempotent=True)
        return int(resp.header.revision)

    # -- writes -------------------------------------------------------------------------
    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        await self._ensure()
        req = rpc.PutRequest(key=check_key(key), value=check_value(value), lease=lease)
        resp = await self._unary("kv", "Put", req, idempotent=True)
        return int(resp.header.revision)

    async def _txn(
        self, compares: list[Any], success: list[Any]
    ) -> tuple[bool, int, list[Any]]:
        await self._ensure()
        req = rpc.TxnRequest(compare=compares, success=success, failure=[])
        resp = await self._unary("kv", "Txn", req, idempotent=False)
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
            resp = await self._unary("kv", "DeleteRange", req, idempotent=False)
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
        resp = await self._unary("lease", "LeaseGrant", req, idempotent=True)
        if resp.error:
            raise StoreError(f"etcd store {self.url}: lease grant failed: {resp.error}")
        return Lease(id=int(resp.ID), ttl=float(resp.TTL))

    async def keepalive(self, lease_id: int) -> float:
        await self._ensure()

        async def once(member: Member, timeout: float) -> Any:
            # LeaseKeepAlive is a stream; one request and one answer per renewal keeps no
            # stream state to repair after a reconnect.
            call = member.lease.LeaseKeepAlive(timeout=timeout)
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
            await self._unary("lease", "LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease_id), idempotent=True
            )
        except LeaseExpired:
            pass

    async def lease_ttl(self, lease_id: int) -> float | None:
        """Seconds the lease has left (whole seconds, as etcd counts), None if it is gone."""
        await self._ensure()
        req = rpc.LeaseTimeToLiveRequest(ID=lease_id)
        resp = await self._unary("lease", "LeaseTimeToLive", req, idempotent=True)
        return None if resp.TTL < 0 else float(resp.TTL)

    # -- history ------------------------------------------------------------------------
    async def compact(self, revision: int) -> None:
        """Forget history before `revision` (watches from below it get Compacted)."""
        await self._ensure()
        req = rpc.CompactionRequest(revision=revision, physical=False)
        try:
            await self._unary("kv", "Compact", req, idempotent=True)
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
            member = self._pick(set())
            call = member.watch.Watch(metadata=_HASLEADER)
            reader: asyncio.Future[Any] | None = None
            try:
                await asyncio.wait_for(call.write(rpc.WatchRequest(create_request=create)),
                                       WATCH_PROBE)
                probing = False
                while True:
                    if reader is None:
                        reader = asyncio.ensure_future(call.read())
                    done, _ = await asyncio.wait({reader}, timeout=WATCH_PROBE)
                    if not done:
                        if probing:  # no answer to a progress request: the member hangs
                            self._set_aside(member)
                            break
                        await asyncio.wait_for(call.write(rpc.WatchRequest(
                            progress_request=rpc.WatchProgressRequest())), WATCH_PROBE)
                        probing = True
                        continue
                    resp, reader, probing = reader.result(), None, False
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
                            self._set_aside(member)
                            break
                        raise StoreError(f"etcd store {self.url}: watch: {resp.cancel_reason}")
                    for ev in resp.events:
                        next_rev = ev.kv.mod_revision + 1
                        yield self._event(ev)
            except asyncio.CancelledError:
                if self._closed_under_us():
                    return
                raise
            except TimeoutError:
                self._set_aside(member)  # a write to the stream did not go through
            except asyncio.InvalidStateError:
                # grpc's answer to a write on a stream whose RPC already ended (the member
                # dropped it): open another one, as for an end of stream
                self._set_aside(member)
            except grpc.aio.AioRpcError as exc:
                if self._closed:
                    return
                if _code(exc) not in _UNREACHABLE and _code(exc) != grpc.StatusCode.CANCELLED:
                    raise self._error(exc) from exc
                self._set_aside(member)
            finally:
                if reader is not None:
                    reader.cancel()
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
        members, self._members = self._members, []
        for m in members:
            await m.channel.close()
