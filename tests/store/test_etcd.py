"""etcd-only behaviour on real etcd processes: members killed, hung and restarted, the client
reconnecting, watches that miss nothing across it all, and an unreachable store."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from contextlib import aclosing
from pathlib import Path

import pytest

from shoal.errors import ConfigError, StoreError, StoreUnreachable
from shoal.store import Compacted, Store, WatchEvent, open_store
from shoal.store.etcd import EtcdStore
from shoal.store.etcd_server import EtcdCluster, free_ports
from tests.store.watching import take

pytestmark = pytest.mark.etcd


async def retrying(op, timeout: float = 15.0):  # noqa: ANN001, ANN201
    """Run op until it succeeds; StoreUnreachable is allowed only for a while (elections)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await op()
        except StoreUnreachable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def history(store: Store, prefix: str, start: int, n: int) -> list[WatchEvent]:
    """What a fresh watch replays: the ground truth a live watch must equal."""
    async with aclosing(store.watch(prefix, start)) as events:
        return await take(events, n)


async def test_one_member_killed_reads_and_writes_continue(etcd_trio: EtcdCluster) -> None:
    async with open_store(etcd_trio.url) as store:
        await store.put("/k", b"before")
        leader = etcd_trio.leader()
        assert leader is not None
        etcd_trio.kill_member(leader)  # the worst member to lose
        # Writes may wait out one election, but nothing is lost and the store carries on.
        rev = await retrying(lambda: store.put("/k", b"after"))
        for i in range(20):
            kv = await store.get("/k")
            assert kv is not None and kv.mod_revision >= rev
            assert await store.compare_and_swap("/k", str(i).encode(), mod_revision=kv.mod_revision)
        lease = await store.grant_lease(2)
        assert await store.keepalive(lease.id) == 2.0
        assert etcd_trio.leader() not in (None, leader)


