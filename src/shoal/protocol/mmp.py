"""Multiple-mount protection: the rules, without the device (ext4 MMP / ZFS multihost).

Every target device holds one MMP block: a sequence number, the node that wrote it, the
time, and the fencing token of the mount that owns it (the revision of the store's owner key
when that node took the target). Everything that decides lives here; target/mmp.py reads and
writes the block, the agent sleeps between the reads.

Theory of operation
- The serving node bumps `seq` every `interval` seconds. A node that wants to mount reads
  the block. A block marked clean (seq == SEQ_CLEAN: the last owner unmounted cleanly) may be
  taken at once; otherwise the node waits `check_wait(interval)` and reads again: a sequence
  that moved means a live owner, and the mount is refused. Then the node writes its own
  random sequence with its token, waits again and re-reads: if the block is not the one it
  wrote, another node is mounting at the same moment, and the mount is refused.
- While mounted, the owner re-reads the block before each update and before each commit. A
  block carrying a newer token than its own means another node has taken the target since
  (this node was paused, or cut off, and fenced by someone who believed it): it is
  superseded and stops serving without touching the device again (DESIGN.md invariant 2).
- Tokens are the owner key's create revision: a later takeover always has a larger token,
  in every store backend.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

SEQ_CLEAN = 0xFF4D4D50  # ext4's EXT4_MMP_SEQ_CLEAN: unmounted cleanly
SEQ_FSCK = 0xE24D4D50  # ext4's EXT4_MMP_SEQ_FSCK: being checked, never mount
SEQ_MAX = 0xE24D4D4F  # sequences above this are reserved


@dataclass(frozen=True, slots=True)
class MmpBlock:
    seq: int
    node: str
    token: int  # owner key revision of the mount that wrote this block
    time: float  # wall clock when written (for people; decisions use seq only)

    @property
    def clean(self) -> bool:
        return self.seq == SEQ_CLEAN


class MountVerdict(enum.Enum):
    FREE = "free"  # nobody is using the device: go on
    IN_USE = "in_use"  # the sequence moved while we watched: a live owner
    FSCK = "fsck"  # being checked: never mount
    RACE = "race"  # someone else wrote the block after us: a concurrent mount


def check_wait(interval: float) -> float:
    """How long to watch the block before trusting it is idle: two update intervals and a
    margin (ext4 waits 2 * interval + 1 s; our intervals are tenths of seconds)."""
    return 2 * interval + interval / 2


def first_look(block: MmpBlock | None) -> MountVerdict | None:
    """Verdict from one read, or None when the block must be watched for check_wait."""
    if block is None or block.clean:
        return MountVerdict.FREE
    if block.seq == SEQ_FSCK:
        return MountVerdict.FSCK
    return None


def after_watch(before: MmpBlock | None, after: MmpBlock | None) -> MountVerdict:
    """Verdict after watching the block for check_wait: did its owner bump the sequence?"""
    if after is None:
        return MountVerdict.FREE
    if after.seq == SEQ_FSCK:
        return MountVerdict.FSCK
    if after.clean:
        return MountVerdict.FREE
    if before is not None and (after.seq != before.seq or after.node != before.node):
        return MountVerdict.IN_USE
    return MountVerdict.FREE


def after_claim(ours: MmpBlock, now_on_device: MmpBlock | None) -> MountVerdict:
    """Verdict after writing our own block and watching it: is it still ours?"""
    if now_on_device is None:
        return MountVerdict.RACE
    if (now_on_device.node, now_on_device.token) != (ours.node, ours.token):
        return MountVerdict.RACE
    return MountVerdict.FREE


def superseded(on_device: MmpBlock | None, node: str, token: int) -> str | None:
    """Why a mount holding `token` must stop at once, or None if it still owns the device."""
    if on_device is None:
        return None  # a lost block is rewritten by the next update
    if on_device.token > token:
        return (f"device taken over by {on_device.node} (token {on_device.token} > "
                f"our {token})")
    if on_device.token == token and on_device.node != node:
        return f"device claimed by {on_device.node} with our token {token}"
    return None


def next_seq(seq: int) -> int:
    """The sequence after `seq`, skipping the reserved values."""
    n = seq + 1
    return 1 if n > SEQ_MAX else n
