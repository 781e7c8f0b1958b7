"""The sending half of a connection (the receiving half is net/framing.py).

The frames queued in one loop iteration go out in one writelines, the bulk as the caller's
buffer (uvloop writes the list with one writev, copying nothing); a bulk of THREAD_HMAC or
more is signed on a worker thread, and the frames queued after it wait for it.

A bulk that is still in a file (FileBulk: an OST read whose pieces' digests the OST kept,
target/ost_digests.py) is sent by a worker thread with sendfile(2), from the page cache to
the socket: the process neither copies nor hashes it, and a read that must wait for the disk
waits on that thread, not on the event loop. The thread writes to the socket itself, so it
starts only once everything queued before the frame has left the transport, and the frames
queued after it wait until it is done.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from shoal.net.frame import encode_frame, known_digest

log = logging.getLogger(__name__)

THREAD_HMAC = 1 << 20  # a bulk this large is signed on a worker thread
SEND_STALL = 60.0  # a peer that takes nothing for this long is given up on
SEND_THREADS = 32  # mostly waiting: a few peers that stopped reading must not hold up all
_EMPTY_POLL = 0.0005  # while the transport still holds bytes ahead of a FileBulk

_executors: dict[str, ThreadPoolExecutor] = {}
_executor_lock = threading.Lock()


def _executor(name: str, workers: int) -> ThreadPoolExecutor:
    with _executor_lock:
        ex = _executors.get(name)
        if ex is None:
            ex = _executors[name] = ThreadPoolExecutor(max_workers=workers,
                                                       thread_name_prefix=name)
        return ex


def hmac_executor() -> ThreadPoolExecutor:
    """The process's threads for signing large bulks (shared by every connection)."""
    return _executor("shoal-hmac", min(4, os.cpu_count() or 1))


class FileBulk:
    """A bulk still in a file: `length` bytes at `offset` of `fd` (owned: closed once the
    frame is sent or dropped), whose digest (net/frame.py) is already known. `on_done`
    callbacks run on the event loop when the bytes have been sent or will never be."""

    __slots__ = ("fd", "offset", "length", "digest", "on_done")

    def __init__(self, fd: int, offset: int, length: int, digest: bytes) -> None:
        self.fd, self.offset, self.length, self.digest = fd, offset, length, digest
        self.on_done: list[Callable[[], None]] = []

    def __len__(self) -> int:
        return self.length

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        done, self.on_done = self.on_done, []
        for cb in done:
            cb()


class _FileSend:
    __slots__ = ("head", "bulk", "started")

    def __init__(self, head: bytes, bulk: FileBulk) -> None:
        self.head, self.bulk, self.started = head, bulk, False


def _wait_writable(sock: int, closing: Callable[[], bool]) -> None:
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    give_up = time.monotonic() + SEND_STALL
    while not poller.poll(200):
        if closing():
            raise ConnectionResetError("connection closed while sending a file bulk")
        if time.monotonic() > give_up:
            raise TimeoutError(f"peer took nothing for {SEND_STALL:g} s")


def _write_all(sock: int, data: memoryview, closing: Callable[[], bool]) -> None:
    while data:
        try:
            data = data[os.write(sock, data):]
        except BlockingIOError:
            _wait_writable(sock, closing)


def _send_file(sock: int, head: bytes, bulk: FileBulk, closing: Callable[[], bool]) -> None:
    """Worker thread: the frame's head, then its bulk straight from the file. The socket
    is a duplicate of the transport's (non-blocking, as the transport keeps it)."""
    try:
        _write_all(sock, memoryview(head), closing)
        off, end = bulk.offset, bulk.offset + bulk.length
        while off < end:
            try:
                k = os.sendfile(sock, bulk.fd, off, end - off)
            except BlockingIOError:
                _wait_writable(sock, closing)
                continue
            if k == 0:  # the file ends early: what is past its end is a hole
                _write_all(sock, memoryview(bytes(end - off)), closing)
                break
            off += k
    finally:
        os.close(sock)


def _encode_file(key: bytes, meta: bytes, bulk: FileBulk) -> list[Any]:
    """Worker thread: a FileBulk's frame as buffers, its bytes read from the file (the part
    past the file's end is a hole: zeros)."""
    data = os.pread(bulk.fd, bulk.length, bulk.offset)
    if len(data) < bulk.length:
        data += bytes(bulk.length - len(data))
    return encode_frame(key, meta, data)


