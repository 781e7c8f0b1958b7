"""cli/stdio.py: a write that the file takes only in part (a pipe's write interrupted by a
signal) still arrives whole, where Python's unbuffered stdout drops the rest."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from shoal.cli.stdio import whole


class ShortWrites(io.RawIOBase):
    """A raw file that takes at most 1,000 bytes per call, as a pipe does when a signal
    interrupts a write part way."""

    def __init__(self) -> None:
        self.got = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = bytes(b[:1000])
        self.got += chunk
        return len(chunk)


TEXT = "".join(f"line {i}\n" for i in range(20_000))  # ~170 KB


def test_unbuffered_text_over_a_raw_file_loses_the_tail() -> None:
    """What PYTHONUNBUFFERED gives: the reason for the fix."""
    raw = ShortWrites()
    out = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)  # type: ignore[arg-type]
    out.write(TEXT)
    out.flush()
    assert len(raw.got) < len(TEXT.encode())


def test_whole_writes_everything_through_short_writes() -> None:
    raw = ShortWrites()
    unbuffered = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)  # type: ignore[arg-type]
    out = whole(unbuffered)  # (sys.__stdout__ keeps the old one alive, as this does)
    out.write(TEXT)
    out.write("partial")
    assert raw.got.endswith(b"line 19999\n")  # line buffering: each line goes out at once
    out.flush()
    assert bytes(raw.got) == (TEXT + "partial").encode()


def test_a_buffered_stream_is_left_alone() -> None:
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    assert whole(out) is out


def test_the_shoal_command_runs_unbuffered_with_whole_writes() -> None:
    code = ("import sys\nfrom shoal.cli.main import main\nsys.argv = ['shoal', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n"
            "    print(type(sys.stdout.buffer).__name__, type(sys.stderr.buffer).__name__,"
            " file=sys.stderr)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=True)
    assert "Usage: shoal" in res.stdout
    assert res.stderr.split() == ["BufferedWriter", "BufferedWriter"]
