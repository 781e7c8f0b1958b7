"""Message schema: what requests, replies and notices carry, and how they become bytes.

Pure data and pure functions: no sockets, no clocks. The frame layout (length prefix, HMAC)
lives in net/frame.py; this module only turns the message records into the msgpack "meta"
part of a frame and back. Bulk data travels beside the meta, never inside it, so a 4 MiB write
is not copied through msgpack.

Every message is a msgpack array whose first element is its kind, so a reader can dispatch
without a dict lookup and a truncated or foreign array is rejected with BadMessage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from shoal.errors import BadMessage, IllegalByteSequence

KIND_REQUEST = 0
KIND_REPLY = 1
KIND_NOTICE = 2  # server push: IR location change, eviction
KIND_EARLY = 3  # early reply: "still working, wait `extra` more seconds" (AT)
KIND_HELLO = 4  # first frame of a connection: who the client is

# request flags (Lustre: MSG_RESENT, MSG_REPLAY)
FLAG_RESEND = 0x1
FLAG_REPLAY = 0x2
# answer once the change is committed, and keep no replay state for the sender: for an
# idempotent change a server sends (the MDT's object destroys, node/osp.py), which its sender
# keeps in a log of its own until this answer and simply sends again after a failure
FLAG_SYNC = 0x4

ROOT_INO = 1  # the inode of an MDT's root directory


@dataclass(slots=True)
class Hello:
    client_uuid: str
    client_nid: str = ""


@dataclass(slots=True)
class Request:
    xid: int
    op: str
    target: str
    args: dict[str, Any] = field(default_factory=dict)
    flags: int = 0
    transno: int = 0  # replay: the transno the original execution was given
    known_xid: int = 0  # every xid below this has its reply: the server may forget them
    bulk: bytes | None = None
    # VBR: on a replay, the versions the original reply reported for the objects it touched
    pre_versions: list[int] = field(default_factory=list)
    # client side only, never sent: where the reply's bulk is to be received (a
    # net.sink.BulkSink; the reply's bulk is then that sink)
    reply_into: Any = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class Reply:
    xid: int
    status: str | None = None  # errno name, None on success
    message: str = ""
    transno: int = 0  # 0: not a modifying request (nothing to replay)
    last_committed: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    pre_versions: list[int] = field(default_factory=list)  # VBR
    service_estimate: float = 0.0  # AT: the server's estimate of its service time
    bulk: bytes | None = None


@dataclass(slots=True)
class Notice:
    what: str  # "ir" (a target moved), "evicted", ...
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class EarlyReply:
    xid: int
    extra: float  # seconds to add to the request's deadline


Message = Hello | Request | Reply | Notice | EarlyReply


def encode(msg: Message) -> tuple[bytes, bytes | None]:
    """(meta, bulk) for a message."""
    if isinstance(msg, Request):
        meta = [KIND_REQUEST, msg.xid, msg.op, msg.target, msg.args, msg.flags, msg.transno,
                msg.known_xid, msg.pre_versions]
        try:
            return msgpack.packb(meta, use_bin_type=True), msg.bulk
        except UnicodeEncodeError as exc:
            # a path from the command line with bytes that are not UTF-8 (surrogate escapes)
            raise IllegalByteSequence(f"{msg.op}: {_as_bytes(exc.object)!r} is not valid "
                                      "UTF-8") from None
    if isinstance(msg, Reply):
        meta = [KIND_REPLY, msg.xid, msg.status, msg.message, msg.transno, msg.last_committed,
                msg.data, msg.pre_versions, msg.service_estimate]
        return msgpack.packb(meta, use_bin_type=True), msg.bulk
    if isinstance(msg, Notice):
        return msgpack.packb([KIND_NOTICE, msg.what, msg.data], use_bin_type=True), None
    if isinstance(msg, EarlyReply):
        return msgpack.packb([KIND_EARLY, msg.xid, msg.extra], use_bin_type=True), None
    if isinstance(msg, Hello):
        return msgpack.packb([KIND_HELLO, msg.client_uuid, msg.client_nid]), None
    raise TypeError(f"not a message: {msg!r}")


def _as_bytes(text: str) -> bytes | str:
    try:
        return text.encode("utf-8", "surrogateescape")  # the bytes the user typed
    except UnicodeEncodeError:
        return text


REPLY_ITEMS = 9  # the fields of a reply's meta array (encode, decode)


def peek_reply_xid(meta: bytes | memoryview) -> int | None:
    """The xid of a reply from the first bytes of its meta, without decoding it (the frame
    is not verified yet: only a few bytes are looked at, no msgpack); None if not a reply."""
    if len(meta) < 3:
        return None
    head = meta[0]
    pos = 1 if 0x90 <= head <= 0x9F else 3 if head == 0xDC else 5 if head == 0xDD else 0
    if not pos or len(meta) < pos + 2 or meta[pos] != KIND_REPLY:
        return None
    items = head & 0x0F if pos == 1 else int.from_bytes(meta[1:pos], "big")
    if items != REPLY_ITEMS:
        return None
    tag, at = meta[pos + 1], pos + 2
    if tag <= 0x7F:
        return tag
    width = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}.get(tag)
    if width is None or len(meta) < at + width:
        return None
    return int.from_bytes(meta[at:at + width], "big")


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise BadMessage(f"malformed {what}")


def decode(meta: bytes, bulk: bytes | None) -> Message:
    """The message in a frame; BadMessage for anything that is not a well-formed message."""
    try:
        m = msgpack.unpackb(meta, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise BadMessage(f"undecodable frame: {type(exc).__name__}") from None
    _check(isinstance(m, list) and len(m) >= 1 and isinstance(m[0], int), "frame")
    kind = m[0]
    if kind == KIND_REQUEST:
        _check(len(m) == 9, "request")
        _, xid, op, target, args, flags, transno, known, pre = m
        _check(isinstance(xid, int) and isinstance(op, str) and isinstance(target, str)
               and isinstance(args, dict) and isinstance(flags, int)
               and isinstance(transno, int) and isinstance(known, int)
               and isinstance(pre, list) and all(isinstance(v, int) for v in pre), "request")
        return Request(xid, op, target, args, flags, transno, known, bulk, pre)
    if kind == KIND_REPLY:
        _check(len(m) == REPLY_ITEMS, "reply")
        _, xid, status, message, transno, lc, data, pre, est = m
        _check(isinstance(xid, int) and (status is None or isinstance(status, str))
               and isinstance(data, dict) and isinstance(pre, list)
               and isinstance(transno, int) and isinstance(lc, int), "reply")
        return Reply(xid, status, message, transno, lc, data, pre, float(est), bulk)
    if kind == KIND_NOTICE:
        _check(len(m) == 3 and isinstance(m[1], str) and isinstance(m[2], dict), "notice")
        return Notice(m[1], m[2])
    if kind == KIND_EARLY:
        _check(len(m) == 3 and isinstance(m[1], int), "early reply")
        return EarlyReply(m[1], float(m[2]))
    if kind == KIND_HELLO:
        _check(len(m) == 3 and isinstance(m[1], str) and 0 < len(m[1]) <= 128, "hello")
        return Hello(m[1], str(m[2]))
    raise BadMessage(f"unknown message kind {kind!r}")
