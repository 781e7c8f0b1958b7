"""`shoal torture --rig DIR`: the campaign of workload/torture.py on the rig's hosts, with the
faults only the rig can make (issue 18). The load runs on client1 and every check is asked
from client2, as an administrator on a client host would; the nemesis acts from here:

    poweroff   the host's power cut (link down, every process killed)  -> fail over
    partition  the host cut off from every other host, still running,  -> fenced, fail over
               for PARTITION_S s
    hang       every process of the host stopped for HANG_S s           -> fenced, fail over
    blip       every process of the host stopped for BLIP_S s           -> nothing fails over
    clientcut  the host cut off from the client hosts only, for CUT_S s -> nothing fails over
    store      the host's etcd member stopped for STORE_S s (a server -> nothing fails over
               host without one: the first that has one)
    double     the host's power cut, then its failover partner's      -> fail over when
               DOUBLE_GAP_S later, inside the takeover                  the heal powers on
    storecut   the host cut off from the store alone (the etcd        -> nothing fails over
               members' client port) for CUT_S s; a host without a      (failsafe: its
               member of its own (its own member would still answer)    partners answer it)
    flap       the host's link to every other host down FLAP_DOWN_S s, -> nothing fails over
               up FLAP_UP_S s, FLAPS times

A host the rig's fence agent powered off is powered on again by the heal, as an
administrator would after a failover; its daemon starts with it and rejoins as a backup.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoal.errors import InvalidArgument, ShoalError
from shoal.rig.fs import run_on, servers, shoal_argv
from shoal.rig.rig import Rig
from shoal.workload.load import LoadSummary
from shoal.workload.torture import STRIKE_AT, Round, account, close_round
from shoal.workload.torture_history import begin, round_rng

RIG_KINDS = ("poweroff", "partition", "hang", "blip", "clientcut", "store", "double",
             "storecut", "flap")
RIG_EXPECT_FAILOVER = {"poweroff": True, "partition": True, "hang": True, "blip": False,
                       "clientcut": False, "store": False, "double": True,
                       "storecut": False, "flap": False}
RIG_ROUND_S = {"poweroff": 10.0, "partition": 10.0, "hang": 10.0, "blip": 6.0,
               "clientcut": 10.0, "store": 8.0, "double": 14.0, "storecut": 10.0,
               "flap": 12.0}
# A hang must outlast the node's lease as the store counts it: when the hung host carries
# etcd's leader, the new leader (elected 1-2 s in) renews every lease once, so a 4 s hang
# there ended before the lease did and moved nothing (a missed failover, not a fault).
HANG_S, BLIP_S, CUT_S, DOUBLE_GAP_S, PARTITION_S, STORE_S = 6.0, 1.0, 4.0, 1.0, 6.0, 4.0
FLAP_DOWN_S, FLAP_UP_S, FLAPS = 0.5, 1.0, 5
SETTLE_TIMEOUT = 120.0
LOADER, ASKER = "client1", "client2"

# Every node's own answer: which targets it serves now (not the store's view of it).
_SERVED = """
import asyncio, json
from pathlib import Path
from shoal.cluster.site import resolve_site
from shoal.node.admin import all_nodes
async def main():
    site = await resolve_site(Path("."))
    answers = await all_nodes(site.spec, site.key, "status", timeout=2.0)
    print(json.dumps({n: None if d is None else sorted(
        t for t, v in d["targets"].items() if v["state"] in ("UP", "RECOVERING"))
        for n, d in answers.items()}))
