"""The digests of object pieces an OST wrote or read, so a read of them need not hash again.

A frame's bulk is signed through the digests of its HASH_PIECE pieces (net/frame.py). A write
arrives with those digests already computed by the receiving protocol, which verified them;
a read hashed them as it filled its buffer. An OST that keeps them per object piece can
answer a later read of the same pieces with the digests alone, and the bytes then go from
the page cache to the socket without passing through the process (net/writer.py, FileBulk):
the OSS neither copies nor hashes them. Lustre's T10-PI keeps a guard tag per sector for
the same end-to-end check.

The table is a cache in memory: empty after a restart or a takeover, and nothing in it is
needed for correctness. Every change to an object forgets the pieces it touches before the
change can reach the file, and a read asks only for objects with nothing pending, whose file
holds exactly what the remembered pieces were computed from. A piece is remembered with its
length, so a piece that was the object's short last one answers only a read that ends where
it ended.
"""

from __future__ import annotations

from collections import OrderedDict

from shoal.net.frame import HASH_PIECE, list_digest

P = HASH_PIECE
MAX_PIECES = 1 << 18  # 64 GiB of object data at 256 KiB a piece; about 40 MB of memory


class PieceDigests:
    def __init__(self, max_pieces: int = MAX_PIECES) -> None:
        self.max_pieces = max_pieces
        # oid -> piece index -> (length, digest); least recently used object first
        self._objects: OrderedDict[int, dict[int, tuple[int, bytes]]] = OrderedDict()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def clear(self) -> None:
        self._objects.clear()
        self._count = 0

    def forget(self, oid: int, start: int = 0, end: int | None = None) -> None:
        """Forget the pieces of oid that [start, end) touches (end None: to the end)."""
        pieces = self._objects.get(oid)
        if not pieces:
            return
        if end is not None and end <= start:
            return
        first = start // P
        last = len(pieces) + first if end is None else (end - 1) // P
        if last - first < len(pieces):
            # a write's range: look up its few pieces, not every piece of the object (each
            # 4 MiB write of a large object would scan thousands of them)
            touched = [i for i in range(first, last + 1) if i in pieces]
        else:
            touched = [i for i in pieces if i >= first and (end is None or i <= last)]
        for idx in touched:
            del pieces[idx]
        self._count -= len(touched)
        if not pieces:
            del self._objects[oid]

    def remember(self, oid: int, offset: int, length: int, digests: list[bytes] | None) -> None:
        """The bytes [offset, offset+length) of oid now are those `digests` were computed
        from (one per HASH_PIECE piece from offset). Without digests, or off a piece
        boundary, the range is only forgotten."""
        self.forget(oid, offset, offset + length)
        if (not digests or offset % P or length <= 0
                or len(digests) != -(-length // P)):
            return
        pieces = self._objects.setdefault(oid, {})
        self._objects.move_to_end(oid)
        base = offset // P
        for i, d in enumerate(digests):
            pieces[base + i] = (min(P, length - i * P), d)
        self._count += len(digests)
        while self._count > self.max_pieces and self._objects:
            _, old = self._objects.popitem(last=False)
            self._count -= len(old)

    def digest(self, oid: int, offset: int, length: int) -> bytes | None:
        """The bulk digest of a read of [offset, offset+length) of oid, if every piece of it
        is remembered with exactly the length this read gives it; None otherwise."""
        pieces = self._objects.get(oid)
        if pieces is None or offset % P or length <= 0:
            return None
        base = offset // P
        out: list[bytes] = []
        for i in range(-(-length // P)):
            got = pieces.get(base + i)
            if got is None or got[0] != min(P, length - i * P):
                return None
            out.append(got[1])
        self._objects.move_to_end(oid)
        return list_digest(out)