class FrameWriter:
    """The sending half of a connection: frames queued in one loop iteration go out in one
    writelines (header and meta in one buffer, the bulk as the caller's buffer, never
    copied). A frame whose bulk is THREAD_HMAC or more is signed on a worker thread, and a
    FileBulk is sent by one; the frames queued after either wait for it, so frames reach the
    wire in the order they were sent."""

    def __init__(self, transport: asyncio.Transport, key: bytes, *,
                 thread_hmac: int = THREAD_HMAC, tls: bool = False) -> None:
        self.transport = transport
        self._key = key
        # sendfile(2) would bypass the TLS layer: a FileBulk is read, then sent as bytes
        self._tls = tls
        self._thread_hmac = thread_hmac
        self._out: list[Any] = []  # buffers for the next writelines
        # [buffers], [None] while being signed, or [_FileSend]
        self._held: deque[list[Any]] = deque()
        self._recheck: asyncio.TimerHandle | None = None

    def send(self, meta: bytes, bulk: Any) -> None:
        if type(bulk) is FileBulk:
            if self.transport.is_closing():
                bulk.release()
                return
            if self._tls:
                entry: list[Any] = [None]
                self._held.append(entry)
                fut = asyncio.get_running_loop().run_in_executor(
                    hmac_executor(), _encode_file, self._key, meta, bulk)
                fut.add_done_callback(partial(self._file_read, entry, bulk))
                return
            head = encode_frame(self._key, meta, bulk)[0]  # signed with bulk.digest
            self._held.append([_FileSend(head, bulk)])
            self._pump()
            return
        if (bulk is not None and len(bulk) >= self._thread_hmac
                and known_digest(bulk) is None):  # hashed already: signs at once
            entry = [None]
            self._held.append(entry)
            fut = asyncio.get_running_loop().run_in_executor(
                hmac_executor(), encode_frame, self._key, meta, bulk)
            fut.add_done_callback(partial(self._signed, entry))
            return
        parts = encode_frame(self._key, meta, bulk)
        if self._held:
            self._held.append([parts])
            return
        self._queue(parts)

    def abort(self) -> None:
        """The connection is gone: drop what is held (a FileBulk being sent is released by
        its thread when that stops)."""
        held, self._held = self._held, deque()
        for entry in held:
            item = entry[0]
            if type(item) is _FileSend and not item.started:
                item.bulk.release()

    def _queue(self, parts: list[Any]) -> None:
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.extend(parts)

    def _signed(self, entry: list[Any], fut: asyncio.Future[list[Any]]) -> None:
        try:
            entry[0] = fut.result()
        except Exception:  # noqa: BLE001 - cannot sign: the frames after it cannot go either
            log.exception("signing a frame failed; closing the connection")
            self._fail()
            return
        self._pump()

    def _file_read(self, entry: list[Any], bulk: FileBulk,
                   fut: asyncio.Future[list[Any]]) -> None:
        bulk.release()  # on the loop: its on_done callbacks expect to run here
        self._signed(entry, fut)

    def _pump(self) -> None:
        """Move the held frames that are ready, in order, to the wire."""
        held = self._held
        while held:
            item = held[0][0]
            if item is None:
                return  # still being signed
            if type(item) is not _FileSend:
                self._queue(held.popleft()[0])
                continue
            if item.started:
                return
            if self.transport.is_closing():
                self.abort()
                return
            self._flush()
            if self.transport.get_write_buffer_size():
                if self._recheck is None:
                    self._recheck = asyncio.get_running_loop().call_later(
                        _EMPTY_POLL, self._rechecked)
                return
            item.started = True
            sock = os.dup(self.transport.get_extra_info("socket").fileno())
            fut = asyncio.get_running_loop().run_in_executor(
                _executor("shoal-sendfile", SEND_THREADS), _send_file, sock, item.head, item.bulk,
                self.transport.is_closing)
            fut.add_done_callback(partial(self._file_sent, item))
            return

    def _rechecked(self) -> None:
        self._recheck = None
        self._pump()

    def _file_sent(self, item: _FileSend, fut: asyncio.Future[None]) -> None:
        item.bulk.release()
        if self._held and self._held[0][0] is item:
            self._held.popleft()
        exc = fut.exception() if not fut.cancelled() else ConnectionResetError("cancelled")
        if exc is not None:
            if not isinstance(exc, ConnectionError):
                log.warning("sending a file bulk failed (%s); closing the connection", exc)
            self._fail()
            return
        self._pump()

    def _fail(self) -> None:
        self.abort()
        self.transport.close()

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and not self.transport.is_closing():
            self.transport.writelines(out)
