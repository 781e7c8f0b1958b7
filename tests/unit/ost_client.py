"""An in-process OST client for unit tests: requests go straight to OST.handle, as the node's
RPC server sends them."""

from __future__ import annotations

from typing import Any

from shoal.protocol import messages as m
from shoal.target.ost import OST

NAME = "scratch-OST0000"


class Client:
    """Sends requests straight to OST.handle, as the node's RPC server does."""

    def __init__(self, ost: OST, uuid: str = "client-1") -> None:
        self.ost = ost
        self.uuid = uuid
        self.xid = 0

    def call(self, op: str, args: dict[str, Any], bulk: bytes | None = None, *,
             xid: int | None = None, flags: int = 0) -> m.Reply:
        if xid is None:
            self.xid += 1
            xid = self.xid
        reply, _ = self.ost.handle(self.uuid, m.Request(xid, op, NAME, args, flags, bulk=bulk))
        return reply

    def write(self, oid: int, offset: int, data: bytes, **kw: Any) -> m.Reply:
        args = {"oid": oid, "offset": offset}
        return self.call("write", args, data, **kw)

    def read(self, oid: int, offset: int = 0, length: int = 1 << 20) -> bytes:
        r = self.call("read", {"oid": oid, "offset": offset, "length": length})
        assert r.status is None, r.message
        assert r.bulk is not None
        return r.bulk

    def getattr(self, oid: int) -> dict[str, int]:
        r = self.call("getattr", {"oid": oid})
        assert r.status is None, r.message
        return r.data
