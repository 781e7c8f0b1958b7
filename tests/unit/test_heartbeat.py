"""The heartbeat (agent/heartbeat.py) against a real SQLite store: leases renewed from a thread
of its own, self-fencing (serving_allowed), a stuck event loop stopping the renewals, a lease
revoked behind the heartbeat's back, and the failsafe while the store is unreachable.

TTLs are short (0.6 s: renewals every 0.2 s, serving stops 0.3 s before the lease's earliest
expiry) so the whole file runs in a few seconds. Where a test can pass `now=` it does, rather
than sleep and race the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from shoal.agent.heartbeat import SELF_FENCE_MARGIN, Heartbeat
from shoal.store import open_store
from shoal.store.base import Store

TTL = 0.6
PERIOD = TTL / 3
OWNER = "/shoal/targets/scratch-OST0000/owner"
ALIVE = "/shoal/nodes/oss0/alive"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path / 's.db'}"


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    s = open_store(url)
    yield s
    await s.close()


@contextlib.asynccontextmanager
async def running(hb: Heartbeat) -> AsyncIterator[Heartbeat]:
    """Start the heartbeat and tick loop_alive() from this loop, as the agent's main loop does."""
    hb.start()

    async def ticker() -> None:
        while True:
            hb.loop_alive()
            await asyncio.sleep(0.02)

    task = asyncio.create_task(ticker())
    try:
        yield hb
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.to_thread(hb.stop)
        assert hb._thread is not None and not hb._thread.is_alive()


