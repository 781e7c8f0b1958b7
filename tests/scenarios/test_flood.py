"""A stranger floods one node's port while `shoal load` runs (issue 17): 20,000 idle
connections, slow senders whose frame stops half way, and length prefixes that promise a
giant frame. The node keeps its memory within a bound, nothing fails over, nothing is lost,
and it serves normally once the flood stops.

The bound: unauthenticated peers are held at most `max_unknown` (256) at a time, each with at
most one frame's header, so the node's RSS may not grow by more than FLOOD_RSS_BOUND over its
size before the flood (it grew to 5.2 GB before the limits)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psutil

from shoal.cluster.local import LocalCluster
from tests.scenarios.harness import Load, assert_clean, params, targets

NODE = "nid00062"
IDLE = 20_000
SLOW = 200
GIANT = 200
FLOOD_RSS_BOUND = 150 << 20  # bytes over the node's RSS before the flood


FLOODERS = 2  # processes: each may hold only RLIMIT_NOFILE descriptors (20,000 here)
FLOOD = """
import asyncio, contextlib, json, struct, sys
host, port, idle, slow, giant, hold = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:6]), \\
    float(sys.argv[6])

async def main():
    held, counts = [], {"opened": 0, "failed": 0}
    async def one(payload, n):
        # from 40 addresses, each under the node's per-address limit (MAX_PEER_CONNECTIONS):
        # the limits for strangers as a whole are what is tried here
        source = (f"127.0.5.{1 + n % 40}", 0)
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(host, port,
                                                                  local_addr=source), 10)
        except (OSError, TimeoutError):
            counts["failed"] += 1
            return
        counts["opened"] += 1
        if payload:
            w.write(payload)
        held.append(w)
    stall = struct.pack(">II", 100, 0) + bytes(32) + b"x" * 10  # 100 promised, 10 sent
    huge = struct.pack(">II", 17 << 20, 0) + bytes(32)  # 17 MiB promised, none sent
    jobs = [b""] * idle + [stall] * slow + [huge] * giant
    for i in range(0, len(jobs), 500):
        await asyncio.gather(*(one(p, i + k) for k, p in enumerate(jobs[i:i + 500])))
    await asyncio.sleep(hold)
    for w in held:
        with contextlib.suppress(OSError):
            w.close()
    print(json.dumps(counts))

asyncio.run(main())
"""


def start_flood(host: str, port: int, hold: float) -> list[subprocess.Popen[str]]:
    n = FLOODERS
    return [subprocess.Popen([sys.executable, "-c", FLOOD, host, str(port), str(IDLE // n),
                              str(SLOW // n), str(GIANT // n), str(hold)],
                             stdout=subprocess.PIPE, text=True) for _ in range(n)]


def test_a_flood_of_strangers_changes_nothing_for_the_clients(cl: LocalCluster) -> None:
    before = {t: v["owner"] for t, v in targets(cl).items()}
    node = psutil.Process(cl.pid(NODE))
    rss0 = node.memory_info().rss
    load = Load(cl, clients=6, duration=14.0)
    time.sleep(2.0)
    flooders = start_flood(cl.spec.nids[NODE], cl.spec.port, hold=6.0)
    peak = rss0
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        peak = max(peak, node.memory_info().rss)
        time.sleep(0.2)
    result = {"opened": 0, "failed": 0}
    for f in flooders:
        out, _ = f.communicate(timeout=120)
        for k, v in json.loads(out).items():
            result[k] += v
    summary = load.result()
    assert_clean(summary)
    assert result["opened"] + result["failed"] == IDLE + SLOW + GIANT
    assert result["opened"] > IDLE // 2  # the flood did reach the node
    print(f"flood: {result}, node RSS {rss0 >> 20} MiB before, {peak >> 20} MiB at peak")
    assert peak - rss0 < FLOOD_RSS_BOUND, (rss0, peak)
    assert {t: v["owner"] for t, v in targets(cl).items()} == before  # no failover
    assert all(v["state"] == "UP" for v in targets(cl).values())
    stats = params(cl, NODE, f"net.{NODE}.stats")[f"net.{NODE}.stats"]
    counts = dict(line.split()[:2] for line in stats.splitlines() if line.strip())
    assert int(counts.get("connections", 0)) >= IDLE // 2
    assert int(counts.get("hello_evicted", 0)) > 0  # idle strangers made room for others
    assert int(counts.get("stalled_frames", 0)) + int(counts.get("oversize_frames", 0)) \
        + int(counts.get("hello_timeouts", 0)) > 0
