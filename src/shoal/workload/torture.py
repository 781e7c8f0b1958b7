"""`shoal torture`: a campaign of faults under load, each one checked (issue 18).

One round per fault: `shoal load` runs for the round's length, a probe client of our own
writes and reads back its files all along, and the nemesis strikes 1.5 s in:

    kill    SIGKILL a server node (a crash)                      -> its targets fail over
    pause   SIGSTOP a server node for PAUSE_LONG s (a hang)      -> fenced and failed over
    blip    SIGSTOP a server node for PAUSE_SHORT s              -> nothing may fail over
    drop    one request in DROP_ONE_IN lost on a node for DROP_S -> nothing may fail over
    double  kill a node, then its partner while it takes over     -> both pairs' targets
            wait DOWN until both are back, then recover (a fault during recovery)
    store   SIGSTOP one member of a local etcd store for PAUSE_LONG s -> nothing may fail
            over (on a SQLite store there is nothing to pause: the round says so)
    lose    the probe's latest acknowledged write of one file is undone behind its back: a
            lost write on purpose, which the checker must report (it checks the checker; not
            in the default mix)

Then it heals (restarts what died, resumes what is stopped, clears fail points), waits for
every target to be served and every node alive, and checks: no acknowledged write lost or
corrupt (the load's set-full check and the probe's), no application error, every target UP,
no target served by two nodes (asked of every node, not only the store), and no failover in a
round whose fault should cause none. Each round is a line of JSON in the history file.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shoal.agent.events import read_events
from shoal.client.client import Client
from shoal.cluster.local import LocalCluster
from shoal.cluster.store_setup import etcd_dir
from shoal.errors import Exists, ShoalError
from shoal.net import loop
from shoal.node.admin import all_nodes, node_call
from shoal.store import open_store
from shoal.store.etcd_server import EtcdCluster
from shoal.workload.load import LoadSummary, run_load
from shoal.workload.torture_history import begin, round_rng

KINDS = ("kill", "pause", "blip", "drop", "double", "store", "lose")
DEFAULT_MIX = ("kill", "pause", "blip", "drop", "double", "store")
EXPECT_FAILOVER = {"kill": True, "pause": True, "blip": False, "drop": False,
                   "double": True, "store": False, "lose": False}
ROUND_S = {"kill": 9.0, "pause": 10.0, "blip": 5.0, "drop": 6.0, "double": 12.0,
           "store": 8.0, "lose": 4.0}
DOUBLE_GAP = 1.0  # seconds between the two kills of `double`: inside the partner's takeover
STRIKE_AT = 1.5  # seconds into the round
PAUSE_LONG, PAUSE_SHORT = 4.0, 0.5
DROP_ONE_IN, DROP_S = 5, 2.0
SETTLE_TIMEOUT = 60.0  # seconds for every target UP and every node alive after a heal
PROBE_DIR = "/torture"
PROBE_FILES = 4


@dataclass
class Round:
    index: int
    kind: str
    node: str
    started: float  # wall clock, for the event log
    recovered_s: float = 0.0  # strike -> every target UP again
    probe_stall_s: float = 0.0
    acked: int = 0  # acknowledged writes checked (load and probe)
    lost: int = 0
    corrupt: int = 0
    errors: int = 0
    unfinished: int = 0
    not_up: list[str] = field(default_factory=list)
    double_served: list[str] = field(default_factory=list)
    failovers: int = 0
    false_failovers: int = 0
    missed_failovers: int = 0  # a host that served targets was struck, and none moved
    notes: list[str] = field(default_factory=list)
    planted: int = 0  # lost writes the nemesis made on purpose (`lose`): the checker must see them

    @property
    def clean(self) -> bool:
        """Every check passed: nothing lost but what was planted (and that was found)."""
        return not (self.lost != self.planted or self.corrupt or self.errors or self.unfinished
                    or self.not_up or self.double_served or self.false_failovers
                    or self.missed_failovers)


class Probe:
    """Our own writer: generations of a few small files, every acknowledged one recorded.
    Before it writes the next generation of a file it reads the last one back, so a write
    undone behind its back is found before being overwritten; all of them are read back at
    the end of a round."""

    def __init__(self, client: Client) -> None:
        self.c = client
        self.lock = asyncio.Lock()  # one step (or the nemesis, or a round's check) at a time
        self.acked: dict[int, int] = {}
        # files whose last write failed: what they hold is not known (an O_TRUNC open that
        # went through, a part of the data) until the next acknowledged write
        self.unsure: set[int] = set()
        self.max_stall = 0.0
        self.lost = self.corrupt = self.errors = self.checked = 0

    def take_counts(self) -> LoadSummary:
        """What was counted since the last call (then counting starts again)."""
        counts = LoadSummary(clients=1, acked_writes=self.checked, verified=self.checked,
                             lost=self.lost, corrupt=self.corrupt, errors=self.errors,
                             max_stall_s=self.max_stall)
        self.checked = self.lost = self.corrupt = self.errors = 0
        self.max_stall = 0.0
        return counts

    @staticmethod
    def data(file: int, gen: int) -> bytes:
        return f"torture probe file {file} generation {gen}\n".encode() * (1 + gen % 7)

    async def _op(self, coro: Any) -> Any:
        t0 = time.monotonic()
        try:
            return await coro
        finally:
            self.max_stall = max(self.max_stall, time.monotonic() - t0)

    async def setup(self) -> None:
        try:
            await self.c.mkdir(PROBE_DIR)
        except Exists:
            pass

    async def step(self, file: int) -> None:
        async with self.lock:
            if file in self.acked:
                await self.check(file)
            gen = self.acked.get(file, 0) + 1
            try:
                await self._op(self.c.write_file(f"{PROBE_DIR}/p{file}", self.data(file, gen)))
            except ShoalError:
                self.errors += 1
                self.unsure.add(file)
                return
            self.acked[file] = gen
            self.unsure.discard(file)
            await self.check(file)

    async def check(self, file: int) -> None:
        if file in self.unsure:
            return
        gen = self.acked[file]
        try:
            got = await self._op(self.c.read_file(f"{PROBE_DIR}/p{file}"))
        except ShoalError:
            self.errors += 1
            return
        self.checked += 1
        if got != self.data(file, gen):
            older = any(got == self.data(file, g) for g in range(1, gen))
            if older:
                self.lost += 1
            else:
                self.corrupt += 1
            self.unsure.add(file)  # counted once; the next acknowledged write starts afresh

    async def undo_one(self) -> str:
        """The nemesis of `lose`: put back the generation before the last acknowledged one
        of a file, as a server that lost the write would."""
        async with self.lock:
            file = max(set(self.acked) - self.unsure, key=lambda f: self.acked[f])
            gen = self.acked[file]
            await self.c.write_file(f"{PROBE_DIR}/p{file}", self.data(file, gen - 1))
        return f"file p{file} set back from generation {gen} to {gen - 1}"


def _served(cl: LocalCluster) -> tuple[dict[str, list[str]], list[str]]:
    """(target -> nodes that say they serve it, nodes that did not answer)."""
    answers = loop.run(all_nodes(cl.spec, cl.key, "status", timeout=2.0))
    served: dict[str, list[str]] = {}
    silent = []
    for node, data in answers.items():
        if data is None:
            silent.append(node)
            continue
        for target, t in data["targets"].items():
            if t["state"] in ("UP", "RECOVERING"):
                served.setdefault(target, []).append(node)
    return served, silent


def _settle(cl: LocalCluster, deadline: float) -> list[str]:
    """Wait until every target is served by one node and every node answers; what is still
    not served (with the silent nodes) when the deadline passes."""
    while True:
        served, silent = _served(cl)
        missing = [t.name for t in cl.spec.targets if not served.get(t.name)]
        if not missing and not silent:
            return []
        if time.monotonic() > deadline:
            return missing + [f"node {n} silent" for n in silent]
        time.sleep(0.25)


def _failovers(cl: LocalCluster, since: float) -> int:
    async def read() -> int:
        store = open_store(cl.spec.store_url)
        try:
            events = await read_events(store, since=since)
        finally:
            await store.close()
        return sum(1 for e in events if e.kind == "take")
    return loop.run(read())


class Nemesis:
    """Strikes and heals on a local cluster."""

    def __init__(self, cl: LocalCluster, rng: random.Random) -> None:
        self.cl = cl
        self.rng = rng

    def _fail(self, node: str, **settings: str) -> None:
        async def go() -> None:
            for k, v in sorted(settings.items(), key=lambda kv: kv[0] == "loc"):
                await node_call(self.cl.spec, self.cl.key, node, "set_param",
                                {"name": f"fail_{k}", "value": v})
        loop.run(go())

    def strike(self, kind: str, node: str, probe: Probe, probe_loop: asyncio.AbstractEventLoop
               ) -> str:
        cl = self.cl
        if kind == "kill":
            cl.kill_node(node)
            return "killed"
        if kind in ("pause", "blip"):
            cl.signal_node(node, signal.SIGSTOP)
            time.sleep(PAUSE_LONG if kind == "pause" else PAUSE_SHORT)
            cl.signal_node(node, signal.SIGCONT)
            return f"paused {PAUSE_LONG if kind == 'pause' else PAUSE_SHORT:g} s"
        if kind == "drop":
            self._fail(node, val=str(DROP_ONE_IN), loc=hex(0x08000505))
            time.sleep(DROP_S)
            self._fail(node, loc="0")
            return f"one request in {DROP_ONE_IN} dropped for {DROP_S:g} s"
        if kind == "lose":
            return asyncio.run_coroutine_threadsafe(probe.undo_one(), probe_loop).result(30)
        if kind == "double":
            partner = self.partner(node)
            cl.kill_node(node)
            time.sleep(DOUBLE_GAP)
            cl.kill_node(partner)
            return f"killed, then its partner {partner} {DOUBLE_GAP:g} s later"
        if kind == "store":
            etcd = self._etcd()
            if etcd is None:
                return "no local etcd member to pause: nothing done"
            member = self.rng.randrange(len(etcd.members))
            etcd.kill_member(member, signal.SIGSTOP)
            try:
                time.sleep(PAUSE_LONG)
            finally:
                etcd.kill_member(member, signal.SIGCONT)
            return f"etcd member {etcd.members[member].name} paused {PAUSE_LONG:g} s"
        raise ValueError(kind)

    def partner(self, node: str) -> str:
        """The node that backs up most of `node`'s targets (its failover partner)."""
        counts: dict[str, int] = {}
        for t in self.cl.spec.targets:
            if node in t.nodes:
                for n in t.nodes:
                    if n != node:
                        counts[n] = counts.get(n, 0) + 1
        return max(counts, key=lambda n: counts[n])

    def _etcd(self) -> EtcdCluster | None:
        try:
            return EtcdCluster.attach(etcd_dir(self.cl.dir))
        except ShoalError:
            return None

    def heal(self, kind: str, node: str) -> None:
        if kind in ("pause", "blip"):
            self.cl.signal_node(node, signal.SIGCONT)
        # killed, or fenced while paused: boot it again, as an administrator would
        for n in self.cl.spec.nodes:
            deadline = time.monotonic() + SETTLE_TIMEOUT
            while self.cl.pid(n) is None:
                try:
                    self.cl.start_node(n)
                except ShoalError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)


