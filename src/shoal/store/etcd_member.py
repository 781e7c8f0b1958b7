"""One etcd member as the store client sees it: its gRPC channel and stubs, and how it is
reached (TLS or not); the URL's member list. store/etcd.py decides which member to ask."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from aetcd import rpc

from shoal.errors import ConfigError

__all__ = ["EtcdTLS", "Member", "parse_endpoints"]

_CHANNEL_OPTIONS = [
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


@dataclass(eq=False)
class Member:
    """One etcd member: its channel and stubs, and until when it is set aside."""

    address: str
    channel: grpc.aio.Channel
    kv: Any
    lease: Any
    watch: Any
    bad_until: float = 0.0

    @classmethod
    def connect(cls, address: str, tls: EtcdTLS | None) -> Member:
        """The member at `address` (its channel connects on the first call)."""
        if tls is None:
            channel = grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
        else:
            options = list(_CHANNEL_OPTIONS)
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            channel = grpc.aio.secure_channel(address, tls.credentials(), options=options)
        return cls(address, channel, rpc.KVStub(channel), rpc.LeaseStub(channel),
                   rpc.WatchStub(channel))
