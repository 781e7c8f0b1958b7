"""target/ost_digests.py: PieceDigests, the OST's table of the BLAKE3 digests of the
HASH_PIECE pieces of its objects.

Pinned here:

- safety, by a model: against a real bytearray per object, after any sequence of writes
  (piece-aligned or not, with the pieces' digests, without them, or with a wrong number of
  them), truncations/extensions and destroys, every read the table answers (offset on a
  piece boundary, length clipped to the object's size as an OST clips it) gets exactly
  bulk_hash of the bytes the model holds there: a remembered digest never disagrees with the
  bytes. With a small max_pieces the table also never holds more than max_pieces pieces;
  with a large one, an aligned write with its digests is answered right after it;
- the answers: a whole remembered write gives bulk_hash of its bytes, one piece gives BLAKE3
  of that piece, a short last piece answers only a read that ends where it ended, and a read
  that ends mid-piece or starts off a piece boundary gets None;
- forgetting: a write without digests forgets exactly the pieces it touches (end exclusive),
  and forget(oid, start) drops every piece from the one holding start to the end;
- eviction: whole least recently used objects go once more than max_pieces are remembered,
  and a read the table answered makes its object the most recently used.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.net.frame import HASH_PIECE, BulkHasher, bulk_hash, list_digest
from shoal.target.ost_digests import PieceDigests

P = HASH_PIECE
POOL = random.Random(20240611).randbytes(8 * P)  # writes take their bytes from here
OIDS = (1, 2)
BIG = 1 << 18  # the default max_pieces: nothing is evicted in these tests


def pieces_of(data: bytes) -> list[bytes]:
    """The piece digests of data as the receiving protocol computes them."""
    h = BulkHasher()
    h.update(data)
    return h.piece_digests()


def blob(start: int, length: int) -> bytes:
    """length bytes of the pool from start, wrapping around."""
    start %= len(POOL)
    out = POOL[start:start + length]
    while len(out) < length:
        out += POOL[:length - len(out)]
    return out


# ---------------------------------------------------------------- the model-based property


@dataclass(frozen=True)
class Write:
    oid: int
    offset: int
    length: int
    seed: int  # where in POOL the bytes start (a repr of the bytes would be megabytes)
    digests: str  # "right": the data's piece digests; "none"; "short": one digest missing

    @property
    def data(self) -> bytes:
        return blob(self.seed, self.length)


@dataclass(frozen=True)
class Truncate:
    oid: int
    size: int


@dataclass(frozen=True)
class Destroy:
    oid: int


Op = Write | Truncate | Destroy

OID = st.sampled_from(OIDS)
# piece multiples, a byte either side of them, short tails, anything
LENGTHS = st.sampled_from([1, 100, P - 1, P, P + 1, 2 * P, 3 * P, 2 * P + 100]) | \
    st.integers(1, 4 * P)
ALIGNED = st.integers(0, 5).map(lambda k: k * P)
OFFSETS = ALIGNED | ALIGNED | st.integers(0, 6 * P) | ALIGNED.map(lambda o: o + 1) | \
    st.integers(1, 5).map(lambda k: k * P - 1) | st.integers(0, 5).map(lambda k: k * P + P // 2)
SIZES = ALIGNED | st.integers(0, 6 * P) | st.integers(0, 5).map(lambda k: k * P + 100)

writes = st.builds(Write, oid=OID, offset=OFFSETS, length=LENGTHS,
                   seed=st.integers(0, len(POOL) - 1),
                   digests=st.sampled_from(["right", "right", "right", "none", "short"]))
remembered = st.builds(Write, oid=OID, offset=ALIGNED, length=LENGTHS,
                       seed=st.integers(0, len(POOL) - 1), digests=st.just("right"))
truncates = st.builds(Truncate, oid=OID, size=SIZES)
destroys = st.builds(Destroy, oid=OID)


@st.composite
def shrink_and_regrow(draw: st.DrawFn) -> list[Op]:
    """A remembered write, its object cut inside or before it, then grown back past the cut
    by a write or a truncation: the sequence where a piece kept too long reads stale."""
    w = draw(remembered)
    end = w.offset + w.length
    cut = draw(st.integers(w.offset, end) | st.integers(0, end))
    grow: Op = draw(st.one_of(
        st.builds(Truncate, oid=st.just(w.oid), size=st.integers(cut, cut + 2 * P)),
        st.builds(Write, oid=st.just(w.oid), offset=st.integers(cut, cut + 2 * P), length=LENGTHS,
                  seed=st.integers(0, len(POOL) - 1), digests=st.sampled_from(["right", "none"]))))
    return [w, Truncate(w.oid, cut), grow]


@st.composite
def overwrite_within(draw: st.DrawFn) -> list[Op]:
    """A remembered write, then another write starting inside it (mostly off a piece
    boundary, or with no or too few digests): the pieces it touches must be forgotten."""
    w = draw(remembered)
    start = draw(st.integers(w.offset, w.offset + w.length - 1))
    over = draw(st.builds(Write, oid=st.just(w.oid), offset=st.just(start),
                          length=st.integers(1, 100) | LENGTHS,
                          seed=st.integers(0, len(POOL) - 1),
                          digests=st.sampled_from(["right", "none", "short"])))
    return [w, over]


single = st.one_of(remembered, writes, writes, truncates, truncates, destroys).map(lambda o: [o])
ops = st.lists(single | single | shrink_and_regrow() | overwrite_within(),
               min_size=1, max_size=10).map(
    lambda runs: [op for run in runs for op in run])


def apply(pd: PieceDigests, files: dict[int, bytearray], op: Op) -> None:
    """op on the model file and on the table, as the OST does it."""
    f = files[op.oid]
    if isinstance(op, Write):
        data = op.data
        if len(f) < op.offset:
            f.extend(bytes(op.offset - len(f)))
        f[op.offset:op.offset + len(data)] = data
        digests: list[bytes] | None = None
        if op.digests == "right":
            digests = pieces_of(data)
        elif op.digests == "short":
            digests = pieces_of(data)[:-1]
        pd.remember(op.oid, op.offset, len(data), digests)
    elif isinstance(op, Truncate):
        old = len(f)
        if op.size < old:
            del f[op.size:]
        else:
            f.extend(bytes(op.size - old))
        pd.forget(op.oid, min(op.size, old))
    else:
        f.clear()
        pd.forget(op.oid)


def read_lengths(size: int, off: int, extra: list[int]) -> set[int]:
    """Lengths of reads at off: to the end, past it, whole pieces, ending mid-piece."""
    rest = size - off
    return {rest, rest + 1, rest + P, P, 2 * P, 3 * P, P // 2, P + 7, rest - 1, rest // 2,
            max(1, rest - P), *extra}


def check_reads(pd: PieceDigests, files: dict[int, bytearray], extra: list[int]) -> None:
    for oid, f in files.items():
        size = len(f)
        for k in range(size // P + 2):
            off = k * P
            for length in read_lengths(size, off, extra):
                n = min(length, size - off)  # an OST clips a read to the object's size
                if n <= 0:
                    continue
                got = pd.digest(oid, off, n)
                if got is not None:
                    assert got == bulk_hash(bytes(f[off:off + n])), (oid, off, n, size)


@settings(max_examples=40, deadline=None)
@given(steps=ops, max_pieces=st.sampled_from([BIG, BIG, 4, 10]),
       extra=st.lists(st.integers(1, 5 * P), max_size=3))
def test_a_remembered_digest_never_disagrees_with_the_bytes(
        steps: list[Op], max_pieces: int, extra: list[int]) -> None:
    pd = PieceDigests(max_pieces=max_pieces)
    files: dict[int, bytearray] = {oid: bytearray() for oid in OIDS}
    for op in steps:
        apply(pd, files, op)
        assert len(pd) <= max_pieces
        if (max_pieces == BIG and isinstance(op, Write) and op.digests == "right"
                and op.offset % P == 0):
            # the write just remembered answers a read of exactly itself
            got = pd.digest(op.oid, op.offset, op.length)
            assert got == bulk_hash(op.data)
        check_reads(pd, files, extra)


# ------------------------------------------------------------------------ the answers


def test_an_aligned_write_answers_reads_of_its_pieces() -> None:
    data = blob(5, 3 * P + 100)
    pd = PieceDigests()
    pd.remember(7, 0, len(data), pieces_of(data))
    assert len(pd) == 4
    assert pd.digest(7, 0, len(data)) == bulk_hash(data)
    assert pd.digest(7, P, P) == blake3(data[P:2 * P]).digest() == bulk_hash(data[P:2 * P])
    assert pd.digest(7, P, 2 * P + 100) == bulk_hash(data[P:])
    assert pd.digest(7, 3 * P, 100) == blake3(data[3 * P:]).digest()
    assert pd.digest(7, 0, 2 * P) == list_digest(pieces_of(data)[:2])
    # a read ending mid-piece: its last piece's length differs from the remembered one
    assert pd.digest(7, 0, P + P // 2) is None
    assert pd.digest(7, 0, 3 * P + 99) is None
    assert pd.digest(7, 3 * P, P) is None  # the short last piece answers only up to its end
    assert pd.digest(7, 0, 4 * P) is None
    # off a piece boundary, past the remembered pieces, another object, nothing to read
    assert pd.digest(7, 100, P) is None
    assert pd.digest(7, 1, 3 * P + 99) is None
    assert pd.digest(7, 4 * P, 100) is None
    assert pd.digest(8, 0, P) is None
    assert pd.digest(7, 0, 0) is None


def test_a_write_at_a_later_aligned_offset_adds_its_pieces() -> None:
    a, b = blob(11, 2 * P), blob(99, P + 3)
    pd = PieceDigests()
    pd.remember(1, 0, len(a), pieces_of(a))
    pd.remember(1, 2 * P, len(b), pieces_of(b))
    assert len(pd) == 4
    assert pd.digest(1, 0, 3 * P + 3) == bulk_hash(a + b)
    assert pd.digest(1, P, 2 * P) == bulk_hash(a[P:] + b[:P])


def test_a_write_not_on_a_piece_boundary_or_with_the_wrong_digests_is_not_remembered() -> None:
    data = blob(3, 2 * P)
    pd = PieceDigests()
    pd.remember(1, 10, len(data), pieces_of(data))
    pd.remember(2, 0, len(data), pieces_of(data)[:1])
    pd.remember(3, 0, len(data), [])
    assert len(pd) == 0
    assert pd.digest(1, 0, 2 * P) is None
    assert pd.digest(1, P, P) is None
    assert pd.digest(2, 0, P) is None
    assert pd.digest(3, 0, P) is None


# ------------------------------------------------------------------------- forgetting


def test_a_partial_overwrite_forgets_only_the_piece_it_touches() -> None:
    data = blob(17, 4 * P)
    ds = pieces_of(data)
    pd = PieceDigests()
    pd.remember(1, 0, len(data), ds)
    pd.remember(1, P + 10, 20, None)  # inside piece 1 only
    assert len(pd) == 3
    assert pd.digest(1, P, P) is None
    assert pd.digest(1, 0, 2 * P) is None
    assert pd.digest(1, 0, 4 * P) is None
    assert pd.digest(1, 0, P) == ds[0]
    assert pd.digest(1, 2 * P, 2 * P) == list_digest(ds[2:])
    # one straddling the boundary of pieces 2 and 3 forgets both
    pd.remember(1, 3 * P - 10, 20, None)
    assert len(pd) == 1
    assert pd.digest(1, 2 * P, P) is None
    assert pd.digest(1, 3 * P, P) is None
    assert pd.digest(1, 0, P) == ds[0]


def test_forgetting_is_end_exclusive_and_an_empty_range_forgets_nothing() -> None:
    data = blob(23, 3 * P)
    ds = pieces_of(data)
    pd = PieceDigests()
    pd.remember(1, 0, len(data), ds)
    pd.forget(1, 0, P)  # exactly piece 0
    assert pd.digest(1, 0, P) is None
    assert pd.digest(1, P, 2 * P) == list_digest(ds[1:])
    pd.forget(1, 2 * P, 2 * P)
    pd.remember(1, 2 * P, 0, None)
    pd.remember(1, 2 * P, 0, ds)
    assert len(pd) == 2
    assert pd.digest(1, 2 * P, P) == ds[2]


def test_a_range_wider_than_what_is_remembered_forgets_only_inside_it() -> None:
    """Few pieces kept, a long range forgotten: the pieces past its end stay."""
    data = blob(31, P)
    d = pieces_of(data)
    pd = PieceDigests()
    pd.remember(1, P, P, d)
    pd.remember(1, 10 * P, P, d)
    pd.forget(1, 0, 5 * P)
    assert len(pd) == 1
    assert pd.digest(1, P, P) is None
    assert pd.digest(1, 10 * P, P) == d[0]


def test_forget_to_the_end_drops_the_piece_holding_start_and_all_after() -> None:
    data = blob(29, 4 * P)
    ds = pieces_of(data)
    pd = PieceDigests()
    pd.remember(1, 0, len(data), ds)
    pd.remember(2, 0, len(data), ds)
    pd.forget(1, P + 1)  # a truncation to P + 1 bytes
    assert len(pd) == 5
    assert pd.digest(1, 0, P) == ds[0]
    assert pd.digest(1, P, P) is None
    assert pd.digest(1, 3 * P, P) is None
    pd.forget(1, P)  # a truncation on a boundary keeps the pieces before it
    assert pd.digest(1, 0, P) == ds[0]
    pd.forget(1)  # a destroy
    assert len(pd) == 4
    assert pd.digest(1, 0, P) is None
    assert pd.digest(2, 0, 4 * P) == bulk_hash(data)
    pd.forget(9)  # an object with nothing remembered
    assert len(pd) == 4
    pd.clear()
    assert len(pd) == 0
    assert pd.digest(2, 0, P) is None


# --------------------------------------------------------------------------- eviction


def remember_four(pd: PieceDigests, oid: int) -> bytes:
    data = blob(oid * 1000, 4 * P)
    pd.remember(oid, 0, len(data), pieces_of(data))
    assert len(pd) <= pd.max_pieces
    return data


def assert_evicted(pd: PieceDigests, gone: int, kept: dict[int, bytes]) -> None:
    assert len(pd) == 8
    for k in range(4):
        assert pd.digest(gone, k * P, P) is None
    for oid, data in kept.items():
        assert pd.digest(oid, 0, 4 * P) == bulk_hash(data)


def test_the_least_recently_remembered_object_is_evicted_whole() -> None:
    pd = PieceDigests(max_pieces=8)
    remember_four(pd, 1)
    two = remember_four(pd, 2)
    assert len(pd) == 8
    three = remember_four(pd, 3)  # 12 pieces: 1, the least recently used, goes whole
    assert_evicted(pd, gone=1, kept={2: two, 3: three})


def test_a_read_makes_its_object_the_most_recently_used() -> None:
    pd = PieceDigests(max_pieces=8)
    one = remember_four(pd, 1)
    remember_four(pd, 2)
    assert pd.digest(1, P, P) == blake3(one[P:2 * P]).digest()  # 1 is now the newer
    three = remember_four(pd, 3)
    assert_evicted(pd, gone=2, kept={1: one, 3: three})


def test_remembering_more_of_an_object_makes_it_the_most_recently_used() -> None:
    pd = PieceDigests(max_pieces=8)
    one = remember_four(pd, 1)
    remember_four(pd, 2)
    tail = blob(7, P)
    pd.remember(1, 4 * P, P, pieces_of(tail))  # 9 pieces: 2 is the least recently used
    assert len(pd) == 5
    assert pd.digest(2, 0, P) is None
    assert pd.digest(1, 0, 5 * P) == bulk_hash(one + tail)