asyncio.run(main())
"""


class RigNemesis:
    def __init__(self, rig: Rig, pairs: list[list[str]] | None = None) -> None:
        self.rig = rig
        self.clients = [h.name for h in rig.hosts if h.role == "client"]
        self.pairs = pairs or []  # the targets' failover nodes

    def strike(self, kind: str, host: str) -> str:
        rig = self.rig
        if kind == "poweroff":
            rig.power_off(host)
            return "powered off"
        if kind == "partition":
            # held until its partner has fenced it (the lease, then the rig's power switch):
            # a cut healed at once moved nothing and tested nothing
            rig.partition([host])
            time.sleep(PARTITION_S)
            return f"cut off from every host for {PARTITION_S:g} s"
        if kind in ("hang", "blip"):
            rig.pause(host)
            time.sleep(HANG_S if kind == "hang" else BLIP_S)
            try:
                rig.resume(host)
            except InvalidArgument:
                return "paused, then powered off by its fencing"
            return f"paused {HANG_S if kind == 'hang' else BLIP_S:g} s"
        if kind == "clientcut":
            rig.partition([host], from_hosts=self.clients)
            time.sleep(CUT_S)
            rig.heal()
            return f"cut off from the clients for {CUT_S:g} s"
        if kind == "store":
            member = next((h.name for h in rig.hosts if h.name == host and h.etcd),
                          next(h.name for h in rig.hosts if h.etcd))
            rig.pause(member, only="etcd")
            time.sleep(STORE_S)
            rig.resume(member, only="etcd")
            return f"{member}'s etcd member stopped {STORE_S:g} s"
        if kind == "storecut":
            bare = [h.name for h in rig.hosts if h.role == "server" and not h.etcd]
            cut = host if host in bare or not bare else bare[0]
            rig.cut_from_store([cut])
            time.sleep(CUT_S)
            rig.heal()
            return f"{cut} cut off from the store for {CUT_S:g} s"
        if kind == "flap":
            for _ in range(FLAPS):
                rig.partition([host])
                time.sleep(FLAP_DOWN_S)
                rig.heal()
                time.sleep(FLAP_UP_S)
            return f"its link down {FLAP_DOWN_S:g} s, up {FLAP_UP_S:g} s, {FLAPS} times"
        if kind == "double":
            partner = next((n for pair in self.pairs for n in pair
                            if host in pair and n != host), None)
            rig.power_off(host)
            if partner is None:
                return "powered off (it has no partner)"
            time.sleep(DOUBLE_GAP_S)
            rig.power_off(partner)
            return f"powered off, then {partner} {DOUBLE_GAP_S:g} s later"
        raise ValueError(kind)

    def heal(self) -> None:
        self.rig.heal()
        for h in self.rig.hosts:
            if not h.powered:
                self.rig.power_on(h.name)


def _asker(rig: Rig, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return run_on(rig, ASKER, *args, timeout=timeout, check=False)


def _status(rig: Rig) -> dict[str, Any] | None:
    """`shoal status --json` as asked from the asker's host; None if it failed."""
    proc = _asker(rig, "status", "--json", timeout=30)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def _settle(rig: Rig, deadline: float, heal: Callable[[], None] = lambda: None,
            before: dict[str, Any] | None = None) -> tuple[list[str], dict[str, Any] | None]:
    """Every target UP and every node alive, as the store says; what is not, at the
    deadline, and the last status seen. `heal` runs between looks: a host fenced after the
    fault was healed (powered off by its partner) is powered on again, as an administrator
    would. With `before` (the status before the fault), a target still held by an instance
    that is gone is not UP: a host powered back at once runs a new daemon while its old
    one's owner keys live on until their leases run out, and what follows (a takeover, a
    fence) has not happened yet."""
    missing: list[str] = ["no status"]
    st = None
    while time.monotonic() < deadline:
        heal()
        st = _status(rig)
        if st is not None:
            missing = [t["name"] for t in st["targets"] if t["state"] != "UP"]
            missing += [f"node {n['name']} {n['state']}" for n in st["nodes"]
                        if n["state"] != "alive"]
            missing += [f"{t} held by {n}'s old instance" for t, n in _stale(before, st)]
            if not missing:
                missing = _not_served_by_owner(rig, st)
            if not missing:
                break
        time.sleep(1.0)
    return missing, st


def _stale(before: dict[str, Any] | None, st: dict[str, Any]) -> list[tuple[str, str]]:
    """(target, owner) for each target whose owner key (its token) is the one it had
    before, while its owner node has restarted since (another boot id)."""
    if before is None:
        return []
    boots = {n["name"]: n["boot_id"] for n in before["nodes"]}
    tokens = {t["name"]: t["token"] for t in before["targets"]}
    now = {n["name"]: n["boot_id"] for n in st["nodes"]}
    return [(t["name"], t["owner"]) for t in st["targets"]
            if t["owner"] and t["token"] == tokens.get(t["name"])
            and now.get(t["owner"]) != boots.get(t["owner"])]


def _pairs(st: dict[str, Any] | None) -> list[list[str]]:
    """The targets' failover nodes."""
    return [list(p) for p in sorted({tuple(t["nodes"]) for t in (st or {}).get("targets", [])})]


def _serving(st: dict[str, Any] | None) -> list[str]:
    """The server hosts that own a target, as the store said ([] if unknown)."""
    return sorted({t["owner"] for t in (st or {}).get("targets", []) if t["owner"]})


def _ask_nodes(rig: Rig) -> dict[str, list[str] | None] | str:
    """Node -> the targets it says it serves (None: it did not answer); or why the nodes
    could not be asked."""
    proc = rig.exec(ASKER, [sys.executable, "-c", _SERVED], capture_output=True, text=True,
                    timeout=60, cwd=rig.dir)
    if proc.returncode != 0:
        return f"could not ask the nodes: {proc.stderr.strip()[-200:]}"
    answers: dict[str, list[str] | None] = json.loads(proc.stdout)
    return answers


def served_by(answers: dict[str, list[str] | None]) -> dict[str, list[str]]:
    """Target -> the nodes that say they serve it."""
    seen: dict[str, list[str]] = {}
    for node, targets in answers.items():
        for t in targets or []:
            seen.setdefault(t, []).append(node)
    return seen


