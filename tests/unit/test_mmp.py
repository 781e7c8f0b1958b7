"""Multiple-mount protection: the rules (protocol/mmp.py, pure) and the block on a real device
directory (target/mmp.py): claim, keep updating, refuse a second mount, notice being
superseded, release cleanly, and survive a garbage block.

The device tests use a short MMP interval (20 ms) so that a claim's two watches take ~0.1 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from shoal.errors import Busy, NoDevice
from shoal.protocol import mmp
from shoal.protocol.mmp import (
    SEQ_CLEAN,
    SEQ_FSCK,
    SEQ_MAX,
    MmpBlock,
    MountVerdict,
    after_claim,
    after_watch,
    check_wait,
    first_look,
    next_seq,
    superseded,
)
from shoal.target.mmp import MMP_FILE, MmpMount, Superseded, look, read_block, write_block

IVL = 0.02


def blk(seq: int = 7, node: str = "oss0", token: int = 10) -> MmpBlock:
    return MmpBlock(seq, node, token, 1_700_000_000.0)


# -- the rules ---------------------------------------------------------------------------

def test_check_wait_covers_two_intervals() -> None:
    for interval in (0.02, 0.1, 1.0):
        assert check_wait(interval) > 2 * interval


def test_first_look() -> None:
    assert first_look(None) is MountVerdict.FREE  # never mounted
    assert first_look(blk(SEQ_CLEAN)) is MountVerdict.FREE  # unmounted cleanly
    assert first_look(blk(SEQ_FSCK)) is MountVerdict.FSCK
    assert first_look(blk(7)) is None  # in use or crashed: must watch it
    assert blk(SEQ_CLEAN).clean and not blk(7).clean and not blk(SEQ_FSCK).clean


def test_after_watch() -> None:
    before = blk(7, "oss0")
    assert after_watch(before, blk(7, "oss0")) is MountVerdict.FREE  # nobody bumped it: dead
    assert after_watch(before, blk(8, "oss0")) is MountVerdict.IN_USE  # a live owner
    assert after_watch(before, blk(7, "oss1")) is MountVerdict.IN_USE  # someone else wrote it
    assert after_watch(before, blk(SEQ_FSCK)) is MountVerdict.FSCK  # fsck started meanwhile
    assert after_watch(before, blk(SEQ_CLEAN)) is MountVerdict.FREE  # its owner let go
    assert after_watch(before, None) is MountVerdict.FREE  # block gone


def test_after_claim() -> None:
    ours = blk(1234, "oss1", 11)
    assert after_claim(ours, ours) is MountVerdict.FREE
    assert after_claim(ours, None) is MountVerdict.RACE  # our write vanished
    assert after_claim(ours, blk(99, "oss0", 11)) is MountVerdict.RACE  # another node
    assert after_claim(ours, blk(1234, "oss1", 12)) is MountVerdict.RACE  # another mount of ours


def test_superseded() -> None:
    assert superseded(None, "oss0", 10) is None  # lost block: the next update rewrites it
    assert superseded(blk(5, "oss0", 10), "oss0", 10) is None  # our own block
    assert superseded(blk(5, "oss1", 9), "oss0", 10) is None  # an older owner's leftover
    why = superseded(blk(5, "oss1", 11), "oss0", 10)
    assert why is not None and "oss1" in why and "11" in why
    why = superseded(blk(5, "oss1", 10), "oss0", 10)  # same token, other node
    assert why is not None and "oss1" in why


def test_next_seq_wraps_below_the_reserved_values() -> None:
    assert next_seq(0) == 1
    assert next_seq(41) == 42
    assert next_seq(SEQ_MAX - 1) == SEQ_MAX
    assert next_seq(SEQ_MAX) == 1
    assert next_seq(SEQ_CLEAN) == 1
    assert next_seq(SEQ_FSCK) == 1
    assert SEQ_MAX < SEQ_FSCK < SEQ_CLEAN


@given(st.integers(0, 2**32 - 1))
def test_next_seq_never_yields_a_reserved_or_equal_value(seq: int) -> None:
    n = next_seq(seq)
    assert 1 <= n <= SEQ_MAX
    assert n != seq
    assert first_look(blk(n)) is None  # an update always looks like a live owner


# -- the block on a device -------------------------------------------------------------------

def raw(device: Path) -> bytes:
    return (device / MMP_FILE).read_bytes()


@contextlib.asynccontextmanager
async def updating(mount: MmpMount) -> AsyncIterator[asyncio.Task[None]]:
    """What the agent's MMP loop does: update() every interval, until told to stop."""
    async def loop() -> None:
        while True:
            mount.update()
            await asyncio.sleep(mount.interval)

    task = asyncio.create_task(loop())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_write_then_read_block_round_trips(tmp_path: Path) -> None:
    b = MmpBlock(123, "oss0", 42, 1_700_000_000.5)
    write_block(tmp_path, b)
    assert read_block(tmp_path) == b
    write_block(tmp_path, blk(SEQ_CLEAN), durable=True)
    assert read_block(tmp_path) == blk(SEQ_CLEAN)
    assert sorted(p.name for p in tmp_path.iterdir()) == [MMP_FILE]  # no temp file left


