"""TLS on Shoal's RPC (RPC_TLS=yes): privacy on top of the HMAC, which stays.

The HMAC already proves that a frame comes from a holder of the cluster key; TLS adds that
nobody on the wire reads file data or the namespace. Nodes present TLS_CERT/TLS_KEY, a
certificate valid for the address they are reached at (nodes are addressed by IP); every
connecting process (clients, mounts, administrators, other nodes) verifies it against TLS_CA.
Client certificates are not asked for: the key is the proof of membership.

A node upgrades an accepted connection itself (loop.start_tls) instead of passing `ssl=` to
create_server, so that a connection is counted and bounded (ConnectionLimits) from the moment
it is accepted, not only once its handshake is done: 20,000 half-open handshakes must not hold
20,000 descriptors that the limits never see.
"""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shoal.config.settings import value
from shoal.errors import ConfigError


@dataclass(frozen=True)
class RpcTLS:
    """What a process needs for TLS on RPC: `client` to connect (verifies nodes), `server`
    to accept (a node's own certificate; None in a process that serves nothing)."""

    client: ssl.SSLContext
    server: ssl.SSLContext | None = None


def _readable(setting: str, path: str) -> str:
    if not path:
        raise ConfigError(f"RPC_TLS is on but {setting} is not set")
    if not os.access(path, os.R_OK):
        why = "no such file" if not os.path.exists(path) else "not readable"
        raise ConfigError(f"{setting}={path}: {why}")
    return path


@functools.lru_cache(maxsize=8)
def _client_context(ca: str, _mtime: float) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


@functools.lru_cache(maxsize=8)
def _server_context(cert: str, key: str, _mtime: float) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def rpc_tls(settings: Mapping[str, Any], *, serve: bool = False) -> RpcTLS | None:
    """The TLS contexts the settings ask for (None with RPC_TLS off); ConfigError naming the
    setting when a file is missing or does not load."""
    if not value(settings, "RPC_TLS"):
        return None
    ca = _readable("TLS_CA", str(settings.get("TLS_CA") or ""))
    try:
        client = _client_context(ca, os.stat(ca).st_mtime)
    except ssl.SSLError as exc:
        raise ConfigError(f"TLS_CA={ca}: not a CA certificate ({exc.reason or exc})") from None
    if not serve:
        return RpcTLS(client)
    cert = _readable("TLS_CERT", str(settings.get("TLS_CERT") or ""))
    key = _readable("TLS_KEY", str(settings.get("TLS_KEY") or ""))
    try:
        server = _server_context(cert, key, max(os.stat(cert).st_mtime, os.stat(key).st_mtime))
    except ssl.SSLError as exc:
        raise ConfigError(f"TLS_CERT={cert}, TLS_KEY={key}: {exc.reason or exc}") from None
    return RpcTLS(client, server)


def client_context(settings: Mapping[str, Any]) -> ssl.SSLContext | None:
    tls = rpc_tls(settings)
    return tls.client if tls is not None else None
