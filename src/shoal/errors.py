"""One exception hierarchy for all of Shoal, named by errno.

Errors travel over the wire as errno names ("ENOENT"); `from_errno_name` turns a name back
into the matching exception class so a client raises what the server raised. This module is a
leaf: it imports nothing of Shoal's, so every layer (protocol/ included) may use it.
"""

from __future__ import annotations

import errno as _errno


class ShoalError(Exception):
    """Base of every Shoal error. `errno_name` is what travels on the wire."""

    errno_name: str = "EIO"

    def __init__(self, message: str = "", *, errno_name: str | None = None) -> None:
        if errno_name is not None:
            self.errno_name = errno_name
        # what the server's error reply carried besides (a lookup's ENOENT may carry the
        # lock it keeps the absence under)
        self.reply_data: dict[str, object] = {}
        super().__init__(message or self.errno_name)

    @property
    def errno(self) -> int:
        return getattr(_errno, self.errno_name, _errno.EIO)

    def to_oserror(self) -> OSError:
        return OSError(self.errno, str(self))


class NotFound(ShoalError):
    errno_name = "ENOENT"


class Exists(ShoalError):
    errno_name = "EEXIST"


class NotADirectory(ShoalError):
    errno_name = "ENOTDIR"


class IsADirectory(ShoalError):
    errno_name = "EISDIR"


class NotEmpty(ShoalError):
    errno_name = "ENOTEMPTY"


class InvalidArgument(ShoalError):
    errno_name = "EINVAL"


class IllegalByteSequence(ShoalError):
    """A name or path that is not valid UTF-8 (the MDT keeps names as UTF-8 text)."""

    errno_name = "EILSEQ"


class NameTooLong(ShoalError):
    errno_name = "ENAMETOOLONG"


class NotPermitted(ShoalError):
    errno_name = "EPERM"


class TooManyLinks(ShoalError):
    """ELOOP: too many symbolic links in a path walk."""

    errno_name = "ELOOP"


class BadFileHandle(ShoalError):
    """EBADF: an open handle the server does not know (closed, or another client's)."""

    errno_name = "EBADF"


class PermissionDenied(ShoalError):
    errno_name = "EACCES"


class Busy(ShoalError):
    """EBUSY: e.g. a recovering target refusing an unknown client."""

    errno_name = "EBUSY"


class NoSpace(ShoalError):
    errno_name = "ENOSPC"


class QuotaExceeded(ShoalError):
    """A user, group or project is at its hard limit, or past its soft one with the
    grace period over."""

    errno_name = "EDQUOT"


class IOFailure(ShoalError):
    errno_name = "EIO"


class TimedOut(ShoalError):
    errno_name = "ETIMEDOUT"


class NotConnected(ShoalError):
    errno_name = "ENOTCONN"


class Refused(NotConnected):
    """The host answered that nothing listens on the port: its daemon is not running."""

    errno_name = "ECONNREFUSED"


class Evicted(ShoalError):
    """The target dropped this client's state (VBR failure, recovery window expired, admin):
    its calls on that target fail and it must reconnect as a new client (Lustre: -EIO to the
    application, ESHUTDOWN on the wire)."""

    errno_name = "ESHUTDOWN"


class ProtocolError(ShoalError):
    """A malformed, forged or oversized frame; the connection is closed."""

    errno_name = "EPROTO"


class BadMessage(ProtocolError):
    errno_name = "EBADMSG"


class AuthFailure(ProtocolError):
    """HMAC mismatch: the frame was not made with the cluster key."""

    errno_name = "EBADMSG"


class FrameTooLarge(ProtocolError):
    errno_name = "EMSGSIZE"


class NoDevice(ShoalError):
    """ENODEV: the target is not served here (wrong node, stopped, failed over)."""

    errno_name = "ENODEV"


class Stale(ShoalError):
    """ESTALE: a handle or fencing token that is no longer valid."""

    errno_name = "ESTALE"


class VersionMismatch(ShoalError):
    """VBR: a replay's pre-operation versions do not match (Lustre returns EOVERFLOW)."""

    errno_name = "EOVERFLOW"


class Unsupported(ShoalError):
    errno_name = "EOPNOTSUPP"


class CrossDevice(ShoalError):
    """Across file systems; or a link or rename into a directory of another project (ext4
    and Lustre refuse it too: the project's usage would not follow)."""

    errno_name = "EXDEV"


class NoData(ShoalError):
    """No such extended attribute (Linux's ENODATA, ENOATTR elsewhere)."""

    errno_name = "ENODATA"


class OutOfRange(ShoalError):
    """A name or list longer than the caller's buffer or the limit (ERANGE)."""

    errno_name = "ERANGE"


class TooBig(ShoalError):
    errno_name = "E2BIG"


class ConfigError(ShoalError):
    """Bad configuration; the message reads `file:line: reason`."""

    errno_name = "EINVAL"


class StoreError(ShoalError):
    errno_name = "EIO"


class StoreUnreachable(StoreError):
    """The store cannot be reached; distinct from a key being absent."""

    errno_name = "EHOSTUNREACH"


class CompareFailed(StoreError):
    """A compare-and-swap lost the race: re-read and retry."""

    errno_name = "EAGAIN"


class LeaseExpired(StoreError):
    errno_name = "ETIME"


_BY_NAME: dict[str, type[ShoalError]] = {}
for _cls in list(globals().values()):
    if isinstance(_cls, type) and issubclass(_cls, ShoalError):
        # first definition wins, so the most general class owns a shared errno name
        _BY_NAME.setdefault(_cls.errno_name, _cls)


def from_errno_name(name: str, message: str = "") -> ShoalError:
    """The exception for a wire errno name; unknown names keep their name on a ShoalError."""
    cls = _BY_NAME.get(name, ShoalError)
    return cls(message or name, errno_name=name)


def from_oserror(exc: OSError) -> ShoalError:
    name = _errno.errorcode.get(exc.errno or _errno.EIO, "EIO")
    return from_errno_name(name, str(exc))
