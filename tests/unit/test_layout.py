from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shoal.client.layout import (
    Layout,
    file_size_from_objects,
    map_range,
    object_size,
    osts_touched,
    split_piece,
)

layouts = st.builds(lambda size, count: Layout(size * 65536, tuple(range(count)), 7),
                    st.integers(1, 4), st.integers(1, 5))


def simulate(layout: Layout, offset: int, length: int) -> dict[int, dict[int, int]]:
    """byte-by-byte reference: stripe -> {obj offset: file offset}"""
    out: dict[int, dict[int, int]] = {}
    for pos in range(offset, offset + length):
        unit = pos // layout.stripe_size
        stripe = unit % layout.stripe_count
        obj = (unit // layout.stripe_count) * layout.stripe_size + pos % layout.stripe_size
        out.setdefault(stripe, {})[obj] = pos
    return out


@given(layouts, st.integers(0, 1 << 19), st.integers(1, 1 << 18), st.integers(1, 5))
def test_map_range_matches_byte_model(layout, offset, length, rpc_units):
    ref = simulate(layout, offset, length)
    got: dict[int, dict[int, int]] = {}
    for big in map_range(layout, offset, length):
        for piece in split_piece(big, rpc_units * 65536):
            assert piece.length <= rpc_units * 65536
            obj = piece.obj_offset
            for fo, n in piece.file_offsets:
                for i in range(n):
                    got.setdefault(piece.stripe, {})[obj + i] = fo + i
                obj += n
            assert obj == piece.obj_offset + piece.length
    assert got == ref


@given(layouts, st.integers(0, 1 << 21))
def test_object_sizes_and_glimpse_agree(layout, size):
    sizes = [object_size(layout, size, s) for s in range(layout.stripe_count)]
    assert sum(sizes) == size
    assert file_size_from_objects(layout, sizes) == size


@given(st.integers(1, 8), st.sampled_from([4096, 65536, 1 << 20]), st.integers(0, 1 << 24),
       st.integers(0, 1 << 24))
def test_osts_touched_are_those_the_range_maps_to(count: int, size: int, start: int,
                                                  length: int) -> None:
    layout = Layout(size, tuple(range(10, 10 + count)), 7)
    want = {layout.osts[p.stripe] for p in map_range(layout, start, length)} if length else set()
    assert osts_touched(layout, start, start + length) == want
