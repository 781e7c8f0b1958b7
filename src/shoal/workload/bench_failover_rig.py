"""`shoal bench failover --rig DIR --fault power-off|kill|pause`: the failover benchmark on the
rig's hosts, where a server can die the ways real ones do (issue 18).

The clients run on client1, in the benchmark's own process there (`shoal bench failover
--attached`, the file system of the host's $SHOAL_STORE). When they are all writing, that
process names the node serving the OST on its standard output and waits; the benchmark here,
outside every host, strikes it and answers with the time of the fault:

    power-off  the host's power cut: link down, every process killed, nothing said
    kill       the host's daemon SIGKILLed, the host up (its sockets close, its port refuses)
    pause      every process of the host stopped for PAUSE_S seconds, then let go (if its
               fencing has not powered it off meanwhile)

The phases and the clients' figures are measured there as on a local cluster
(workload/bench_failover.py). Afterwards the rig is made whole again (hosts powered on,
daemons started) and the benchmark waits until every target is UP.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from shoal.cluster.site import fleet_status, resolve_site
from shoal.errors import InvalidArgument, ShoalError, TimedOut
from shoal.net import loop
from shoal.rig.fs import servers, shoal_argv, wait_up
from shoal.rig.rig import Rig
from shoal.workload.bench_failover import (
    RESUME_TIMEOUT_S,
    BenchProgress,
    FailoverResult,
    run_on_site,
)

FAULTS = ("power-off", "kill", "pause")
PAUSE_S = 4.0  # a hang: longer than the lease (2 s), so it is taken for a death
CLIENT_HOST = "client1"
HEAL_TIMEOUT = 120.0


class AttachedSite:
    """The file system of this host's $SHOAL_STORE. The fault is struck by the process that
    started this one: asked for on standard output, its time read from standard input."""

    def __init__(self) -> None:
        site = loop.run(resolve_site(Path(".")))
        self.spec, self.key, self.dir = site.spec, site.key, Path(".")

    def owner(self, target: str) -> str | None:
        st = loop.run(fleet_status(self.spec, self.key))
        return next((t["owner"] or None for t in st["targets"] if t["name"] == target), None)

    def strike(self, node: str) -> float:
        print(json.dumps({"strike": node}), flush=True)
        line = sys.stdin.readline()
        try:
            return float(json.loads(line)["struck"])
        except (ValueError, KeyError, TypeError):
            raise ShoalError(f"asked for {node} to be struck, got {line.strip()!r}") from None


def run_attached(clients: int, *, ir: bool, procs: int) -> FailoverResult:
    result = FailoverResult(clients=clients, ir=ir, dir=".")
    run_on_site(AttachedSite(), result, procs, lambda p: None)
    return result


def strike(rig: Rig, fault: str, host: str) -> float:
    """The fault on `host`; when it happened (wall clock, the same in every host)."""
    t = time.time()
    if fault == "power-off":
        rig.power_off(host)
    elif fault == "kill":
        rig.kill(host, "daemon")
    elif fault == "pause":
        rig.pause(host)
    else:
        raise InvalidArgument(f"unknown fault {fault!r} (one of {', '.join(FAULTS)})")
    return t


def heal(rig: Rig, victim: str, fault: str) -> None:
    """Make the rig whole: partitions gone, every host powered on, the victim's daemon
    running again (a power-on starts it), every target UP."""
    if fault == "pause":
        try:
            rig.resume(victim)
        except InvalidArgument:
            pass  # its fencing powered it off
    rig.heal()
    for h in rig.hosts:
        if not h.powered:
            rig.power_on(h.name)
    if "daemon" not in rig.processes(victim):
        rig.start_daemon(victim)
    wait_up(rig, servers(rig)[0], timeout=HEAL_TIMEOUT)


def run_rig_bench_failover(rig_dir: Path | str, *, clients: int, fault: str, ir: bool = True,
                           procs: int = 0,
                           on_progress: Callable[[BenchProgress], None] = lambda p: None,
                           ) -> FailoverResult:
    if fault not in FAULTS:
        raise InvalidArgument(f"unknown fault {fault!r} (one of {', '.join(FAULTS)})")
    rig = Rig(rig_dir)
    wait_up(rig, servers(rig)[0], timeout=HEAL_TIMEOUT)
    argv = shoal_argv("bench", "failover", "--attached", "--clients", str(clients),
                      "--procs", str(procs), "--json", *([] if ir else ["--noir"]))
    log_path = rig.dir / "logs" / "bench-failover.log"
    victim = ""
    on_progress(BenchProgress(f"starting {clients} clients on {CLIENT_HOST}", clients))
    with log_path.open("a") as log:
        proc = rig.popen(CLIENT_HOST, argv, cwd=rig.dir, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=log, text=True)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            # the other side bounds this: it gives up mounting after 60 s + 0.5 s per client
            line = proc.stdout.readline()
            try:
                victim = json.loads(line)["strike"]
            except (ValueError, KeyError, TypeError):
                proc.wait(timeout=30)
                raise ShoalError(f"the benchmark on {CLIENT_HOST} did not start (see "
                                 f"{log_path}): {line.strip()[-300:]}") from None
            at = strike(rig, fault, victim)
            proc.stdin.write(json.dumps({"struck": at}) + "\n")
            proc.stdin.flush()
            on_progress(BenchProgress(f"{victim}: {fault}; waiting for every client",
                                      clients, since_kill_s=0.0))
            if fault == "pause":
                time.sleep(PAUSE_S)
                try:
                    rig.resume(victim)
                except InvalidArgument:
                    pass  # fenced: powered off
            try:
                out, _ = proc.communicate(timeout=RESUME_TIMEOUT_S + 120.0 + clients)
            except subprocess.TimeoutExpired:
                raise TimedOut(f"the benchmark on {CLIENT_HOST} did not end (see "
                               f"{log_path})") from None
            try:
                data = json.loads(out)
            except ValueError:
                raise ShoalError(f"the benchmark on {CLIENT_HOST} failed (see {log_path}): "
                                 f"{out.strip()[-300:]}") from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if victim:
                on_progress(BenchProgress("making the rig whole again", clients))
                heal(rig, victim, fault)
    return FailoverResult(**data)
