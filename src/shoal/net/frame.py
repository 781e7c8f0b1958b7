"""Frames on the wire: a fixed header, a msgpack meta part and an optional raw bulk part.

    header = meta_len:u32 | bulk_len:u32 | hmac:32 bytes
    hmac   = HMAC-SHA256(cluster key, meta_len | bulk_len | meta)            no bulk
    hmac   = HMAC-SHA256(cluster key, meta_len | bulk_len | meta | digest(bulk))   see below

A bulk enters the HMAC through its BLAKE3 digest (hash-then-MAC, as a TLS handshake signs
its transcript hash): a forged or corrupted bulk changes the digest and the HMAC fails, just
as if the bytes were MACed directly, but the bulk is hashed at about 6 GB/s per core instead
of SHA-256's 1.8. HMAC-SHA256 over a whole 4 MiB bulk at both ends was the largest cost of
a streaming read.

The digest of a bulk of up to HASH_PIECE bytes is BLAKE3(bulk); that of a larger one is
BLAKE3 over the BLAKE3 digests of its HASH_PIECE pieces in order (the last may be short), a
hash list as T10-PI keeps a guard per sector. An OST that remembers the digests of the
pieces it wrote can then answer a read of them without hashing a byte (target/ost_digests.py),
and send the file's pages straight from the page cache (net/writer.py, FileBulk).

The lengths are checked against the limits before a single body byte is read, so an
oversized frame costs the server 40 bytes, not memory. A frame whose HMAC does not verify is
never decoded: forged or corrupted input cannot reach msgpack.

This module has the format; net/framing.py reads it off sockets without copying the bulk.
read_frame here reads it from a StreamReader (tools, tests).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import struct
from typing import Any

from blake3 import blake3

from shoal.errors import AuthFailure, FrameTooLarge

_LENS = struct.Struct(">II")
HEADER_SIZE = _LENS.size + 32
MAX_META = 1 << 20  # 1 MiB of msgpack is far more than any request's arguments
MAX_BULK = 16 << 20  # a 4 MiB bulk RPC (Lustre's default max) with room to spare
KEY_BYTES = 32


HASH_PIECE = 256 << 10  # hashed right after it is copied: it is still in the CPU's cache


class HashedBulk(bytearray):
    """A bulk whose digest its filler computed piece by piece while each piece was still in
    the CPU's cache (an OST's reads, target/ost_deferred.py; a client's writes,
    client/fileio.py). `digest` must be set by whoever filled the bytes, after the last one,
    and None while they change: the frame is signed with it as it is. `pieces` are the
    digests of its HASH_PIECE pieces, where the filler or receiver kept them."""

    __slots__ = ("digest", "pieces")

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.digest: bytes | None = None
        self.pieces: list[bytes] | None = None


class BulkHasher:
    """The digest of a bulk fed in runs of any length (see the module docstring)."""

    __slots__ = ("_h", "_left", "pieces")

    def __init__(self) -> None:
        self._h = blake3()
        self._left = HASH_PIECE  # bytes still to go into the current piece
        self.pieces: list[bytes] = []  # digests of the full pieces so far

    def update(self, data: Any) -> None:
        n = len(data)
        if n < self._left:
            self._h.update(data)
            self._left -= n
            return
        view, pos = memoryview(data).cast("B"), 0
        while n - pos >= self._left:
            self._h.update(view[pos:pos + self._left])
            pos += self._left
            self.pieces.append(self._h.digest())
            self._h, self._left = blake3(), HASH_PIECE
        if pos < n:
            self._h.update(view[pos:])
            self._left -= n - pos

    def piece_digests(self) -> list[bytes]:
        """Every piece's digest, the short last one included."""
        if self._left < HASH_PIECE or not self.pieces:
            return [*self.pieces, self._h.digest()]
        return list(self.pieces)

    def digest(self) -> bytes:
        return list_digest(self.piece_digests())  # one piece: its own digest


def list_digest(pieces: list[bytes]) -> bytes:
    """A bulk's digest from its pieces' digests."""
    return pieces[0] if len(pieces) == 1 else blake3(b"".join(pieces)).digest()


def known_digest(bulk: Any) -> bytes | None:
    """The digest whoever filled the bulk computed (HashedBulk, net/writer.FileBulk), if
    any: the frame signs with it instead of hashing the bytes."""
    return getattr(bulk, "digest", None)


def bulk_hash(bulk: Any) -> bytes:
    """The digest of a bulk: bytes-like, or scattered over buffers (anything with `views`
    and a length, as net/sink.BulkSink): that of the bytes in order."""
    views = getattr(bulk, "views", None)
    if views is None:
        if len(bulk) <= HASH_PIECE:
            return blake3(bulk).digest()
        views = [bulk]
    h, left = BulkHasher(), len(bulk)
    for v in views:
        if left <= 0:
            break
        h.update(v if len(v) <= left else v[:left])
        left -= len(v)
    return h.digest()


_PADS: dict[bytes, tuple[Any, Any]] = {}


def mac(key: bytes, *parts: Any) -> bytes:
    """HMAC-SHA256 of the parts in order (RFC 2104). The key's inner and outer SHA-256
    states are computed once per key and copied per frame: hmac.digest sets OpenSSL's HMAC
    up from the key every time, which costs more than hashing a small frame (2.9 against
    1.2 us here), and every RPC pays it twice at each end."""
    pads = _PADS.get(key)
    if pads is None:
        k = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
        pads = (hashlib.sha256(bytes(b ^ 0x36 for b in k)),
                hashlib.sha256(bytes(b ^ 0x5C for b in k)))
        _PADS[key] = pads
    inner = pads[0].copy()
    for part in parts:
        inner.update(part)
    outer = pads[1].copy()
    outer.update(inner.digest())
    return outer.digest()


def sign(key: bytes, lens: Any, meta: Any, bulk: Any) -> bytes:
    """The frame's HMAC; `lens`, `meta` and `bulk` may be any bytes-like objects."""
    if not bulk:
        return mac(key, lens, meta)
    return mac(key, lens, meta, known_digest(bulk) or bulk_hash(bulk))


def encode_frame(key: bytes, meta: bytes, bulk: Any) -> list[Any]:
    """The frame as buffers for writelines: header and meta in one small buffer, the bulk
    as it is (never copied: the transport writes it from the caller's buffer)."""
    lens = _LENS.pack(len(meta), len(bulk) if bulk else 0)
    if bulk:
        return [lens + sign(key, lens, meta, bulk) + meta, bulk]
    return [lens + mac(key, lens, meta) + meta]


async def read_frame(
    reader: asyncio.StreamReader,
    key: bytes,
    *,
    max_meta: int = MAX_META,
    max_bulk: int = MAX_BULK,
) -> tuple[bytes, bytes | None]:
    """Read one frame; raises FrameTooLarge, AuthFailure, or IncompleteReadError at EOF."""
    header = await reader.readexactly(HEADER_SIZE)
    lens = header[: _LENS.size]
    meta_len, bulk_len = _LENS.unpack(lens)
    if meta_len > max_meta or bulk_len > max_bulk:
        raise FrameTooLarge(f"frame of {meta_len}+{bulk_len} bytes exceeds the limit")
    meta = await reader.readexactly(meta_len)
    bulk = await reader.readexactly(bulk_len) if bulk_len else None
    if not hmac.compare_digest(header[_LENS.size:], sign(key, lens, meta, bulk)):
        raise AuthFailure("frame HMAC does not verify with the cluster key")
    return meta, bulk
