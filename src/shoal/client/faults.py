"""A client's fail point: the same codes as a node's (protocol/fail_loc.py), on the client.

Each Client has its own point (as each Lustre client node has its own fail_loc), read from
the environment when the client starts, so `shoal load` workers and `shoal mount` can be
given one without a code change:

    SHOAL_FAIL_LOC=0x80000506 SHOAL_FAIL_OPC=write shoal load ...   # every client loses
                                                                    # one write reply
Variables: SHOAL_FAIL_LOC, SHOAL_FAIL_VAL, SHOAL_FAIL_OPC, SHOAL_FAIL_TARGET, SHOAL_FAIL_MS
(the node's fail_loc, fail_val, ...). A program sets one at run time with
`faults_for(client).set("fail_loc", "0x505")`.

The imports send every RPC through `ClientFaults.call` (connects, requests, replays, final
pings). A dropped request is never sent and a dropped reply is thrown away on arrival; either
way the call then waits as it would for an answer that never comes (its timeout, or the
connection closing) and fails the same way, so the import's own resend path runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from shoal.errors import NotConnected, TimedOut
from shoal.protocol import messages as m
from shoal.protocol.fail_loc import PARAMS, FailPoint, Site, Verdict, request_target

if TYPE_CHECKING:
    from shoal.client.session import ClientSession
    from shoal.net.client import RpcConnection

log = logging.getLogger(__name__)

ENV = {name: "SHOAL_" + name.upper() for name in PARAMS}  # fail_loc -> SHOAL_FAIL_LOC


class ClientFaults:
    """The fail point of one client, applied around each of its RPCs."""

    def __init__(self, name: str = "", draw: Callable[[], float] = random.random) -> None:
        self.name = name
        self.point = FailPoint()
        self._draw = draw

    @classmethod
    def from_env(cls, name: str = "", environ: Mapping[str, str] | None = None
                 ) -> ClientFaults:
        """A point set from SHOAL_FAIL_* (InvalidArgument if one is malformed)."""
        env = os.environ if environ is None else environ
        faults = cls(name)
        # fail_loc last: the point must not fire before its filters are in place
        for param in (*PARAMS[1:], PARAMS[0]):
            value = env.get(ENV[param])
            if value:
                faults.point.set(param, value)
        if faults.point.active:
            log.warning("%s: fail point from the environment: %s", name,
                        faults.point.describe())
        return faults

    def set(self, name: str, value: str) -> None:
        self.point.set(name, value)

    def params(self) -> dict[str, str]:
        return self.point.params()

    async def call(self, conn: RpcConnection, req: m.Request, timeout: float) -> m.Reply:
        """conn.call(req, timeout), with this client's fail point applied."""
        if not self.point.active:
            return await conn.call(req, timeout)
        target = request_target(req.op, req.target, req.args)
        if target is None:
            return await conn.call(req, timeout)
        started = time.monotonic()
        if not await self._apply(Site.REQUEST, req, target):
            await self._never_answered(conn, req, timeout)
        reply = await conn.call(req, timeout)
        if not await self._apply(Site.REPLY, req, target):
            await self._never_answered(conn, req, timeout - (time.monotonic() - started))
        return reply

    async def _apply(self, site: Site, req: m.Request, target: str) -> bool:
        d = self.point.check(site, req.op, target, self._draw())
        if d.passes:
            return True
        what = f"{site.value} {req.op} xid {req.xid} to {target}"
        if d.verdict is Verdict.DROP:
            log.warning("%s: fail_loc %#x: dropped the %s", self.name, self.point.loc, what)
            return False
        log.warning("%s: fail_loc %#x: delaying the %s by %.3fs", self.name, self.point.loc,
                    what, d.delay)
        await asyncio.sleep(d.delay)
        return True

    @staticmethod
    async def _never_answered(conn: RpcConnection, req: m.Request, timeout: float) -> None:
        """Wait as conn.call does for a reply that will not come, and fail as it would."""
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                await conn.wait_closed()
        except TimeoutError:
            raise TimedOut(f"{req.op} to {req.target} via {conn.peer}: no reply "
                           "(fail_loc)") from None
        raise NotConnected(f"connection to {conn.peer} lost")


_by_client: weakref.WeakKeyDictionary[ClientSession, ClientFaults] = weakref.WeakKeyDictionary()


def faults_for(client: ClientSession) -> ClientFaults:
    """The client's fail point, read from the environment the first time it is asked for
    (its first import is made when the client is created)."""
    faults = _by_client.get(client)
    if faults is None:
        faults = _by_client[client] = ClientFaults.from_env(client.uuid)
    return faults
