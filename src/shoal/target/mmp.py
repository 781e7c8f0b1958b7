"""The MMP block on a target device, and the mount/keep/unmount procedure around it.

The rules are in protocol/mmp.py; this module does the I/O. The block is a small JSON file,
`<device>/MMP`, replaced atomically (write + rename) so a reader never sees half of one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from shoal.errors import Busy, NoDevice, ShoalError
from shoal.protocol import mmp
from shoal.target import lun

log = logging.getLogger(__name__)

MMP_FILE = "MMP"
DEFAULT_INTERVAL = 0.1  # seconds between updates; a takeover watches for 2.5 of them


class Superseded(NoDevice):
    """Another node took this target over: stop serving it, touch nothing."""


def read_block(device: Path) -> mmp.MmpBlock | None:
    try:
        if lun.is_block_device(device):  # raw at the LUN's end: no mount needed
            raw = lun.read_record(Path(device), lun.MMP_AT)
            if raw is None:
                return None
        else:
            raw = json.loads((Path(device) / MMP_FILE).read_text())
        return mmp.MmpBlock(int(raw["seq"]), str(raw["node"]), int(raw["token"]),
                            float(raw["time"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, OverflowError):
        # unreadable block: treat as absent; the next owner rewrites it
        return None


def write_block(device: Path, block: mmp.MmpBlock, *, durable: bool = False) -> None:
    if lun.is_block_device(device):
        lun.write_record(Path(device), lun.MMP_AT, asdict(block))  # O_DSYNC: always durable
        return
    path = Path(device) / MMP_FILE
    # unique per writer: two nodes (or threads) may claim at the same moment
    tmp = path.with_name(f".{MMP_FILE}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(asdict(block)))
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class Look:
    """The MMP block as read at monotonic time `at`."""

    block: mmp.MmpBlock | None
    at: float


async def look(device: Path) -> Look | None:
    """A look at the device's MMP block now; None if it cannot be read."""
    try:
        block = await asyncio.to_thread(read_block, device)
    except (OSError, ShoalError):
        return None
    return Look(block, time.monotonic())  # after the read: the watch is never overcounted


class MmpMount:
    """This node's mount of one device: claim it, keep bumping it, notice being superseded."""

    def __init__(self, device: Path, node: str, token: int,
                 interval: float = DEFAULT_INTERVAL) -> None:
        self.device = Path(device)
        self.node = node
        self.token = token
        self.interval = interval
        self.seq = 0
        self.superseded: str | None = None
        self.last_update = 0.0
        # update() runs on a worker thread (a write and rename can wait for the disk, and
        # the event loop must not); release() must not be followed by a late update
        self._lock = threading.Lock()
        self._released = False

    async def claim(self, earlier: Look | None = None) -> float:
        """Mount: refuse (Busy) if a live owner still updates the block. Returns seconds spent.
        `earlier`: a look at the block taken before (as the takeover began, before its
        fence); if the block has not moved since, the watch began then and only its rest is
        waited for (the fence, the owner key and the watch overlap)."""
        t0 = time.monotonic()
        if not (self.device.is_dir() or lun.is_block_device(self.device)):
            # a device is never created here (target/label.py)
            raise NoDevice(f"device {self.device} does not exist")
        wait = mmp.check_wait(self.interval)
        before = await asyncio.to_thread(read_block, self.device)
        verdict = mmp.first_look(before)
        if verdict is None:
            began = (earlier.at if earlier is not None and earlier.block == before
                     else time.monotonic())
            if (rest := wait - (time.monotonic() - began)) > 0:
                await asyncio.sleep(rest)
                verdict = mmp.after_watch(before,
                                          await asyncio.to_thread(read_block, self.device))
            else:
                verdict = mmp.after_watch(before, before)  # unmoved for a whole watch
        self._refuse_unless_free(verdict, before)
        self.seq = secrets.randbelow(mmp.SEQ_MAX - 1) + 1
        ours = mmp.MmpBlock(self.seq, self.node, self.token, time.time())
        await asyncio.to_thread(write_block, self.device, ours, durable=True)
        await asyncio.sleep(mmp.check_wait(self.interval))
        self._refuse_unless_free(
            mmp.after_claim(ours, await asyncio.to_thread(read_block, self.device)), ours)
        self.last_update = time.monotonic()
        return time.monotonic() - t0

    def _refuse_unless_free(self, verdict: mmp.MountVerdict, block: mmp.MmpBlock | None) -> None:
        if verdict is mmp.MountVerdict.FREE:
            return
        who = block.node if block else "?"
        raise Busy(f"MMP: {self.device} is {verdict.value} (last written by {who}); "
                   "refusing a second mount")

    def check(self) -> None:
        """Raise Superseded if another node's token is on the device (cheap: one small read)."""
        if self.superseded:
            raise Superseded(self.superseded)
        why = mmp.superseded(read_block(self.device), self.node, self.token)
        if why:
            self.superseded = why
            raise Superseded(why)

    def update(self) -> None:
        """Bump the sequence (the heartbeat other nodes watch), after checking we still own it.
        Safe on a worker thread; writes nothing once released."""
        with self._lock:
            self.check()
            if self._released:
                return
            self.seq = mmp.next_seq(self.seq)
            write_block(self.device, mmp.MmpBlock(self.seq, self.node, self.token, time.time()))
            self.last_update = time.monotonic()

    def release(self) -> None:
        """Clean unmount: mark the block clean, so the next mount need not wait."""
        with self._lock:
            self._released = True
            self._release()

    def _release(self) -> None:
        if self.superseded:
            return
        try:
            self.check()
        except Superseded:
            return
        write_block(self.device, mmp.MmpBlock(mmp.SEQ_CLEAN, self.node, self.token, time.time()),
                    durable=True)
