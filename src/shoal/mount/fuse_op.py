"""How a FUSE request's failure reaches the program: a Shoal error as its errno, transport and
recovery failures (eviction, protocol errors, a target gone) as EIO, as Lustre reports them;
any other exception is a bug, logged, and EIO too. The mount stays up whatever happens."""

from __future__ import annotations

import errno
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from pyfuse3 import FUSEError

from shoal.errors import ShoalError

log = logging.getLogger("shoal.mount.fs")

# failures of the machinery, not of the request: the program sees EIO
_AS_EIO = frozenset({"ESHUTDOWN", "EPROTO", "EBADMSG", "EMSGSIZE", "EOVERFLOW", "ENOTCONN",
                     "ENODEV", "EHOSTUNREACH", "ESTALE"})

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def errno_of(exc: ShoalError) -> int:
    return errno.EIO if exc.errno_name in _AS_EIO else exc.errno


def fuse_op(fn: F) -> F:
    """Turn every failure of a request into an errno reply; never let one end the mount.
    Counts the request in `self.requests` and its time in `self.request_seconds` (Counters by
    operation: the mount's metrics)."""

    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Any, *args: Any) -> Any:
        self.requests[name] += 1
        start = time.monotonic()
        try:
            return await fn(self, *args)
        except FUSEError:
            raise
        except ShoalError as exc:
            log.debug("%s: %s", fn.__name__, exc)
            raise FUSEError(errno_of(exc)) from None
        except OSError as exc:
            raise FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("%s failed", fn.__name__)
            raise FUSEError(errno.EIO) from None
        finally:
            self.request_seconds[name] += time.monotonic() - start

    return cast(F, wrapper)