async def test_claim_on_a_fresh_device(tmp_path: Path) -> None:
    dev = tmp_path / "ost0"
    with pytest.raises(NoDevice, match="does not exist"):  # a device is never created
        await MmpMount(dev, "oss0", token=10, interval=IVL).claim()
    assert not dev.exists()
    dev.mkdir()  # formatted, with no MMP block yet
    m = MmpMount(dev, "oss0", token=10, interval=IVL)
    spent = await m.claim()
    assert spent >= check_wait(IVL) * 0.9  # it watched its own write once
    b = read_block(dev)
    assert b is not None
    assert (b.node, b.token, b.seq) == ("oss0", 10, m.seq)
    assert 1 <= b.seq <= SEQ_MAX and not b.clean
    m.check()  # ours: no complaint
    m.update()
    after = read_block(dev)
    assert after is not None and after.seq == next_seq(b.seq) and after.token == 10


async def test_claim_is_refused_while_the_owner_keeps_updating(tmp_path: Path) -> None:
    dev = tmp_path / "ost0"
    dev.mkdir()
    owner = MmpMount(dev, "oss0", token=10, interval=IVL)
    await owner.claim()
    async with updating(owner) as task:
        intruder = MmpMount(dev, "oss1", token=11, interval=IVL)
        with pytest.raises(Busy, match="in_use") as exc:
            await intruder.claim()
        assert isinstance(exc.value, Busy) and "oss0" in str(exc.value)
        # the refused mount wrote nothing: the owner still owns the device and keeps going
        await asyncio.sleep(3 * IVL)
        assert not task.done()
        b = read_block(dev)
        assert b is not None and (b.node, b.token) == ("oss0", 10)
        owner.check()
    assert owner.superseded is None


async def test_claim_of_a_device_being_checked_is_refused(tmp_path: Path) -> None:
    write_block(tmp_path, blk(SEQ_FSCK, "admin", 0))
    before = raw(tmp_path)
    with pytest.raises(Busy, match="fsck"):
        await MmpMount(tmp_path, "oss1", token=11, interval=IVL).claim()
    assert raw(tmp_path) == before


async def test_claim_after_the_owner_died_waits_then_succeeds(tmp_path: Path) -> None:
    # a crashed owner leaves a non-clean block that nobody bumps any more
    write_block(tmp_path, blk(555, "oss0", 10))
    m = MmpMount(tmp_path, "oss1", token=11, interval=IVL)
    spent = await m.claim()
    assert spent >= 2 * check_wait(IVL) * 0.9  # watched the old block, then its own
    b = read_block(tmp_path)
    assert b is not None and (b.node, b.token) == ("oss1", 11)


async def test_a_look_a_watch_ago_of_an_unmoved_block_counts_as_the_watch(tmp_path: Path
                                                                           ) -> None:
    """The takeover looks at the block as it starts, then fences the old owner: if the block
    has not moved since, that time was the watch, and the claim only watches its own."""
    write_block(tmp_path, blk(555, "oss0", 10))
    earlier = await look(tmp_path)
    await asyncio.sleep(check_wait(IVL))  # the fence
    m = MmpMount(tmp_path, "oss1", token=11, interval=IVL)
    spent = await m.claim(earlier)
    assert check_wait(IVL) * 0.9 <= spent < 2 * check_wait(IVL) * 0.9
    b = read_block(tmp_path)
    assert b is not None and (b.node, b.token) == ("oss1", 11)