class _ProbeThread:
    """The probe on an event loop of its own, stepping until told to stop."""

    def __init__(self, cluster_dir: Path) -> None:
        self.loop = loop.new_event_loop()
        self.ready = threading.Event()
        self.stop_flag = threading.Event()
        self.probe: Probe | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(cluster_dir,), daemon=True)
        self.thread.start()
        if not self.ready.wait(60) or self.probe is None:
            raise ShoalError(f"the probe client could not mount: {self.error}")

    def _run(self, cluster_dir: Path) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main(cluster_dir))
        except BaseException as exc:  # noqa: BLE001 - reported by the campaign
            self.error = exc
            self.ready.set()

    async def _main(self, cluster_dir: Path) -> None:
        async with Client.from_cluster_dir(cluster_dir) as c:
            self.probe = Probe(c)
            await self.probe.setup()
            self.ready.set()
            i = 0
            while not self.stop_flag.is_set():
                await self.probe.step(i % PROBE_FILES)
                i += 1
                await asyncio.sleep(0.05)

    def round_check(self) -> LoadSummary:
        """Read back every acknowledged file; what the probe counted since the last call."""
        probe = self.probe
        assert probe is not None

        async def check() -> LoadSummary:
            async with probe.lock:
                for f in sorted(probe.acked):
                    await probe.check(f)
                return probe.take_counts()
        return asyncio.run_coroutine_threadsafe(check(), self.loop).result(60)

    def close(self) -> None:
        self.stop_flag.set()
        self.thread.join(30)


