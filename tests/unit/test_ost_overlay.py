"""The OST against a bytearray model: random writes, punches, destroys, reads, commits,
reads while a commit is in flight, and crashes, on a few objects."""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.protocol import messages as m
from shoal.target.ost import OST
from shoal.target.ost_files import object_path
from shoal.target.ost_journal import Destroy, PendingLog, Punch, Write, overlay

NAME = "scratch-OST0000"
OIDS = st.sampled_from([1, 2, 0x102])  # 2 and 0x102 share a fan-out directory

# offsets and lengths in tens make writes adjacent often (the commit coalesces those)
OFFSETS = st.one_of(st.integers(0, 30).map(lambda x: x * 10), st.integers(0, 300))
LENGTHS = st.one_of(st.integers(0, 12).map(lambda x: x * 10), st.integers(0, 120))

ops = st.one_of(
    st.tuples(st.just("write"), OIDS, OFFSETS, LENGTHS, st.integers(1, 255)),
    # sequential writes, the common case, which the commit coalesces
    st.tuples(st.just("append"), OIDS, LENGTHS, st.integers(1, 255)),
    st.tuples(st.just("punch"), OIDS, st.integers(0, 400)),
    st.tuples(st.just("destroy"), OIDS),
    st.tuples(st.just("read"), OIDS, st.integers(0, 420), st.integers(0, 200)),
    st.tuples(st.just("commit")),
    st.tuples(st.just("start_commit")),  # reads and writes go on while it runs
    st.tuples(st.just("crash")),
)


@dataclass
class Model:
    objects: dict[int, bytearray] = field(default_factory=dict)

    def copy(self) -> Model:
        return Model({oid: bytearray(b) for oid, b in self.objects.items()})

    def write(self, oid: int, offset: int, data: bytes) -> None:
        b = self.objects.setdefault(oid, bytearray())
        if data and offset > len(b):
            b.extend(bytes(offset - len(b)))
        if data:
            b[offset:offset + len(data)] = data

    def punch(self, oid: int, size: int) -> None:
        b = self.objects.setdefault(oid, bytearray())
        if size < len(b):
            del b[size:]
        else:
            b.extend(bytes(size - len(b)))


class Harness:
    def __init__(self, device: Path) -> None:
        self.device = device
        self.xid = 0
        self.ost = self._open()

    def _open(self) -> OST:
        o = OST(NAME, self.device, fs="scratch", commit_interval=3600)
        o.open(create=True)
        return o

    def call(self, op: str, args: dict[str, Any], bulk: bytes | None = None) -> m.Reply:
        self.xid += 1
        reply, _ = self.ost.handle("c", m.Request(self.xid, op, NAME, args, bulk=bulk))
        assert reply.status is None, (op, args, reply)
        return reply

    def crash(self) -> None:
        """Lose the in-memory log, as a killed server does, and start again."""
        epoch = self.ost.epoch
        self.ost._close_db()
        self.ost = self._open()
        assert self.ost.epoch == epoch + 1


def check_read(h: Harness, model: Model, oid: int, offset: int, length: int) -> None:
    r = h.call("read", {"oid": oid, "offset": offset, "length": length})
    want = bytes(model.objects.get(oid, b""))
    assert r.data["size"] == len(want)
    assert r.bulk == want[offset:offset + length], (oid, offset, length)


def check_files(h: Harness, model: Model) -> None:
    """After a full commit the files themselves match the model, not just the overlay."""
    for oid in (1, 2, 0x102):
        path = object_path(h.ost.objects_dir, oid)
        if oid in model.objects:
            assert path.read_bytes() == bytes(model.objects[oid])
            assert h.ost._committed[oid] == len(model.objects[oid])
        else:
            assert not path.exists()
            assert oid not in h.ost._committed


async def run(h: Harness, program: list[tuple[Any, ...]]) -> None:
    model = Model()
    committed = Model()
    inflight: tuple[asyncio.Task[int], Model] | None = None

    async def finish() -> None:
        nonlocal inflight, committed
        if inflight is not None:
            await inflight[0]
            committed = inflight[1]
            inflight = None

    for step in program:
        kind = step[0]
        if kind == "append":
            _, oid, length, byte = step
            step = ("write", oid, len(model.objects.get(oid, b"")), length, byte)
            kind = "write"
        if kind == "write":
            _, oid, offset, length, byte = step
            data = bytes([byte]) * length
            r = h.call("write", {"oid": oid, "offset": offset}, data)
            model.write(oid, offset, data)
            assert r.data["size"] == len(model.objects[oid])
        elif kind == "punch":
            _, oid, size = step
            h.call("punch", {"oid": oid, "size": size})
            model.punch(oid, size)
        elif kind == "destroy":
            r = h.call("destroy", {"oids": [step[1]]})
            assert r.data["destroyed"] == (1 if model.objects.pop(step[1], None) is not None
                                           else 0)
        elif kind == "read":
            check_read(h, model, *step[1:])
        elif kind == "commit":
            await finish()
            await h.ost.commit()
            committed = model.copy()
            check_files(h, model)
        elif kind == "start_commit":
            await finish()
            task = asyncio.create_task(h.ost.commit())
            await asyncio.sleep(0)  # it swaps the log out, then its thread writes the files
            inflight = (task, model.copy())
        elif kind == "crash":
            await finish()
            h.crash()
            model = committed.copy()
        for oid in (1, 2, 0x102):  # every step, every object, whole
            check_read(h, model, oid, 0, 1024)
    await finish()
    await h.ost.commit()
    check_files(h, model)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ops, max_size=30))
def test_ost_matches_a_byte_model(program: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        h = Harness(Path(tmp) / "ost")
        try:
            asyncio.run(run(h, program))
        finally:
            h.ost._close_db()


# the overlay alone, against the same model, many more cases (no files, no fsync)
entries = st.one_of(
    st.builds(lambda o, n, b: Write(o, bytes([b]) * n),
              st.integers(0, 200), st.integers(0, 80), st.integers(1, 255)),
    st.builds(Punch, st.integers(0, 250)),
    st.just(Destroy()),
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=150), st.lists(entries, max_size=12), st.integers(0, 300),
       st.integers(0, 300), st.integers(0, 12))
def test_overlay_over_a_base_matches_the_model(base: bytes, log: list[Write | Punch | Destroy],
                                               start: int, length: int, split: int) -> None:
    model = Model({1: bytearray(base)})
    for e in log:
        if isinstance(e, Write):
            model.write(1, e.offset, e.data)
        elif isinstance(e, Punch):
            model.punch(1, e.size)
        else:
            model.objects[1] = bytearray()
    # the read path: committed bytes up to the committed size, holes as zeros, then the
    # in-flight log and the newer one in order
    buf = bytearray(length)
    valid = max(0, min(length, len(base) - start))
    buf[:valid] = base[start:start + valid]
    older, newer = PendingLog(), PendingLog()
    for i, e in enumerate(log):
        (older if i < split else newer).add(1, e)
    for part in (older, newer):
        overlay(part.get(1) or [], buf, start)
    want = bytes(model.objects[1])
    got = bytes(buf[:max(0, min(length, len(want) - start))])
    assert got == want[start:start + length]
