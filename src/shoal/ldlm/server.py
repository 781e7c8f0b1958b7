"""A target's lock manager: protocol/ldlm.py's rules on an event loop.

The rules decide; this carries their actions out: an enqueue waits (a future) until its lock
is granted, a blocking callback goes to the holder through `send_callback` (the node sends it
as a Notice over the client's own connection), and a holder that sits on a called-back lock
past the timeout is evicted through `evict` (the node drops its export; every lock it held
goes, and the locks waiting behind them are granted).

The target itself takes locks too, for the moment an operation changes what clients cache
(`held`): a setattr takes EX on the inode's UPDATE bit, which calls back every client that
cached the attributes, and runs once they have let go. The target never sits on a lock, so
a callback to it needs no answer: its lock goes when its operation ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from shoal.errors import Evicted, TimedOut
from shoal.protocol.ldlm import (
    CALLBACK_TIMEOUT,
    Action,
    CallBack,
    EvictHolder,
    Granted,
    Lock,
    LockSpace,
    Mode,
    Policy,
    Resource,
    conflicts,
    meets,
)

log = logging.getLogger(__name__)

SELF = "@target"  # the holder name of the target's own locks (no client uuid looks like it)


class LockManager:
    def __init__(self, target: str, *, send_callback: Callable[[Lock, Lock], None],
                 evict: Callable[[str, str], None],
                 callback_timeout: float = CALLBACK_TIMEOUT, first_handle: int = 1) -> None:
        self.target = target
        self.space = LockSpace(callback_timeout, first_handle=first_handle)
        self.send_callback = send_callback  # (lock called back, the lock that waits for it)
        self.evict = evict  # (client, reason)
        self._loop = asyncio.get_running_loop()
        self._waiting: dict[int, asyncio.Future[Lock]] = {}
        self._timer: asyncio.TimerHandle | None = None
        # the target's own locks taken for a client's request (revoke): that client, whose
        # own locks they call back (it need not wait for anything its own request holds)
        self._cause: dict[int, str] = {}

    # -- clients -----------------------------------------------------------------------------
    async def enqueue(self, client: str, resource: Resource, mode: Mode, policy: Policy,
                      *, timeout: float, cause: str | None = None) -> Lock:
        """The lock, once granted; TimedOut (and the request withdrawn) after `timeout`.
        `cause`: the client whose request the target takes it for (`cause_of`)."""
        lock, actions = self.space.enqueue(client, resource, mode, policy, self._loop.time())
        if cause is not None:
            self._cause[lock.handle] = cause
        fut: asyncio.Future[Lock] = self._loop.create_future()
        self._waiting[lock.handle] = fut
        self._run(actions)
        if fut.done():  # granted at once, as most are: no timer, no task
            del self._waiting[lock.handle]
            return fut.result()
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            self.cancel(lock.handle)
            raise TimedOut(f"{self.target}: lock on {resource!r} not granted in "
                           f"{timeout:g}s") from None
        except asyncio.CancelledError:
            self.cancel(lock.handle)  # the caller went away: its lock must not stay
            raise
        finally:
            self._waiting.pop(lock.handle, None)

    def try_enqueue(self, client: str, resource: Resource, mode: Mode,
                    policy: Policy) -> Lock | None:
        """A lock granted at once, or None: nothing waits, nobody is called back."""
        granted, waiting = self.space.queue(resource)
        if any(conflicts(lk.mode, lk.policy, mode, policy) for lk in (*granted, *waiting)):
            return None
        lock, actions = self.space.enqueue(client, resource, mode, policy, self._loop.time())
        self._run(actions)
        return lock

    def cancel(self, handle: int, client: str | None = None) -> bool:
        """Cancel a lock (only `client`'s, if given); False if there is no such lock."""
        lock = self.space.locks.get(handle)
        if lock is None or (client is not None and lock.client != client):
            return False
        self._cause.pop(handle, None)
        self._run(self.space.cancel(handle, self._loop.time()))
        return True

    def client_gone(self, client: str) -> None:
        """The client was evicted: its locks go, and what waited behind them is granted."""
        fail = [h for h, lk in self.space.locks.items() if lk.client == client]
        self._run(self.space.client_gone(client, self._loop.time()))
        for handle in fail:
            fut = self._waiting.get(handle)
            if fut is not None and not fut.done():
                fut.set_exception(Evicted(f"{self.target}: {client} was evicted"))

    # -- the target's own locks --------------------------------------------------------------
    @asynccontextmanager
    async def held(self, resource: Resource, mode: Mode, policy: Policy, *,
                   timeout: float) -> AsyncIterator[Lock]:
        """Hold a lock while the target changes what it covers."""
        lock = await self.enqueue(SELF, resource, mode, policy, timeout=timeout)
        try:
            yield lock
        finally:
            self.cancel(lock.handle)

    def busy(self, resource: Resource, policy: Policy | None = None) -> bool:
        """Whether any lock, granted or waiting, is on `resource` (that `policy`'s bits or
        bytes would meet: a change to a directory's entries need not call back the LOOKUP
        locks on it)."""
        granted, waiting = self.space.queue(resource)
        if policy is None:
            return bool(granted or waiting)
        return any(meets(lk.policy, policy) for lk in (*granted, *waiting))

    async def revoke(self, resources: list[Resource], policy: Policy, *,
                     timeout: float, cause: str | None = None) -> None:
        """Call back every lock on `resources` that meets `policy`, and wait until they are
        gone (cancelled, or their holders evicted): the target changed what they cover, for
        a request of client `cause` if given."""
        got = await asyncio.gather(
            *(self.enqueue(SELF, r, Mode.EX, policy, timeout=timeout, cause=cause)
              for r in resources),
            return_exceptions=True)
        for lock in got:
            if isinstance(lock, Lock):
                self.cancel(lock.handle)
        for exc in got:
            if isinstance(exc, BaseException):
                raise exc

    def cause_of(self, handle: int) -> str | None:
        """The client a target's own lock `handle` was taken for, if any."""
        return self._cause.get(handle)

    # -- internals ---------------------------------------------------------------------------
    def _run(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Granted):
                fut = self._waiting.get(a.lock.handle)
                if fut is not None and not fut.done():
                    fut.set_result(a.lock)
            elif isinstance(a, CallBack):
                if a.lock.client != SELF:
                    self.send_callback(a.lock, a.by)
            elif isinstance(a, EvictHolder):
                if a.client == SELF:
                    continue  # the target's own lock goes when its operation ends
                log.warning("%s: evicting %s: %s", self.target, a.client, a.reason)
                self.evict(a.client, a.reason)
                self.client_gone(a.client)
        self._arm()

    def _arm(self) -> None:
        at = self.space.next_deadline()
        if self._timer is not None and (at is None or self._timer.when() != at):
            self._timer.cancel()
            self._timer = None
        if at is not None and self._timer is None:
            self._timer = self._loop.call_at(at, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._run(self.space.tick(self._loop.time()))

    def close(self) -> None:
        """The target stops: every waiter fails, no timer stays behind."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(Evicted(f"{self.target}: the lock manager stopped"))