def _load_into(out: dict[str, LoadSummary], cluster_dir: Path | str, clients: int,
               duration: float) -> None:
    out["s"] = run_load(cluster_dir, clients=clients, duration=duration, procs=1)


def run_torture(cluster_dir: Path | str, *, faults: int, mix: list[str], seed: int,
                clients: int, history: Path | None = None,
                on_round: Callable[[Round], None] | None = None,
                start: int = 0) -> list[Round]:
    """The campaign, from round `start` + 1 (a resumed one has done `start`); one Round per
    fault, also appended to `history` as JSON lines."""
    cl = LocalCluster(Path(cluster_dir))
    servers = list(cl.spec.nodes)
    nemesis = Nemesis(cl, round_rng(seed, 0))
    out: list[Round] = []
    if not start:
        begin(history, {"dir": str(cluster_dir), "faults": faults, "mix": mix, "seed": seed,
                        "clients": clients, "nodes": servers})
    not_up = _settle(cl, time.monotonic() + SETTLE_TIMEOUT)
    if not_up:
        raise ShoalError(f"the cluster is not whole before the first fault: {not_up}")
    probe = _ProbeThread(Path(cluster_dir))
    try:
        for i in range(start, faults):
            nemesis.rng = rng = round_rng(seed, i + 1)
            kind, node = rng.choice(mix), rng.choice(servers)
            r = Round(i + 1, kind, node, time.time())
            load: dict[str, LoadSummary] = {}
            worker = threading.Thread(target=_load_into, args=(
                load, cluster_dir, clients, ROUND_S[kind]), daemon=True)
            if clients:
                worker.start()
            time.sleep(STRIKE_AT)
            struck = time.monotonic()
            assert probe.probe is not None
            r.notes.append(nemesis.strike(kind, node, probe.probe, probe.loop))
            r.planted = 1 if kind == "lose" else 0
            nemesis.heal(kind, node)
            r.not_up = _settle(cl, time.monotonic() + SETTLE_TIMEOUT)
            r.recovered_s = round(time.monotonic() - struck, 3)
            if clients:
                worker.join(ROUND_S[kind] + 180)
            checked = probe.round_check()
            if clients and "s" not in load:
                r.unfinished += 1
                r.notes.append("the load did not end")
            total = load.get("s", LoadSummary())
            total.merge(checked)
            r.probe_stall_s = round(checked.max_stall_s, 3)
            account(r, total)
            served, _ = _served(cl)
            r.double_served = sorted(t for t, nodes in served.items() if len(nodes) > 1)
            close_round(r, _failovers(cl, r.started), EXPECT_FAILOVER[kind], history, on_round)
            out.append(r)
    finally:
        probe.close()
    return out


