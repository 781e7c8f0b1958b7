"""An in-process MDT client for unit tests: requests go straight to MDT.handle, as the node's
RPC server sends them. A client's xids only grow, across server restarts too (pass `xid` to
continue a sequence): a reused xid is a resend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shoal.protocol import messages as m
from shoal.target.mdt import MDT

NAME = "scratch-MDT0000"


def open_mdt(device: Path, *, create: bool = True) -> MDT:
    """MDT0000 of "scratch" on `device`, committing only when a test says so."""
    t = MDT(NAME, device, fs="scratch", ost_count=4, commit_interval=3600)
    t.open(create=create)
    return t


class Client:
    def __init__(self, mdt: MDT, uuid: str = "client-1", xid: int = 0) -> None:
        self.mdt = mdt
        self.uuid = uuid
        self.xid = xid

    def req(self, op: str, args: dict[str, Any], *, xid: int | None = None, flags: int = 0,
            transno: int = 0) -> m.Reply:
        if xid is None:
            self.xid += 1
            xid = self.xid
        reply, _ = self.mdt.handle(self.uuid,
                                   m.Request(xid, op, self.mdt.name, args, flags, transno))
        return reply

    def __call__(self, op: str, **args: Any) -> dict[str, Any]:
        r = self.req(op, args)
        assert r.status is None, f"{op} {args}: {r.status} {r.message}"
        return r.data

    def err(self, op: str, **args: Any) -> str:
        r = self.req(op, args)
        assert r.status is not None, f"{op} {args} succeeded: {r.data}"
        return r.status