def _served_twice(rig: Rig) -> list[str]:
    answers = _ask_nodes(rig)
    if isinstance(answers, str):
        return [answers]
    return sorted(t for t, nodes in served_by(answers).items() if len(nodes) > 1)


def _not_served_by_owner(rig: Rig, st: dict[str, Any]) -> list[str]:
    """The targets whose owner, as the store says, does not say it serves them. The store
    lags behind a host powered off and back: its old instance's owner keys and node key
    live on until their leases run out, boot id included (seed 23, round 96: the settle
    took the old keys for the new instance's, and the next round struck a host that
    served nothing)."""
    answers = _ask_nodes(rig)
    return [answers] if isinstance(answers, str) else not_settled(st, answers)


def not_settled(st: dict[str, Any], answers: dict[str, list[str] | None]) -> list[str]:
    """What the nodes' own `answers` say is not so of status `st`: a target its owner does
    not serve, a node that does not answer. A host its partner fenced (powered off) just
    after it came back looks alive in the store until its node key's lease lapses (seed 24,
    round 237: the next round paused its partner, which then had nobody to fail over to)."""
    seen = served_by(answers)
    out = [f"{t['name']} not served by its owner {t['owner'] or '(none)'}"
           for t in st["targets"] if t["owner"] not in seen.get(t["name"], [])]
    return out + [f"node {n} does not answer" for n, a in sorted(answers.items())
                  if a is None]


def _takes_since(rig: Rig, since: float, r: Round) -> int:
    """Takeovers in the event log since `since`, asked up to three times (the store may be
    electing a leader just after a `store` round); a round that cannot read the log says so."""
    why = ""
    for attempt in range(3):
        if attempt:
            time.sleep(1.0)
        proc = _asker(rig, "events", "--last", "0", "--json")
        if proc.returncode != 0:
            why = f"shoal events failed: {proc.stderr.strip()[-200:]}"
            continue
        try:
            events = json.loads(proc.stdout)
        except ValueError as exc:
            why = f"the event log came back unreadable ({exc})"
            break
        return sum(1 for e in events if e["kind"] == "take" and e["time"] >= since)
    r.notes.append(f"takeovers not counted: {why}")
    r.errors += 1
    return 0


def run_rig_torture(rig_dir: Path | str, *, faults: int, mix: list[str], seed: int,
                    clients: int, history: Path | None = None,
                    on_round: Callable[[Round], None] | None = None,
                    start: int = 0) -> list[Round]:
    """The campaign on the rig, from round `start` + 1 (a resumed one has done `start`)."""
    rig = Rig(rig_dir)
    hosts = servers(rig)
    if not start:
        begin(history, {"rig": str(rig_dir), "faults": faults, "mix": mix, "seed": seed,
                        "clients": clients, "nodes": hosts})
    not_up, st = _settle(rig, time.monotonic() + SETTLE_TIMEOUT)
    if not_up:
        raise ShoalError(f"the rig's file system is not whole before the first fault: {not_up}")
    nemesis = RigNemesis(rig, _pairs(st))
    out: list[Round] = []
    for i in range(start, faults):
        rng = round_rng(seed, i + 1)
        kind = rng.choice(mix)
        # a fault that should move targets strikes a host that serves some (after earlier
        # rounds a host may serve nothing, and then its round would test no failover)
        # (the owners as the last round's settle saw them: nothing has moved since)
        serving = _serving(st) if RIG_EXPECT_FAILOVER[kind] else []
        host = rng.choice(serving or hosts)
        r = Round(i + 1, kind, host, time.time())
        load = rig.popen(LOADER, shoal_argv("load", "--clients", str(max(clients, 1)),
                                            "--duration", str(RIG_ROUND_S[kind]), "--json"),
                         cwd=rig.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        time.sleep(STRIKE_AT)
        struck = time.monotonic()
        try:
            r.notes.append(nemesis.strike(kind, host))
        finally:
            nemesis.heal()
        r.not_up, st = _settle(rig, time.monotonic() + SETTLE_TIMEOUT, nemesis.heal,
                               before=st)
        r.recovered_s = round(time.monotonic() - struck, 3)
        summary = _load_result(load, RIG_ROUND_S[kind] + 180)
        account(r, summary)
        r.probe_stall_s = round(summary.max_stall_s, 3)  # the load's own worst stall
        r.double_served = _served_twice(rig)
        close_round(r, _takes_since(rig, r.started, r), RIG_EXPECT_FAILOVER[kind], history,
                    on_round, due=host in serving)
        out.append(r)
    return out


def _load_result(proc: subprocess.Popen[str], timeout: float) -> LoadSummary:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return LoadSummary(unfinished=1, error_samples=["the load did not end: killed"])
    try:
        data: dict[str, Any] = json.loads(out)
    except ValueError:
        return LoadSummary(errors=1, error_samples=[f"load failed: {err.strip()[-300:]}"])
    return LoadSummary(**data)
