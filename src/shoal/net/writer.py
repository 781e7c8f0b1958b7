"""The sending half of a connection (the receiving half is net/framing.py).

The frames queued in one loop iteration go out in one writelines, the bulk as the caller's
buffer (uvloop writes the list with one writev, copying nothing); a bulk of THREAD_HMAC or
more is signed on a worker thread, and the frames queued after it wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from shoal.net.frame import HashedBulk, encode_frame

log = logging.getLogger(__name__)

THREAD_HMAC = 1 << 20  # a bulk this large is signed on a worker thread

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def hmac_executor() -> ThreadPoolExecutor:
    """The process's threads for signing large bulks (shared by every connection)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                                           thread_name_prefix="shoal-hmac")
        return _executor


class FrameWriter:
    """The sending half of a connection: frames queued in one loop iteration go out in one
    writelines (header and meta in one buffer, the bulk as the caller's buffer, never
    copied). A frame whose bulk is THREAD_HMAC or more is signed on a worker thread; it, and
    every frame queued after it, wait for the signature, so frames reach the wire in the order
    they were sent."""

    def __init__(self, transport: asyncio.Transport, key: bytes, *,
                 thread_hmac: int = THREAD_HMAC) -> None:
        self.transport = transport
        self._key = key
        self._thread_hmac = thread_hmac
        self._out: list[Any] = []  # buffers for the next writelines
        self._held: deque[list[Any]] = deque()  # [buffers or None while being signed]

    def send(self, meta: bytes, bulk: Any) -> None:
        if (bulk is not None and len(bulk) >= self._thread_hmac
                and not (type(bulk) is HashedBulk and bulk.digest)):  # hashed: signs at once
            entry: list[Any] = [None]
            self._held.append(entry)
            fut = asyncio.get_running_loop().run_in_executor(
                hmac_executor(), encode_frame, self._key, meta, bulk)
            fut.add_done_callback(partial(self._signed, entry))
            return
        parts = encode_frame(self._key, meta, bulk)
        if self._held:
            self._held.append([parts])
            return
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.extend(parts)

    def _signed(self, entry: list[Any], fut: asyncio.Future[list[Any]]) -> None:
        try:
            entry[0] = fut.result()
        except Exception:  # noqa: BLE001 - cannot sign: the frames after it cannot go either
            log.exception("signing a frame failed; closing the connection")
            self._held.clear()
            self.transport.close()
            return
        held = self._held
        if held and not self._out and held[0][0] is not None:
            asyncio.get_running_loop().call_soon(self._flush)
        while held and held[0][0] is not None:
            self._out.extend(held.popleft()[0])

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and not self.transport.is_closing():
            self.transport.writelines(out)