async def test_hung_follower_does_not_stall_reads_or_keepalives(etcd_trio: EtcdCluster) -> None:
    async with open_store(etcd_trio.url) as store:
        await store.put("/k", b"v")
        lease = await store.grant_lease(3)
        leader = etcd_trio.leader()
        follower = next(i for i in range(3) if i != leader)
        etcd_trio.kill_member(follower, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            for _ in range(6):  # round-robin sends some of these to the frozen member
                kv = await store.get("/k")
                assert kv is not None and kv.value == b"v"
                assert await store.keepalive(lease.id) == 3.0
            assert time.monotonic() - t0 < 15
        finally:
            etcd_trio.kill_member(follower, signal.SIGCONT)


async def test_watch_misses_nothing_across_leader_kill(etcd_trio: EtcdCluster) -> None:
    async with open_store(etcd_trio.url) as store:
        start = await store.put("/w/start", b"")
        async with aclosing(store.watch("/w/", start + 1)) as events:
            for i in range(5):
                await store.put(f"/w/{i}", b"x")
            first = await take(events, 5)
            leader = etcd_trio.leader()
            assert leader is not None
            etcd_trio.kill_member(leader)
            for i in range(5, 10):
                await retrying(lambda i=i: store.put(f"/w/{i}", b"x"))
            _, rev = await store.range("/w/")
            n = rev - start  # one event per revision since start: none may be missing
            rest = await take(events, n - 5)
        live = first + rest
        assert {e.key for e in live} == {f"/w/{i}" for i in range(10)}
        assert live == await history(store, "/w/", start + 1, n)


async def test_client_reconnects_after_etcd_restart(etcd_solo: EtcdCluster) -> None:
    store = EtcdStore(list(_endpoints(etcd_solo)), timeout=1.0, reconnect_grace=30)
    try:
        start = await store.put("/r/a", b"1")
        async with aclosing(store.watch("/r/", start)) as events:
            assert [e.key for e in await take(events, 1)] == ["/r/a"]
            etcd_solo.stop_member(0)
            t0 = time.monotonic()
            with pytest.raises(StoreUnreachable) as err:
                await store.put("/r/b", b"2")
            assert etcd_solo.url.removeprefix("etcd://") in str(err.value)
            assert time.monotonic() - t0 < 10
            await asyncio.to_thread(etcd_solo.start_member, 0)
            kv = await retrying(lambda: store.get("/r/a"))
            assert kv is not None and kv.value == b"1"  # the data survived the restart
            await store.put("/r/c", b"3")
            rest = await take(events, 1)  # the watch resumed on its own
        assert [e.key for e in rest] == ["/r/c"]
        assert rest[0].revision == start + 1  # the failed put never happened
    finally:
        await store.close()


async def test_watch_behind_compaction_after_reconnect_raises_compacted(
    etcd_solo: EtcdCluster,
) -> None:
    """The watch is cut off, history it has not seen is written and compacted meanwhile:
    resuming must raise Compacted (the caller re-reads) rather than skip those events."""
    async with open_store(etcd_solo.url) as store, open_store(etcd_solo.url) as other:
        start = await store.put("/c/a", b"1")
        events = store.watch("/c/", start)
        assert (await asyncio.wait_for(anext(events), 10)).key == "/c/a"
        await asyncio.to_thread(etcd_solo.restart_member, 0)  # the watch stream breaks
        await retrying(lambda: other.put("/c/b", b"2"))
        last = await other.put("/c/c", b"3")
        await other.compact(last)
        with pytest.raises(Compacted) as err:
            await asyncio.wait_for(anext(events), 20)
        assert err.value.compact_revision == last


def test_cluster_at_reopens_the_kept_cluster(etcd_solo: EtcdCluster) -> None:
    again = EtcdCluster.at(etcd_solo.data_dir, size=1)
    assert again.url == etcd_solo.url
    with pytest.raises(ConfigError, match="1 members, not 3"):
        EtcdCluster.at(etcd_solo.data_dir, size=3)
    fresh = EtcdCluster.at(etcd_solo.data_dir / "elsewhere", size=3)
    assert fresh.members == [] and fresh.size == 3


async def test_watch_gives_up_with_store_unreachable(etcd_solo: EtcdCluster) -> None:
    store = EtcdStore(list(_endpoints(etcd_solo)), timeout=0.3, reconnect_grace=1.0)
    try:
        rev = await store.put("/g/a", b"1")
        async with aclosing(store.watch("/g/", rev + 1)) as events:
            waiter = asyncio.ensure_future(take(events, 1))
            await asyncio.sleep(0.2)
            etcd_solo.stop_member(0)
            with pytest.raises(StoreUnreachable, match=str(etcd_solo.members[0].client_port)):
                await asyncio.wait_for(waiter, 20)
    finally:
        await store.close()


async def test_unreachable_store_names_its_url() -> None:
    port = free_ports(1)[0]  # nothing listens here
    url = f"etcd://127.0.0.1:{port}?timeout=0.3"
    store = open_store(url)
    for call in (
        lambda: store.get("/k"),
        lambda: store.put("/k", b"v"),
        lambda: store.create("/k", b"v"),
        lambda: store.keepalive(1),
    ):
        t0 = time.monotonic()
        with pytest.raises(StoreUnreachable, match=f"etcd://127.0.0.1:{port}"):
            await call()
        assert time.monotonic() - t0 < 5
    await store.close()


async def test_lease_ttl_is_whole_seconds(etcd_cluster: EtcdCluster) -> None:
    async with open_store(etcd_cluster.url) as store:
        lease = await store.grant_lease(1.2)
        assert lease.ttl == 2.0
        assert isinstance(store, EtcdStore)
        remaining = await store.lease_ttl(lease.id)
        assert remaining is not None and 0 < remaining <= 2
        await store.revoke_lease(lease.id)
        assert await store.lease_ttl(lease.id) is None


async def test_store_refuses_a_second_event_loop(etcd_cluster: EtcdCluster) -> None:
    async with open_store(etcd_cluster.url) as store:
        await store.put("/loop/k", b"v")
        errors: list[Exception] = []

        def other_thread() -> None:
            try:
                asyncio.run(store.get("/loop/k"))
            except Exception as exc:  # reported to the test below
                errors.append(exc)

        t = threading.Thread(target=other_thread)
        t.start()
        t.join(10)
        assert len(errors) == 1 and isinstance(errors[0], StoreError)
        assert "another event loop" in str(errors[0])
        assert await store.get("/loop/k") is not None  # the owner loop is unaffected


def test_own_store_per_thread_loop(etcd_cluster: EtcdCluster) -> None:
    """The agent's keepalive thread runs its own loop with its own store."""
    results: list[float] = []

    def keeper(lease_id: int) -> None:
        async def run() -> None:
            async with open_store(etcd_cluster.url) as mine:
                for _ in range(3):
                    results.append(await mine.keepalive(lease_id))

        asyncio.run(run())

    async def main() -> None:
        async with open_store(etcd_cluster.url) as store:
            lease = await store.grant_lease(5)
            t = threading.Thread(target=keeper, args=(lease.id,))
            t.start()
            while t.is_alive():
                assert await store.revision() > 0
                await asyncio.sleep(0.01)
            await store.revoke_lease(lease.id)

    asyncio.run(main())
    assert results == [5.0, 5.0, 5.0]


def test_cluster_state_file_lets_another_process_stop_it(etcd_solo: EtcdCluster) -> None:
    pid = etcd_solo.members[0].pid
    attached = EtcdCluster.attach(etcd_solo.data_dir)  # as `shoal down` would, from afar
    assert attached.url == etcd_solo.url and attached.members[0].pid == pid
    attached.stop()
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    with pytest.raises(StoreUnreachable):
        asyncio.run(_probe(etcd_solo.url + "?timeout=0.3"))
    attached.start_member(0)  # and start it again, on the same ports and data
    asyncio.run(_probe(etcd_solo.url))
    attached.stop()


async def _probe(url: str) -> None:
    async with open_store(url) as store:
        await store.get("/k")


def _endpoints(cluster: EtcdCluster) -> list[tuple[str, int]]:
    return [("127.0.0.1", m.client_port) for m in cluster.members]


async def test_member_named_by_hostname(etcd_cluster: EtcdCluster) -> None:
    port = etcd_cluster.members[0].client_port
    async with open_store(f"etcd://localhost:{port}") as store:
        rev = await store.put("/host/k", b"v")
        kv = await store.get("/host/k")
        assert kv is not None and kv.mod_revision == rev
    async with open_store("etcd://no-such-host.invalid:2379?timeout=0.5") as store:
        with pytest.raises(StoreUnreachable, match="no-such-host.invalid"):
            await store.get("/host/k")


async def test_a_paused_member_costs_no_lease_renewal(etcd_trio: EtcdCluster) -> None:
    """Issue 18's second bug: with one member of three paused (SIGSTOP: its connections stay
    up), every node's lease renewals must still succeed. A round-robin client sent a third
    of them to the paused member, they missed their period, and leases lapsed."""
    from shoal.agent.heartbeat import Heartbeat

    leader = etcd_trio.leader()
    frozen = next(i for i in range(3) if i != leader)
    order = [frozen] + [i for i in range(3) if i != frozen]  # the one the client starts on
    url = "etcd://" + ",".join(f"127.0.0.1:{etcd_trio.members[i].client_port}" for i in order)
    async with open_store(url) as store:
        hb = Heartbeat(url, ttl=2.0, stuck_after=30.0)
        names = [f"t{i}" for i in range(4)]
        for name in names:
            sent = time.monotonic()
            hb.track(name, (await store.grant_lease(2.0)).id, sent)
        hb.start()
        await asyncio.sleep(1.0)  # renewing, through the member about to be paused
        etcd_trio.kill_member(frozen, signal.SIGSTOP)
        lapsed: set[str] = set()
        try:
            for _ in range(50):  # 5 s paused
                hb.loop_alive()
                lapsed |= {n for n in names if not hb.serving_allowed(n)}
                await asyncio.sleep(0.1)
        finally:
            etcd_trio.kill_member(frozen, signal.SIGCONT)
            hb.stop()
        assert not lapsed and hb.failures == 0, (lapsed, hb.failures, hb.renewals)
        assert hb.renewals > 4 * 5


async def test_a_watch_moves_off_a_paused_member(etcd_trio: EtcdCluster) -> None:
    """A watch on a member that is paused hears nothing and sees no error: it asks for
    progress when quiet, and without an answer moves to another member, missing nothing."""
    leader = etcd_trio.leader()
    frozen = next(i for i in range(3) if i != leader)
    order = [frozen] + [i for i in range(3) if i != frozen]
    url = "etcd://" + ",".join(f"127.0.0.1:{etcd_trio.members[i].client_port}" for i in order)
    other = "etcd://" + ",".join(f"127.0.0.1:{etcd_trio.members[i].client_port}"
                                 for i in order[1:])
    async with open_store(url) as store, open_store(other) as writer:
        start = await writer.put("/pw/start", b"")
        async with aclosing(store.watch("/pw/", start + 1)) as events:
            await writer.put("/pw/0", b"x")
            assert [e.key for e in await take(events, 1)] == ["/pw/0"]
            etcd_trio.kill_member(frozen, signal.SIGSTOP)
            try:
                for i in range(1, 4):
                    await writer.put(f"/pw/{i}", b"x")
                got = await asyncio.wait_for(take(events, 3), 15)
            finally:
                etcd_trio.kill_member(frozen, signal.SIGCONT)
        assert [e.key for e in got] == ["/pw/1", "/pw/2", "/pw/3"]
        assert isinstance(store, EtcdStore) and store.switches >= 1


class _FinishedStream:
    """A watch stream whose RPC ends before the client writes its progress request: grpc's
    aio then raises InvalidStateError from the write, not an AioRpcError (a rig campaign
    met it when a host was cut off from the store; it killed the node's agent)."""

    def __init__(self, real: object) -> None:
        self.real = real
        self.writes = 0

    async def write(self, req: object) -> None:
        self.writes += 1
        if self.writes > 1:
            raise asyncio.InvalidStateError("RPC already finished.")
        await self.real.write(req)  # type: ignore[attr-defined]

    async def read(self) -> object:
        return await self.real.read()  # type: ignore[attr-defined]

    def cancel(self) -> bool:
        return self.real.cancel()  # type: ignore[attr-defined]


async def test_a_watch_stream_that_finished_under_a_write_is_opened_again(
        etcd_cluster: EtcdCluster, ns: str) -> None:
    async with open_store(etcd_cluster.url) as store:
        assert isinstance(store, EtcdStore)
        await store.put(f"{ns}/a", b"1")
        await store._ensure()
        member = store._members[0]
        stub = member.watch
        broken: list[_FinishedStream] = []

        class Once:
            def Watch(self, **kw: object) -> object:  # noqa: N802 - grpc's name
                call = stub.Watch(**kw)
                if not broken:
                    broken.append(_FinishedStream(call))
                    return broken[0]
                return call

        member.watch = Once()
        try:
            async with aclosing(store.watch(ns, 0)) as events:
                # quiet for WATCH_PROBE: the progress request's write finds the RPC finished
                await asyncio.sleep(0.1)
                put = asyncio.create_task(_put_later(store, f"{ns}/b", 2.5))
                [ev] = await asyncio.wait_for(take(events, 1), 20)
                await put
            assert ev.key == f"{ns}/b" and broken and broken[0].writes == 2
        finally:
            member.watch = stub


async def _put_later(store: Store, key: str, after: float) -> None:
    await asyncio.sleep(after)
    await store.put(key, b"2")


async def test_a_store_outage_shorter_than_the_lease_costs_no_serving(
        etcd_trio: EtcdCluster) -> None:
    """A link that flaps cuts a node from the store and from its partners at once: a renewal
    times out (a period), and the failsafe probe of the silent partners waits out its own
    deadline. The next renewal must not wait for that probe: it came a period later, after
    the node had stopped serving (seed 25, rounds 387, 495, 527). Here every member is
    paused 0.8 s just after a renewal and the failsafe probe hangs: serving never stops."""
    from shoal.agent.heartbeat import Heartbeat

    async def silent_partners() -> bool:
        await asyncio.sleep(30)
        return False

    url = "etcd://" + ",".join(f"127.0.0.1:{m.client_port}" for m in etcd_trio.members)
    async with open_store(url) as store:
        hb = Heartbeat(url, ttl=2.0, stuck_after=30.0, failsafe_probe=silent_partners)
        sent = time.monotonic()
        hb.track("t", (await store.grant_lease(2.0)).id, sent)
        hb.start()
        stopped: list[float] = []
        try:
            for _ in range(30):
                hb.loop_alive()
                await asyncio.sleep(0.05)
            seen = hb.renewals
            while hb.renewals == seen:  # just renewed: the next one is a period away
                hb.loop_alive()
                await asyncio.sleep(0.01)
            renewed = time.monotonic()
            await asyncio.sleep(0.55)
            for i in range(3):
                etcd_trio.kill_member(i, signal.SIGSTOP)
            try:
                while time.monotonic() < renewed + 1.35:
                    hb.loop_alive()
                    if not hb.serving_allowed("t"):
                        stopped.append(round(time.monotonic() - renewed, 2))
                    await asyncio.sleep(0.02)
            finally:
                for i in range(3):
                    etcd_trio.kill_member(i, signal.SIGCONT)
            for _ in range(100):  # 2 s after
                hb.loop_alive()
                if not hb.serving_allowed("t"):
                    stopped.append(round(time.monotonic() - renewed, 2))
                await asyncio.sleep(0.02)
        finally:
            hb.stop()
        assert hb.failures >= 1, "the outage did not cost a renewal: no test"
        assert stopped == [], (stopped, hb.failures, hb.renewals)
