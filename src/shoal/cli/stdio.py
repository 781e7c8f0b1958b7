"""Standard output and error that never drop the tail of a write.

With PYTHONUNBUFFERED=1 (or `python -u`), which containers and CI images commonly set,
sys.stdout is a TextIOWrapper straight over a raw FileIO. A write to a pipe that a signal
interrupts part way returns a short count, and TextIOWrapper ignores it (CPython issue
85393, open): the rest of the text is lost and nothing says so. `shoal events --json` to a
reader slower than the pipe's 64 KiB lost everything after the first 65,536 bytes, one run
in three on the rig, with exit status 0.

A BufferedWriter between them writes until everything is out. Line buffering keeps what
unbuffered mode was asked for: each line goes out as it is written.
"""

from __future__ import annotations

import io
import sys
from typing import TextIO


def whole(stream: TextIO) -> TextIO:
    """`stream`, or the same file behind a BufferedWriter if it sits on a raw one."""
    if not isinstance(stream, io.TextIOWrapper) or not isinstance(stream.buffer, io.RawIOBase):
        return stream
    stream.flush()
    return io.TextIOWrapper(io.BufferedWriter(stream.buffer), encoding=stream.encoding,
                            errors=stream.errors, line_buffering=True)


def use_whole_writes() -> None:
    sys.stdout = whole(sys.stdout)
    sys.stderr = whole(sys.stderr)
