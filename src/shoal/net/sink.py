"""Scatter receive: a reply's bulk lands straight in the caller's buffers.

A striped read of 16 MiB gets four 4 MiB replies whose bytes belong in 1 MiB pieces of one
output buffer. Received into a buffer of its own, every byte would be copied once more into
place; with a BulkSink the receiving protocol writes each piece of the reply where it belongs
(Lustre's bulk lands in the pages of the read the same way).

The bytes in a sink mean nothing until the frame that filled them has verified and its
reply has been handed up: only then does `len()` say how much it filled. A frame rejected
halfway may have written more than the reply that replaces it, so `dirty` says how far any
frame wrote; the caller zeroes what lies between (bytes past the end of an object are holes).

One frame at a time owns a sink: while a live connection's frame holds it, a second reply to
the same request (a resend's duplicate) is received into a buffer of its own instead. The
caller closes the sink before it uses its buffers; a frame still arriving into it then
receives the rest of its bytes into a scratch buffer and is dropped, so a result is never
written over behind its reader's back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class _Owner(Protocol):
    @property
    def alive(self) -> bool: ...


class BulkSink:
    __slots__ = ("views", "size", "filled", "dirty", "closed", "_owner")

    def __init__(self, views: Sequence[memoryview]) -> None:
        self.views = [v for v in views if len(v)]
        self.size = sum(len(v) for v in self.views)
        self.filled = 0
        self.dirty = 0
        self.closed = False  # the caller is done: nothing may write into the views any more
        self._owner: _Owner | None = None

    def __len__(self) -> int:
        return self.filled

    def claim(self, owner: _Owner, n: int) -> list[memoryview] | None:
        """The views that receive an n-byte bulk for `owner`, or None: too large, or a
        frame on a live connection holds the sink."""
        if self.closed or n > self.size or (self._owner is not None and self._owner.alive):
            return None
        self._owner = owner
        self.filled = n
        self.dirty = max(self.dirty, n)
        out: list[memoryview] = []
        for v in self.views:
            if n <= 0:
                break
            out.append(v if len(v) <= n else v[:n])
            n -= len(out[-1])
        return out

    def close(self) -> None:
        """The caller takes its buffers back: a frame still being received into them gets
        the rest of its bytes put elsewhere, and is dropped (its request is answered)."""
        self.closed = True

    def clear_tail(self) -> None:
        """Zero what a rejected frame wrote past the delivered bulk's end."""
        if self.dirty <= self.filled:
            return
        pos = 0
        for v in self.views:
            lo, hi = max(self.filled - pos, 0), min(self.dirty - pos, len(v))
            if lo < hi:
                v[lo:hi] = bytes(hi - lo)
            pos += len(v)
        self.dirty = self.filled
