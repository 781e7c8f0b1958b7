"""A client's lock cache (ldlm/client.py): matching, callbacks, LRU, early cancel, replay."""

from __future__ import annotations

from shoal.ldlm.client import HeldLock, LockCache
from shoal.protocol.ldlm import Bits, Extent, Mode, covers

INO = ("ino", 5)


def test_a_stronger_lock_with_more_bits_serves_a_weaker_request() -> None:
    assert covers(Mode.PW, Bits.UPDATE | Bits.LOOKUP, Mode.PR, Bits.UPDATE)
    assert not covers(Mode.PR, Bits.UPDATE, Mode.PW, Bits.UPDATE)
    assert not covers(Mode.PR, Bits.UPDATE, Mode.PR, Bits.UPDATE | Bits.PERM)
    assert covers(Mode.PR, Extent(0, 99), Mode.PR, Extent(10, 20))
    assert not covers(Mode.PR, Extent(0, 99), Mode.PR, Extent(90, 120))


def test_which_held_mode_serves_which_request_is_lustres_match_table() -> None:
    served = {Mode.EX: "EX PW PR CW CR NL", Mode.PW: "PW PR CW CR NL", Mode.PR: "PR CR NL",
              Mode.CW: "CW CR NL", Mode.CR: "CR NL", Mode.NL: "NL"}
    for held, wanted in served.items():
        assert {m for m in Mode if covers(held, None, m, None)} == \
            {Mode(x) for x in wanted.split()}, held


def test_a_hit_needs_no_round_trip_and_a_callback_drops_what_it_covered() -> None:
    gone: list[HeldLock] = []
    cache = LockCache(dropped=gone.append)
    cache.add(11, INO, Mode.PR, Bits.UPDATE | Bits.LOOKUP, {"size": 4})
    hit = cache.match(INO, Mode.PR, Bits.UPDATE)
    assert hit is not None and hit.data == {"size": 4}
    assert cache.match(INO, Mode.PR, Bits.PERM) is None
    assert cache.called_back(11) is hit and gone == [hit]
    assert cache.match(INO, Mode.PR, Bits.UPDATE) is None
    assert cache.take_cancels() == [11] and cache.take_cancels() == []
    assert cache.called_back(11) is None  # twice: nothing more to do


def test_the_least_recently_used_go_past_the_limit() -> None:
    cache = LockCache(limit=2)
    for h in (1, 2):
        cache.add(h, ("ino", h), Mode.PR, Bits.UPDATE)
    assert cache.match(("ino", 1), Mode.PR, Bits.UPDATE) is not None  # 1 used last
    cache.add(3, ("ino", 3), Mode.PR, Bits.UPDATE)
    assert len(cache) == 2 and cache.take_cancels() == [2]
    assert cache.match(("ino", 2), Mode.PR, Bits.UPDATE) is None


def test_early_cancel_hands_over_only_the_conflicting_own_locks() -> None:
    cache = LockCache()
    cache.add(1, INO, Mode.PR, Bits.UPDATE)
    cache.add(2, INO, Mode.PR, Bits.LOOKUP)
    assert cache.early_cancel(INO, Mode.EX, Bits.UPDATE) == [1]
    assert cache.take_cancels() == []  # they travel with the request instead
    assert cache.match(INO, Mode.PR, Bits.LOOKUP) is not None


def test_replayed_locks_take_the_new_servers_handles_and_eviction_clears_all() -> None:
    gone: list[HeldLock] = []
    cache = LockCache(dropped=gone.append)
    cache.add(7, INO, Mode.PR, Bits.UPDATE, "attrs")
    assert [lk.handle for lk in cache.held()] == [7]
    cache.rehandle(7, 1007)
    assert cache.called_back(7) is None
    assert cache.match(INO, Mode.PR, Bits.UPDATE).handle == 1007
    cache.clear()
    assert len(cache) == 0 and [lk.data for lk in gone] == ["attrs"]
    assert cache.take_cancels() == []