async def until(cond: Callable[[], bool], timeout: float) -> float:
    """Seconds until cond() held; fails the test after `timeout`."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


async def granted(store: Store, key: str) -> tuple[int, float]:
    """A lease bound to `key`, and the monotonic time its grant was sent."""
    sent = time.monotonic()
    lease = await store.grant_lease(TTL)
    await store.put(key, b"x", lease=lease.id)
    return lease.id, sent


# -- serving_allowed: the self-fencing arithmetic (no thread, no sleeps) --------------------

def test_serving_allowed_until_the_margin_before_the_earliest_expiry(url: str) -> None:
    hb = Heartbeat(url, ttl=TTL, stuck_after=1.0)
    t0 = 5000.0
    assert not hb.serving_allowed("svc", now=t0)  # never tracked
    hb.track("svc", 7, t0)
    assert hb.lease("svc") == 7
    assert hb.serving_allowed("svc", now=t0)
    edge = t0 + TTL - SELF_FENCE_MARGIN
    assert hb.serving_allowed("svc", now=edge - 0.001)
    assert not hb.serving_allowed("svc", now=edge)
    assert not hb.serving_allowed("svc", now=t0 + TTL)  # the lease may be gone by now
    hb.track("svc", 7, t0 + 1.0)  # a renewal sent later moves the window
    assert hb.serving_allowed("svc", now=edge + 0.5)
    assert hb.untrack("svc") == 7
    assert not hb.serving_allowed("svc", now=t0)
    assert hb.untrack("svc") is None
    assert hb.lease("svc") is None


# -- renewals on the thread ------------------------------------------------------------------

async def test_a_granted_lease_outlives_its_ttl_and_lapses_once_renewals_stop(
        url: str, store: Store) -> None:
    lease, sent = await granted(store, OWNER)
    hb = Heartbeat(url, ttl=TTL, stuck_after=2.0)
    hb.track("svc", lease, sent)
    async with running(hb):
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3 * TTL:
            await asyncio.sleep(TTL / 4)
            assert await store.get(OWNER) is not None
            # self-fencing is conservative: the heartbeat never believes its lease lives
            # longer than the store will keep it
            believed_until = time.time() + hb.remaining("svc")
            deadline = await store.lease_deadline(lease)  # type: ignore[attr-defined]
            assert deadline is not None and believed_until <= deadline + 0.005
        assert hb.renewals >= 5
        assert hb.failures == 0 and hb.store_ok and not hb.stuck
        kv = await store.get(OWNER)
        assert kv is not None and kv.lease == lease
    # renewals stopped: the node stops serving before the store drops its key
    now, wall = time.monotonic(), time.time()
    rem = hb.remaining("svc")
    assert now + rem > sent + TTL  # the renewals did move the lease's validity on
    assert 0 < rem <= TTL
    assert hb.serving_allowed("svc", now=now + rem - SELF_FENCE_MARGIN - 0.02)
    assert not hb.serving_allowed("svc", now=now + rem - SELF_FENCE_MARGIN + 0.02)
    stops_serving_at = wall + rem - SELF_FENCE_MARGIN
    t0 = time.monotonic()
    while await store.get(OWNER) is not None:
        assert time.monotonic() - t0 < 3 * TTL, "the lease outlived its holder's renewals"
        await asyncio.sleep(0.02)
    # the store dropped it no earlier than the margin after the node stopped serving
    assert time.time() > stops_serving_at + SELF_FENCE_MARGIN / 2


async def test_a_stuck_event_loop_stops_the_renewals_and_the_lease_expires(
        url: str, store: Store) -> None:
    lease, sent = await granted(store, OWNER)
    lost: list[str] = []
    stuck_after = 0.4
    hb = Heartbeat(url, ttl=TTL, stuck_after=stuck_after, on_lost=lost.append)
    hb.track("svc", lease, sent)
    async with running(hb):
        await asyncio.sleep(TTL / 2)
        assert hb.renewals >= 1 and not hb.stuck
        # the main loop hangs (a blocking call): nothing ticks loop_alive() any more
        time.sleep(stuck_after + PERIOD + TTL + 0.5)
        assert hb.stuck
        assert hb.failures == 0  # the store was fine: the renewals were withheld
        assert await store.get(OWNER) is None  # the lease expired; a backup may take over
        # the loop runs again: the heartbeat finds its lease gone and says so
        await until(lambda: bool(lost), 3.0)
        assert lost == ["svc"]
        assert not hb.serving_allowed("svc")
        assert hb.lease("svc") is None
        assert not hb.stuck


async def test_a_lease_revoked_behind_its_back_is_reported_once(url: str, store: Store) -> None:
    """A revocation before the lease's earliest expiry (etcd 3.4's stale leader revokes every
    lease it thought expired while it was paused, etcd issue 15247) is reported at once, so
    the keys are taken back; serving goes on until the time the renewals earned, no longer:
    until then no backup may act without asking this node first (agent/takeover.py)."""
    node_lease, node_sent = await granted(store, ALIVE)
    svc_lease, svc_sent = await granted(store, OWNER)
    lost: asyncio.Queue[str] = asyncio.Queue()
    hb = Heartbeat(url, ttl=TTL, stuck_after=2.0, on_lost=lost.put_nowait)
    hb.track("node", node_lease, node_sent)
    hb.track("svc", svc_lease, svc_sent)
    async with running(hb):
        await asyncio.sleep(PERIOD)
        await store.revoke_lease(svc_lease)
        assert await asyncio.wait_for(lost.get(), 3.0) == "svc"
        now = time.monotonic()
        earned = now + hb.remaining("svc")  # the last renewal's send time + TTL
        assert now < earned <= now + TTL
        assert hb.lease("svc") is None
        assert hb.serving_allowed("svc", now=earned - SELF_FENCE_MARGIN - 0.01)
        assert not hb.held("svc")  # but a takeover under it stops (agent/takeover.py)
        assert not hb.serving_allowed("svc", now=earned - SELF_FENCE_MARGIN + 0.01)
        await asyncio.sleep(TTL)
        assert not hb.serving_allowed("svc")  # no renewal extends a revoked lease
        # the other lease is untouched and still renewed past its TTL
        assert hb.lease("node") == node_lease
        await asyncio.sleep(1.5 * TTL)
        assert await store.get(ALIVE) is not None
        assert hb.serving_allowed("node", now=time.monotonic() + 0.05)
        assert lost.empty()  # reported once, not at every renewal
        # a new lease under the same name is renewed again
        new_lease, new_sent = await granted(store, OWNER)
        hb.track("svc", new_lease, new_sent)
        await asyncio.sleep(1.5 * TTL)
        kv = await store.get(OWNER)
        assert kv is not None and kv.lease == new_lease
        assert lost.empty()


# -- the store unreachable: failsafe -------------------------------------------------------

def unreachable_url(tmp_path: Path) -> str:
    # a directory where the database file should be: every call fails, as a dead store does
    d = tmp_path / "store-is-a-directory"
    d.mkdir()
    return f"sqlite://{d}"


async def test_store_unreachable_without_failsafe_stops_serving(tmp_path: Path) -> None:
    hb = Heartbeat(unreachable_url(tmp_path), ttl=TTL, stuck_after=2.0)
    hb.track("svc", 1, time.monotonic())
    async with running(hb):
        assert hb.serving_allowed("svc")
        spent = await until(lambda: not hb.serving_allowed("svc"), 2.0)
        assert spent <= TTL - SELF_FENCE_MARGIN + 0.2
        await until(lambda: hb.failures >= 2, 2.0)
        assert not hb.store_ok and hb.failsafe_until == 0.0


@pytest.mark.parametrize("silence", ["says no", "hangs"])
async def test_failsafe_keeps_serving_while_the_partners_answer(
        tmp_path: Path, silence: str, caplog: pytest.LogCaptureFixture) -> None:
    answering = True
    probes = 0

    async def probe() -> bool:
        nonlocal probes
        probes += 1
        if answering:
            return True
        if silence == "hangs":
            await asyncio.sleep(30)
        return False

    hb = Heartbeat(unreachable_url(tmp_path), ttl=TTL, stuck_after=2.0, failsafe_probe=probe)
    hb.track("svc", 1, time.monotonic())
    async with running(hb):
        await asyncio.sleep(2 * TTL)  # far past the lease's own validity
        assert not hb.store_ok and hb.failures >= 3
        assert probes >= 3
        assert hb.remaining("svc") < 0  # nothing was renewed...
        assert hb.serving_allowed("svc")  # ...but every partner answers: keep serving
        # the partners stop answering: serving stops within a TTL (the last answer's reach)
        answering = False
        spent = await until(lambda: not hb.serving_allowed("svc"), 3.0)
        assert spent <= TTL + 2 * PERIOD + 0.2
        await asyncio.sleep(2 * PERIOD)
        assert not hb.serving_allowed("svc")  # and it stays stopped
    lapses = [r for r in caplog.records if "failsafe lapses" in r.getMessage()]
    assert len(lapses) == 1  # said once, not at every renewal of the outage


async def test_the_store_back_after_a_failsafe_is_said_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """(It was said at every renewal, every 0.67 s for hours, in the rig's daemon logs.)"""

    async def probe() -> bool:
        return True

    url = unreachable_url(tmp_path)
    hb = Heartbeat(url, ttl=TTL, stuck_after=2.0, failsafe_probe=probe)
    hb.track("svc", 1, time.monotonic())
    async with running(hb):
        await until(lambda: hb.failsafe_until > 0, 2.0)
        (tmp_path / "store-is-a-directory").rmdir()  # the store is back
        await until(lambda: hb.store_ok, 3.0)
        await asyncio.sleep(5 * PERIOD)
    said = [r for r in caplog.records if "store reachable again" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]
