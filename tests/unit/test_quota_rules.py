"""protocol/quota.py: the master's rules for grants, played against random asks of four
slaves that allocate only within their grants (as target/ost_quota.py enforces), as the
master applies them (target/mdt_quota.py `_grant`): the grants never sum past the hard
limit, a sync never takes back what a slave uses, and an ask for more never lowers one."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.protocol import quota as q

SLAVES = 4
step = st.tuples(st.integers(0, SLAVES - 1), st.integers(0, 4096), st.integers(0, 8192),
                 st.booleans())


@settings(max_examples=300, deadline=None)
@given(hard=st.integers(1, 100_000), steps=st.lists(step, max_size=60),
       inflight=st.integers(0, 8192))
def test_grants_never_sum_past_the_hard_limit(hard: int, steps: list[tuple[int, int, int,
                                                                            bool]],
                                              inflight: int) -> None:
    lim = q.Limits(bhard=hard)
    granted = [0] * SLAVES
    used = [0] * SLAVES
    headroom = [q.QUNIT_MIN["b"]] * SLAVES
    for i, write, more, sync in steps:
        used[i] += min(write, granted[i] - used[i])  # within its grant, as an OST allows
        need = used[i] + more
        sent_used = used[i]
        others = sum(granted) - granted[i]
        others_used = sum(used) - used[i]
        if sync:
            keep = min(granted[i], need + headroom[i])  # the OST keeps to it meanwhile
            used[i] += min(inflight, max(0, keep - used[i]))  # writes while it travels
            new = max(q.resync(lim, "b", need=need, used=sent_used, current=granted[i],
                               others=others, others_used=others_used, slaves=SLAVES,
                               now=0.0), min(granted[i], keep))
        else:
            new = max(q.grant(lim, "b", need=need, used=sent_used, others=others,
                              others_used=others_used, slaves=SLAVES, now=0.0), granted[i])
        headroom[i] = q.qunit(lim, "b", SLAVES, hard - others_used - sent_used)
        assert new >= used[i]  # what the slave went on using is still granted
        granted[i] = new
        assert sum(granted) <= hard, (granted, used)


def test_a_sync_keeps_a_grant_within_a_headroom_and_takes_back_what_is_past_it() -> None:
    lim = q.Limits(bhard=1 << 20)
    args = {"used": 100, "others": 0, "others_used": 0, "slaves": 4, "now": 0.0}
    unit = q.qunit(lim, "b", 4, (1 << 20) - 100)
    assert q.resync(lim, "b", need=100, current=100 + unit, **args) == 100 + unit
    assert q.resync(lim, "b", need=100, current=100 + 3 * unit, **args) == 100 + unit
    assert q.resync(lim, "b", need=100, current=50, **args) == 100 + unit


def test_grace_lifts_when_usage_is_back_under_and_the_soft_limit_holds_once_it_ran_out() -> None:
    lim = q.Limits(bsoft=100, bhard=1000)
    end = q.grace_after(lim, "b", 150, now=10.0, grace=60.0)
    assert end == 70.0
    lim.btime = end
    assert q.cap(lim, "b", 69.0) == 1000 and q.cap(lim, "b", 70.0) == 100
    assert q.grace_after(lim, "b", 90, now=80.0, grace=60.0) == 0.0
    assert q.grace_left(70.0, 10.0) == "1m" and q.grace_left(70.0, 80.0) == "none"
    assert q.grace_left(0.0, 1.0) == "-" and q.grace_left(604800 + 3661, 0) == "1w1h1m1s"
