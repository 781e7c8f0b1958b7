"""The cluster-state store: one interface (base.Store), two backends.

`open_store(url)` picks the backend from the URL:
- `sqlite:///abs/path.db`, or a bare file path: SQLiteStore, the embedded default;
- `etcd://host:port[,host:port...]`: EtcdStore, for real deployments.
Options go in the query string: `?timeout=2` (etcd: seconds per call before
StoreUnreachable), `?history=10000` (sqlite: revisions of watch history kept).

A store object belongs to the event loop that first uses it; another thread with its own
loop opens its own store on the same URL (see each backend's docstring).
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from shoal.errors import ConfigError
from shoal.store.base import (
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


def _options(url: str, query: str, allowed: set[str]) -> dict[str, float]:
    opts: dict[str, float] = {}
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if name not in allowed:
            raise ConfigError(f"store URL {url!r}: unknown option {name!r} (known: {sorted(allowed)})")
        try:
            opts[name] = float(value)
        except ValueError:
            raise ConfigError(f"store URL {url!r}: option {name} needs a number, not {value!r}") from None
        if not opts[name] > 0:
            raise ConfigError(f"store URL {url!r}: option {name} must be positive")
    return opts


def open_store(url: str) -> Store:
    """The store a URL names (not yet connected: the first call connects).

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
    if scheme == "etcd":
        from shoal.store.etcd import EtcdStore, parse_endpoints

        try:
            endpoints = parse_endpoints(body)
        except ValueError as exc:
            raise ConfigError(f"store URL {url!r}: {exc}") from None
        opts = _options(url, query, {"timeout"})
        return EtcdStore(endpoints, timeout=opts.get("timeout", 2.0))
    raise ConfigError(
        f"store URL {url!r}: unknown scheme {scheme!r}; use sqlite:///abs/path.db, "
        "a file path, or etcd://host:port[,host:port...]"
    )
