"""The store interface: the one small abstract class every backend implements.

Modelled on Patroni's `dcs` interface: a key-value store with global monotonic revisions,
leases, compare-and-swap and ordered watches. The failover agent, configuration tooling and the
MGS all talk to the cluster state only through this class, so the SQLite file (embedded
default) and etcd (real deployments) are interchangeable and pass one conformance suite.

Semantics (identical in every backend, pinned by tests/store/test_conformance.py):
- revisions are global and monotonic; every successful write (put, delete, lease expiry
  deleting keys) bumps the store revision; a key's `create_revision` is the revision at which
  the current incarnation of the key was created and serves as a fencing token;
- a key written with a lease vanishes (a DELETE event) when the lease expires or is revoked;
- `watch(prefix, start_revision)` yields every PUT and DELETE under the prefix with
  revision >= start_revision, in revision order, none missed; if the history from
  start_revision was compacted away, the watch raises `Compacted` so the caller re-reads;
- a store that cannot be reached raises `StoreUnreachable` (never returns "absent").
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass

from shoal.errors import StoreError, Unsupported


class Compacted(StoreError):
    """A watch asked for history the store no longer keeps; re-read state and watch again."""

    errno_name = "ESTALE"

    def __init__(self, message: str = "", *, compact_revision: int = 0) -> None:
        super().__init__(message or f"history compacted up to revision {compact_revision}")
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int  # number of writes since creation, 1 for a fresh key
    lease: int  # 0 when the key is not bound to a lease


class EventType(enum.Enum):
    PUT = "PUT"
    DELETE = "DELETE"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: EventType
    key: str
    value: bytes  # b"" for DELETE
    revision: int  # the store revision at which this change happened
    create_revision: int


@dataclass(frozen=True, slots=True)
class Lease:
    id: int
    ttl: float  # seconds


class Store(abc.ABC):
    """Async cluster-state store. All methods may raise StoreUnreachable."""

    url: str

    # -- reads -------------------------------------------------------------------------
    @abc.abstractmethod
    async def get(self, key: str) -> KeyValue | None:
        """The key's current value, or None if absent."""

    @abc.abstractmethod
    async def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key starting with prefix (sorted by key) and the store revision read at."""

    @abc.abstractmethod
    async def revision(self) -> int:
        """The current store revision."""

    # -- writes ------------------------------------------------------------------------
    @abc.abstractmethod
    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write unconditionally; returns the new revision."""

    @abc.abstractmethod
    async def create(self, key: str, value: bytes, *, lease: int = 0) -> int | None:
        """Write only if absent; returns the new revision, or None if the key exists."""

    @abc.abstractmethod
    async def compare_and_swap(
        self, key: str, value: bytes, *, mod_revision: int, lease: int = 0
    ) -> int | None:
        """Write only if the key's mod_revision equals `mod_revision` (0 = key must be absent).

        Returns the new revision, or None if the comparison failed."""

    @abc.abstractmethod
    async def delete(self, key: str, *, mod_revision: int | None = None) -> bool:
        """Delete (only if its mod_revision matches, when given); True if a key was deleted."""

    @abc.abstractmethod
    async def transaction(
        self,
        compares: list[tuple[str, int]],
        puts: list[tuple[str, bytes]],
        deletes: list[str],
    ) -> int | None:
        """All-or-nothing: if every (key, mod_revision) compare holds (0 = absent), apply the
        puts and deletes at one revision and return it; else change nothing and return None."""

    # -- leases ------------------------------------------------------------------------
    @abc.abstractmethod
    async def grant_lease(self, ttl: float) -> Lease:
        """A new lease that expires `ttl` seconds from now unless kept alive."""

    @abc.abstractmethod
    async def keepalive(self, lease_id: int) -> float:
        """Renew the lease for its full TTL; returns the TTL. Raises LeaseExpired if gone."""

    @abc.abstractmethod
    async def revoke_lease(self, lease_id: int) -> None:
        """Revoke the lease now, deleting its keys (no error if already gone)."""

    @abc.abstractmethod
    async def lease_ttl(self, lease_id: int) -> float | None:
        """Seconds the lease has left, truncated to whole seconds as etcd's LeaseTimeToLive
        counts them (so every store answers alike); None if it is gone."""

    # -- watches -----------------------------------------------------------------------
    @abc.abstractmethod
    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Events under prefix from start_revision on, in order, forever (until closed)."""

    # -- history (optional helper) -------------------------------------------------------
    async def compact(self, revision: int) -> None:
        """Forget the change history before `revision`: a watch starting below it raises
        Compacted. Backends compact on their own too; this is for tools and tests."""
        raise Unsupported(f"{type(self).__name__} cannot compact on request")

    # -- lifecycle ---------------------------------------------------------------------
    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; further calls are errors."""

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# Key layout shared by every part of Shoal (see DESIGN.md: Store layout).
ROOT = "/shoal"


def config_prefix(fs: str) -> str:
    return f"{ROOT}/config/{fs}/"


def node_alive_key(node: str) -> str:
    return f"{ROOT}/nodes/{node}/alive"


def target_key(target: str, leaf: str) -> str:
    """`leaf` is one of owner, state, location."""
    return f"{ROOT}/targets/{target}/{leaf}"


def settings_key(*parts: str) -> str:
    return "/".join((f"{ROOT}/settings", *parts))


def event_key(seq: int) -> str:
    return f"{ROOT}/events/{seq:020d}"
