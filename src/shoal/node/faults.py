"""A node's fail point (`shoal ctl set_param fail_loc=...`), carried out around its RPCs.

protocol/fail_loc.py decides; this module sits between the RPC server and the node's
request handler (NodeServer wraps its handler with `wrap()`), so a dropped request is never
served and a dropped reply is served and then never sent: to the client both look like a
request lost on the wire, which it must resend (and the target must not do twice). The
commit barrier (code NO_COMMIT) is applied to the matching targets the moment it is set and
lifted when fail_loc changes; while it holds, their uncommitted tail only lives in memory,
and a crash loses it, exactly what replay must restore.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping

from shoal.net.server import ServerConnection
from shoal.protocol import messages as m
from shoal.protocol.fail_loc import PARAMS, Code, FailPoint, Site, Verdict, request_target
from shoal.target.base import TargetService

log = logging.getLogger(__name__)

Handler = Callable[[ServerConnection, m.Request], Awaitable[m.Reply | None]]


class NodeFaults:
    """The fail point of one node process."""

    def __init__(self, node: str, services: Mapping[str, TargetService],
                 draw: Callable[[], float] = random.random) -> None:
        self.node = node
        self.services = services
        self.point = FailPoint()
        self._draw = draw
        # the services whose no_commit this point has set (by object: a target stopped and
        # started again on this node is a new service, not barred yet)
        self._barred: dict[str, TargetService] = {}

    # -- set_param / get_param -----------------------------------------------------------
    def set_param(self, name: str, value: str) -> list[str]:
        """Apply `name=value` if it is a fail point setting; the names set ([] if not)."""
        if name not in PARAMS:
            return []
        self.point.set(name, value)
        if name == "fail_loc":  # the moment it takes effect; its settings come before it
            log.warning("%s: fail point: %s", self.node, self.point.describe())
        self.apply_barrier()
        return [name]

    def params(self) -> dict[str, Callable[[], str]]:
        """Lustre's top-level `fail_loc` and `fail_val`, and Shoal's other settings."""
        return {name: (lambda n=name: self.point.params()[n])
                for name in (*PARAMS, "fail_hits")}

    def apply_barrier(self) -> None:
        """Bar (or free) every served target from committing, as the point now says."""
        for name, svc in self.services.items():
            held = self.point.barrier(name)
            mine = self._barred.get(name) is svc
            if held and not mine:
                svc.no_commit = True
                self._barred[name] = svc
                self.point.hits += 1
                log.warning("%s: commit barrier: %s stops committing at %#x", self.node,
                            name, svc.last_committed)
            elif not held and mine:
                svc.no_commit = False
                del self._barred[name]
                svc.request_commit()  # what piled up behind the barrier goes to disk now
                log.warning("%s: commit barrier lifted on %s", self.node, name)
        for name in [n for n, svc in self._barred.items() if self.services.get(n) is not svc]:
            del self._barred[name]  # stopped: not ours to free any more

    # -- the RPC path --------------------------------------------------------------------
    def wrap(self, handler: Handler) -> Handler:
        """The node's request handler with this fail point in front of it."""

        async def handle(conn: ServerConnection, req: m.Request) -> m.Reply | None:
            point = self.point
            if not point.active:
                return await handler(conn, req)
            if point.code is Code.NO_COMMIT:
                svc = self.services.get(req.target)
                if svc is not None and self._barred.get(req.target) is not svc:
                    self.apply_barrier()  # a target started since the barrier was set
                return await handler(conn, req)
            target = request_target(req.op, req.target, req.args)
            if target is None:
                return await handler(conn, req)
            if not await self._apply(Site.REQUEST, conn, req, target):
                return None  # lost on the way in: never served
            reply = await handler(conn, req)
            if reply is not None and not await self._apply(Site.REPLY, conn, req, target):
                return None  # served, and its answer lost on the way out
            return reply

        return handle

    async def _apply(self, site: Site, conn: ServerConnection, req: m.Request,
                     target: str) -> bool:
        """Check the point where `req` (or its reply) passes; False if it is dropped."""
        d = self.point.check(site, req.op, target, self._draw())
        if d.passes:
            return True
        what = f"{site.value} {req.op} xid {req.xid} to {target} from {conn.client_uuid}"
        if d.verdict is Verdict.DROP:
            log.warning("%s: fail_loc %#x: dropped the %s", self.node, self.point.loc, what)
            return False
        log.warning("%s: fail_loc %#x: delaying the %s by %.3fs", self.node, self.point.loc,
                    what, d.delay)
        await asyncio.sleep(d.delay)
        return True
