"""The random two-mount exerciser (test_mount_random.py) against a running local cluster
while its servers fail: a campaign, not a test (issue 20: stale names seen after MDS
failovers, session 27).

    python -m tests.mount.random_faults --dir RUN [--seeds 1-20] [--steps 300]

RUN is a local cluster's directory (`shoal up`). Two mounts are made under RUN/random
(with -vv logs beside them), and every 4-8 s the node serving the MDT (three times in four)
or an OST is killed or paused for 5 s; then every target must be UP again and the node is
started again. Each seed's steps run to the end or to the first disagreement with the
model, which is printed with the steps before it, the mounts' logs named, and what each
mount shows a few seconds later. Exit 1 if any seed failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.mount.test_mount_random import Exerciser

SHOAL = [sys.executable, "-m", "shoal"]


def shoal(run: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SHOAL, *args], env={**os.environ, "SHOAL_DIR": str(run)},
                          capture_output=True, text=True, timeout=120, check=check)


def owners(run: Path) -> dict[str, tuple[str, str]]:
    st = json.loads(shoal(run, "status", "--json").stdout)
    return {t["name"]: (t["owner"], t["state"]) for t in st["targets"]}


def faults(run: Path, stop: threading.Event, rng: random.Random) -> None:
    while not stop.wait(rng.uniform(4, 8)):
        targets = owners(run)
        osts = sorted(n for n in targets if "-OST" in n)
        name = (next(n for n in targets if "-MDT" in n) if rng.random() < 0.75
                else rng.choice(osts))
        node = targets[name][0]
        kind = rng.choice(["kill", "pause"])
        print(f"{time.strftime('%T')} {kind} {node} ({name})", flush=True)
        shoal(run, "node", kind, node, check=False)
        if kind == "pause":
            time.sleep(5)
            shoal(run, "node", "resume", node, check=False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(
                s != "UP" for _o, s in owners(run).values()):
            time.sleep(1)
        shoal(run, "node", "start", node, check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--seeds", default="1-20")
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    first, _, last = args.seeds.partition("-")
    seeds = range(int(first), int(last or first) + 1)
    base = args.dir / "random"
    mounts = [base / "a", base / "b"]
    for m in mounts:
        m.mkdir(parents=True, exist_ok=True)
        shoal(args.dir, "-vv", "mount", str(m), "--log", f"{m}.log")
    stop = threading.Event()
    loop = threading.Thread(target=faults, args=(args.dir, stop, random.Random(1)))
    loop.start()
    failed = 0
    try:
        for seed in seeds:
            name = f"seed{seed}-{os.getpid()}"
            (mounts[0] / name).mkdir()
            ex = Exerciser((mounts[0] / name, mounts[1] / name), seed)
            try:
                for _ in range(args.steps):
                    ex.step()
                print(f"{time.strftime('%T')} seed {seed}: {args.steps} steps agree", flush=True)
            except AssertionError as exc:
                failed += 1
                print(f"{time.strftime('%T')} FAILED {exc}", flush=True)
                time.sleep(5)
                for m in mounts:
                    print(f"  5 s later through {m}: {sorted(os.listdir(m / name))}", flush=True)
            finally:
                ex.close()
    finally:
        stop.set()
        loop.join()
        for m in mounts:
            shoal(args.dir, "umount", str(m), check=False)
    print(f"{failed} of {len(seeds)} seeds failed; mount logs: {base}/a.log, {base}/b.log")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