def account(r: Round, s: LoadSummary) -> None:
    """What the round's checks of acknowledged writes found."""
    r.acked, r.lost, r.corrupt = s.acked_writes, s.lost, s.corrupt
    r.errors = s.errors
    r.unfinished += s.unfinished
    r.notes += s.error_samples[:3]


def close_round(r: Round, failovers: int, expected: bool, history: Path | None,
                on_round: Callable[[Round], None] | None, *, due: bool = False) -> None:
    """Count the round's failovers (false ones where none was expected; a missed one where
    the struck node `due` to lose its targets kept them), record and report it."""
    r.failovers = failovers
    if not expected:
        r.false_failovers = failovers
    elif due and not failovers:
        r.missed_failovers = 1
    if history is not None:
        with history.open("a") as f:
            f.write(json.dumps(asdict(r)) + "\n")
    if on_round is not None:
        on_round(r)


def summarize(rounds: list[Round]) -> list[dict[str, Any]]:
    """One row per fault kind: count, time to recovered (median, p99, max), the probe's
    worst stall, and the failures the checker counted."""
    rows = []
    for kind in dict.fromkeys(r.kind for r in rounds):
        rs = [r for r in rounds if r.kind == kind]
        if not rs:
            continue
        rec = sorted(r.recovered_s for r in rs)
        rows.append({
            "fault": kind, "count": len(rs),
            "recovered_median_s": round(statistics.median(rec), 2),
            "recovered_p99_s": round(rec[min(len(rec) - 1, int(0.99 * len(rec)))], 2),
            "recovered_max_s": round(rec[-1], 2),
            "probe_stall_max_s": round(max(r.probe_stall_s for r in rs), 2),
            "acked": sum(r.acked for r in rs),
            "lost": sum(r.lost - r.planted for r in rs),
            "planted_found": f"{sum(min(r.lost, r.planted) for r in rs)}/"
                             f"{sum(r.planted for r in rs)}",
            "corrupt": sum(r.corrupt for r in rs),
            "errors": sum(r.errors for r in rs),
            "double_served": sum(len(r.double_served) for r in rs),
            "false_failovers": sum(r.false_failovers for r in rs),
            "missed_failovers": sum(r.missed_failovers for r in rs),
            "not_up": sum(len(r.not_up) for r in rs),
        })
    return rows
