"""A separate process acting on a store, for the multi-process tests.

    python store_worker.py incr  URL KEY N        CAS-increment KEY N times; print the revisions
    python store_worker.py hold  URL KEY TTL      lease KEY and keep it alive until killed
    python store_worker.py leave URL KEY TTL      lease KEY, then exit without revoking
    python store_worker.py watch URL PREFIX REV   print every event as a JSON line, forever

Output is JSON lines on stdout, flushed at once, so the test can follow along.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from shoal.store import open_store


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def incr(url: str, key: str, n: int) -> None:
    revs = []
    async with open_store(url) as store:
        for _ in range(n):
            while True:
                kv = await store.get(key)
                count = int(kv.value) if kv else 0
                rev = await store.compare_and_swap(
                    key, str(count + 1).encode(), mod_revision=kv.mod_revision if kv else 0
                )
                if rev is not None:
                    revs.append(rev)
                    break
    emit(revs=revs)


async def hold(url: str, key: str, ttl: float, *, stay: bool) -> None:
    store = open_store(url)
    lease = await store.grant_lease(ttl)
    rev = await store.put(key, str(os.getpid()).encode(), lease=lease.id)
    emit(lease=lease.id, rev=rev)
    if not stay:
        os._exit(0)  # no revoke, no close: the lease is left to expire on its own
    while True:
        await asyncio.sleep(ttl / 4)
        await store.keepalive(lease.id)


async def watch(url: str, prefix: str, start: int) -> None:
    async with open_store(url) as store:
        emit(watching=True)
        async for ev in store.watch(prefix, start):
            emit(type=ev.type.value, key=ev.key, revision=ev.revision,
                 create_revision=ev.create_revision)


def main() -> None:
    cmd, url, arg = sys.argv[1:4]
    if cmd == "incr":
        asyncio.run(incr(url, arg, int(sys.argv[4])))
    elif cmd in ("hold", "leave"):
        asyncio.run(hold(url, arg, float(sys.argv[4]), stay=cmd == "hold"))
    elif cmd == "watch":
        asyncio.run(watch(url, arg, int(sys.argv[4])))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