async def test_a_block_that_moved_since_the_look_is_watched_again(tmp_path: Path) -> None:
    """The old owner was alive until its fence: the look says nothing, a full watch is
    made, and a live owner is still refused."""
    dev = tmp_path / "ost0"
    dev.mkdir()
    owner = MmpMount(dev, "oss0", token=10, interval=IVL)
    await owner.claim()
    async with updating(owner):
        earlier = await look(dev)
        await asyncio.sleep(check_wait(IVL))
        with pytest.raises(Busy, match="in_use"):
            await MmpMount(dev, "oss1", token=11, interval=IVL).claim(earlier)



async def test_a_look_part_of_a_watch_ago_leaves_the_rest_of_the_watch(tmp_path: Path) -> None:
    """A look half a watch before the claim: the claim waits the other half, then watches
    its own block in full; from the look to the claim's end, both watches are whole."""
    # a longer interval than the other tests': the claim's 1.5 watches must stay apart from
    # the 2 it would take without the look, however busy the machine
    ivl = 5 * IVL
    write_block(tmp_path, blk(555, "oss0", 10))
    earlier = await look(tmp_path)
    await asyncio.sleep(check_wait(ivl) / 2)
    m = MmpMount(tmp_path, "oss1", token=11, interval=ivl)
    spent = await m.claim(earlier)
    assert time.monotonic() - earlier.at >= 2 * check_wait(ivl)
    assert spent < 2 * check_wait(ivl)  # the half before the claim was not watched again
    b = read_block(tmp_path)
    assert b is not None and (b.node, b.token) == ("oss1", 11)


async def test_clean_release_marks_the_block_clean_and_the_next_claim_succeeds(
        tmp_path: Path) -> None:
    first = MmpMount(tmp_path, "oss0", token=10, interval=IVL)
    await first.claim()
    first.update()
    first.release()
    b = read_block(tmp_path)
    assert b is not None and b.clean and b.node == "oss0"
    assert first_look(b) is MountVerdict.FREE  # the next mount need not watch it
    nxt = MmpMount(tmp_path, "oss1", token=11, interval=IVL)
    await nxt.claim()
    b = read_block(tmp_path)
    assert b is not None and (b.node, b.token) == ("oss1", 11) and not b.clean
    # the old mount is superseded by the new token: it must not touch the block again
    before = raw(tmp_path)
    first.release()
    with pytest.raises(Superseded):
        first.update()
    assert raw(tmp_path) == before


async def test_a_superseded_mount_raises_and_never_writes_again(tmp_path: Path) -> None:
    old = MmpMount(tmp_path, "oss0", token=10, interval=IVL)
    await old.claim()
    old.update()
    # old is paused (no updates): oss1 takes over with a newer fencing token
    new = MmpMount(tmp_path, "oss1", token=11, interval=IVL)
    await new.claim()
    before = raw(tmp_path)
    with pytest.raises(Superseded) as exc:
        old.check()
    assert isinstance(exc.value, NoDevice)  # what a stopped target raises to callers
    assert "oss1" in str(exc.value) and old.superseded
    with pytest.raises(Superseded):
        old.update()
    old.release()
    assert raw(tmp_path) == before
    # sticky: even once the block looks harmless again (gone), the old mount stays stopped
    (tmp_path / MMP_FILE).unlink()
    with pytest.raises(Superseded):
        old.update()
    assert not (tmp_path / MMP_FILE).exists()
    # the new owner is unaffected
    write_block(tmp_path, MmpBlock(new.seq, "oss1", 11, 0.0))
    new.update()


async def test_same_token_on_another_node_supersedes(tmp_path: Path) -> None:
    m = MmpMount(tmp_path, "oss0", token=10, interval=IVL)
    await m.claim()
    write_block(tmp_path, blk(3, "oss1", 10))
    before = raw(tmp_path)
    with pytest.raises(Superseded):
        m.update()
    assert raw(tmp_path) == before


