"""The cluster-state store: one interface (base.Store), two backends.

`open_store(url)` picks the backend from the URL:
- `sqlite:///abs/path.db`, or a bare file path: SQLiteStore, the embedded default;
- `etcd://host:port[,host:port...]`: EtcdStore, for real deployments;
- `etcds://host:port[,...]?ca=/etc/shoal/etcd-ca.pem&cert=...&key=...&server_name=NAME`:
  the same over TLS with a client certificate (store/etcd.py says why several members need
  server_name).
Options go in the query string: `?timeout=2` (etcd: seconds per call before
StoreUnreachable), `?history=10000` (sqlite: revisions of watch history kept).

A store object belongs to the event loop that first uses it; another thread with its own
loop opens its own store on the same URL (see each backend's docstring).
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Any

from shoal.errors import ConfigError

# Before gRPC is loaded (store/etcd.py): its fork handlers run in every forked child, and a
# daemon forks while its etcd calls are under way (a fence agent, a mount helper); a child
# of the rig's daemon crashed in them ("Check failed: next_worker->state == KICKED") before
# it could exec the fence agent. Shoal's children all exec at once, which is the case gRPC's
# documentation says to turn the handlers off for.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from shoal.store.base import (  # noqa: E402
    Compacted,
    EventType,
    KeyValue,
    Lease,
    Store,
    WatchEvent,
)

__all__ = [
    "Compacted",
    "EventType",
    "KeyValue",
    "Lease",
    "Store",
    "WatchEvent",
    "open_store",
]


_TEXT_OPTIONS = {"ca", "cert", "key", "server_name"}


def _options(url: str, query: str, allowed: set[str]) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if name not in allowed:
            raise ConfigError(f"store URL {url!r}: unknown option {name!r} "
                              f"(known: {sorted(allowed)})")
        if name in _TEXT_OPTIONS:
            if name != "server_name" and not value.startswith("/"):
                raise ConfigError(f"store URL {url!r}: {name}= needs an absolute path")
            opts[name] = value
            continue
        try:
            opts[name] = float(value)
        except ValueError:
            raise ConfigError(f"store URL {url!r}: option {name} needs a number, not {value!r}") from None
        if not opts[name] > 0:
            raise ConfigError(f"store URL {url!r}: option {name} must be positive")
    return opts


def open_store(url: str, *, timeout: float | None = None) -> Store:
    """The store a URL names (not yet connected: the first call connects). `timeout`: the
    deadline of each call (etcd), instead of the URL's or the default; the lease heartbeat
    gives its store its renewal period, so that a member that hangs is passed over in time.

    Raises ConfigError for a URL it cannot use, with the reason."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigError("store URL is empty: use sqlite:///abs/path.db or etcd://host:port")
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if not sep:
        if ":" in url.split("/", 1)[0] and not url.startswith((".", "/")):
            raise ConfigError(
                f"store URL {url!r}: unknown form; use sqlite:///abs/path.db, a file path, "
                "or etcd://host:port[,host:port...]"
            )
        from shoal.store.sqlite import SQLiteStore

        return SQLiteStore(Path(url).expanduser().absolute())
    body, _, query = rest.partition("?")
    if scheme == "sqlite":
        if not body.startswith("/"):
            raise ConfigError(
                f"store URL {url!r}: sqlite needs an absolute path, as in sqlite:///abs/path.db"
            )
        opts = _options(url, query, {"history"})
        from shoal.store.sqlite import SQLiteStore

        return SQLiteStore(Path(body), history_revisions=int(opts.get("history", 10_000)))
    if scheme in ("etcd", "etcds"):
        from shoal.store.etcd import EtcdStore
        from shoal.store.etcd_member import EtcdTLS, parse_endpoints

        try:
            endpoints = parse_endpoints(body)
        except ValueError as exc:
            raise ConfigError(f"store URL {url!r}: {exc}") from None
        if scheme == "etcd":
            opts = _options(url, query, {"timeout"})
            return EtcdStore(endpoints, timeout=timeout or opts.get("timeout", 2.0))
        opts = _options(url, query, {"timeout"} | _TEXT_OPTIONS)
        if "ca" not in opts:
            raise ConfigError(f"store URL {url!r}: etcds:// needs ca=/path/to/ca.pem (the CA "
                              "that signed the members' certificates)")
        try:
            tls = EtcdTLS(Path(opts["ca"]), Path(opts["cert"]) if "cert" in opts else None,
                          Path(opts["key"]) if "key" in opts else None,
                          opts.get("server_name", ""))
            return EtcdStore(endpoints, timeout=timeout or opts.get("timeout", 2.0), tls=tls)
        except ConfigError as exc:
            raise ConfigError(f"store URL {url!r}: {exc}") from None
    raise ConfigError(
        f"store URL {url!r}: unknown scheme {scheme!r}; use sqlite:///abs/path.db, "
        "a file path, etcd://host:port[,host:port...] or etcds://...?ca=..."
    )