async def test_an_older_token_on_the_device_does_not_supersede(tmp_path: Path) -> None:
    # a stale owner's late write (token 9) is overwritten by the current owner's next update
    m = MmpMount(tmp_path, "oss1", token=10, interval=IVL)
    await m.claim()
    write_block(tmp_path, blk(3, "oss0", 9))
    m.update()
    b = read_block(tmp_path)
    assert b is not None and (b.node, b.token) == ("oss1", 10)


async def test_simultaneous_claims_leave_one_holder(tmp_path: Path) -> None:
    # Both see the device unused and claim at once. As in ext4 MMP the last writer wins: the
    # other sees a block not its own at the end of its claim (Busy), or, if its claim ended
    # first (a loaded machine runs one claim before the other), its next update finds the
    # winner's token (Superseded). A claim that starts after the other's finished sees the
    # block moving (Busy). Either way exactly one of them ends up holding the device.
    for attempt in range(3):
        dev = tmp_path / f"dev{attempt}"
        dev.mkdir()
        mounts = [MmpMount(dev, "oss0", token=10, interval=IVL),
                  MmpMount(dev, "oss1", token=11, interval=IVL)]
        done = asyncio.Event()

        async def claim_and_keep(m: MmpMount, done: asyncio.Event = done) -> None:
            await m.claim()
            while not done.is_set():  # the holder's updater, as the target runs it
                with contextlib.suppress(Superseded):
                    await asyncio.to_thread(m.update)
                await asyncio.sleep(IVL / 2)

        tasks = [asyncio.create_task(claim_and_keep(m)) for m in mounts]
        await asyncio.wait(tasks, timeout=2 * check_wait(IVL) + 0.5)
        for _ in range(3):  # let a superseded holder's update see the winner's token
            await asyncio.sleep(IVL)
        done.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(r is None or isinstance(r, Busy) for r in results), results
        holders = [m for m, r in zip(mounts, results, strict=True)
                   if r is None and m.superseded is None]
        assert len(holders) == 1, (results, [m.superseded for m in mounts])
        on_dev = read_block(dev)
        assert on_dev is not None and (on_dev.node, on_dev.token) == (holders[0].node,
                                                                      holders[0].token)


def test_concurrent_block_writers_never_fail(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def writer(node: str) -> None:
        start.wait()
        for i in range(300):
            try:
                write_block(tmp_path, MmpBlock(i + 1, node, 1, 0.0))
            except OSError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("oss0", "oss1")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    b = read_block(tmp_path)
    assert b is not None and b.node in ("oss0", "oss1") and b.seq == 300


GARBAGE = [
    b"",
    b"{",
    b'{"seq": 5, "node": "oss0", "tok',  # torn write
    b"not json at all",
    b"\xff\xfe\x00garbage",
    b"[1, 2, 3]",
    b"null",
    b'"a string"',
    b"42",
    b"{}",
    b'{"seq": "five", "node": "oss0", "token": 1, "time": 0}',
    b'{"seq": null, "node": "oss0", "token": 1, "time": 0}',
    b'{"seq": 5, "node": "oss0", "token": [1], "time": 0}',
    b'{"seq": NaN, "node": "oss0", "token": 1, "time": 0}',
]


@pytest.mark.parametrize("content", GARBAGE)
def test_a_garbage_block_reads_as_absent(tmp_path: Path, content: bytes) -> None:
    (tmp_path / MMP_FILE).write_bytes(content)
    assert read_block(tmp_path) is None


async def test_a_garbage_block_can_be_claimed_and_is_rewritten(tmp_path: Path) -> None:
    (tmp_path / MMP_FILE).write_bytes(b'{"seq": 5, "no')
    m = MmpMount(tmp_path, "oss1", token=11, interval=IVL)
    await m.claim()
    assert json.loads(raw(tmp_path))["node"] == "oss1"


@given(st.binary(max_size=200))
@example(b'{"seq": Infinity, "node": "oss0", "token": 1, "time": 0}')
def test_read_block_never_raises_on_any_content(content: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / MMP_FILE).write_bytes(content)
        b = read_block(Path(d))
        assert b is None or isinstance(b, MmpBlock)


def test_module_constants_match_ext4() -> None:
    assert mmp.SEQ_CLEAN == 0xFF4D4D50 and mmp.SEQ_FSCK == 0xE24D4D50
