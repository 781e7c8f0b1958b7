"""The presets: Cray's 2009 failover, Lustre 2.x with and without IR, and Shoal.

Each says where its numbers come from. Three kinds of source, named as such:
- SETTING: read here from Shoal's own code (config/settings.py's schema, protocol/), or
  handed in from agent/ and client/ by the CLI (ShoalSources), never written twice;
- MEASURED: a figure of docs/benchmarks.md, measured on this machine;
- LUSTRE: /work/shared/reference/lustre.md or the seeds (/work/shared/seeds/), or, where
  marked "Lustre source", a default of lustre-release that lustre.md does not list;
- ASSUMED: nothing written says; a plausible figure, named so that a reader can disagree.
The presets' totals are checked against the anchors (tests/unit/test_sim_presets.py):
Cray 2009 10-15 min, Lustre with IR about 60 s and 300 s without, Shoal about 2.5 s at 200.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from shoal.config.settings import SCHEMA
from shoal.protocol.adaptive import ATParams
from shoal.protocol.mmp import check_wait
from shoal.protocol.ping_evict import ping_interval
from shoal.protocol.presence import RECONNECT_BOUND
from shoal.protocol.recovery_timeouts import IR_FACTOR, reach
from shoal.sim.engine import Network
from shoal.sim.params import (
    AgentTimeline,
    ClientPolicy,
    Fault,
    Scenario,
    ServerModel,
    WindowModel,
    Workload,
)

SWEEP_CLIENTS = (10, 100, 1_000, 10_000, 100_000)


@dataclass(frozen=True)
class ShoalSources:
    """Shoal's numbers that live above sim/ in the layers (agent/, client/, workload/):
    the CLI reads them there (cli/sim_cmds.py: shoal_sources) and hands them in."""

    silent_fence_s: float  # agent/silence.py SILENT_FENCE: a silent partner is gone
    ask_period_s: float  # agent/liveness.py ASK_PERIOD: a recovering target asks the MGS
    connect_timeout_s: float  # client/client.py Client(connect_timeout=...)
    backoff_min_s: float  # client/recovery.py BACKOFF_MIN
    backoff_max_s: float  # client/recovery.py BACKOFF_MAX
    busy_backoff_s: float  # client/recovery.py BUSY_BACKOFF
    replay_window: int  # client/recovery.py REPLAY_WINDOW
    budget: Mapping[str, float] = field(default_factory=dict)  # failover_phases.BUDGET_S


@dataclass(frozen=True)
class Preset:
    name: str
    anchor_clients: int  # the client count its anchor was measured with
    expect: tuple[float, float]  # where total_s must land at anchor_clients (seconds)
    source: str  # one line: what it reproduces
    build: Callable[[Fault], Scenario]
    default_fault: Fault = "power-off"


def _setting(name: str) -> float:
    return float(SCHEMA[name].default)


# -- Lustre ---------------------------------------------------------------------------------
LUSTRE_AT = ATParams(at_min=5, at_max=600, at_history=600, at_early_margin=5, at_extra=30,
                     timeout_pad=5)  # LUSTRE: lustre.md "Adaptive timeouts", est + est/4 + 5
OBD_TIMEOUT = 100.0  # LUSTRE: issue 22 and lustre.md's window (soft 300 = 3 x obd_timeout)
LUSTRE_PING = OBD_TIMEOUT / 4  # LUSTRE: pings every obd_timeout/4 (protocol/ping_evict.py)
LDISKFS_MMP = 2 * 5.0 + 1  # LUSTRE: lustre.md MMP, ext4's wait 2 x interval + 1 s, interval 5 s


def _lustre_client(ir: bool, at: bool) -> ClientPolicy:
    return ClientPolicy(
        ir=ir, at=LUSTRE_AT if at else ATParams(at_max=0),
        fixed_timeout_s=None if at else OBD_TIMEOUT,
        service_estimate_s=LUSTRE_AT.at_min,
        ping_interval_s=LUSTRE_PING,
        # Lustre source (ptlrpc/import.c): a connect waits CONNECTION_SWITCH_MIN 5 s, 5 s
        # more after every round over the NIDs, up to CONNECTION_SWITCH_MAX 50 s
        connect_timeout_s=5.0, connect_timeout_inc_s=5.0, connect_timeout_max_s=50.0,
        # Lustre source (ptlrpc/pinger.c): a DISCONN import is retried by the pinger, once
        # per ping interval
        backoff_min_s=LUSTRE_PING, backoff_max_s=LUSTRE_PING,
        busy_backoff_s=LUSTRE_PING,
        replay_window=1,  # LUSTRE: lustre.md "REPLAY: one request at a time"
        retry_dead_first=False)


def _lustre_window() -> WindowModel:
    # LUSTRE: lustre.md "Server recovery": soft 300 / hard 900, from the first reconnect;
    # IR shrinks soft to soft x ir_factor / 10 (factor 5); no MGS word on dead clients
    return WindowModel(soft_s=3 * OBD_TIMEOUT, hard_s=9 * OBD_TIMEOUT, ir_factor=5,
                       reach_s=0.0, from_first_connect=True, ask_period_s=None,
                       dead_bound_s=RECONNECT_BOUND)


def _lustre_oss() -> ServerModel:
    # ASSUMED: an OSS of 2010-2012 with 16 service threads; a connect (export, last_rcvd
    # slot, lock namespace) 2 ms of one; replays one at a time in transno order;
    # LUSTRE: jbd2 commits every 5 s (ldiskfs's default commit interval)
    # slot, lock namespace) 2 ms of one; 5,000 write RPCs/s acknowledged (1 MiB each: 5 GiB/s)
    return ServerModel(workers=16, connect_s=2e-3, replay_recv_s=50e-6, replay_s=200e-6,
                       ping_s=100e-6, io_s=1e-3, acked_ops_s=5_000, commit_interval_s=5.0,
                       notify_s=150e-6)  # ASSUMED: the MGS's lock revoke + nidtbl per client


_IB = Network(latency_s=50e-6, bandwidth_Bps=1e9)  # ASSUMED: a 2010s HPC fabric


def lustre(ir: bool) -> Callable[[Fault], Scenario]:
    """Lustre 2.x defaults (AT on), one OSS's target failed over by Pacemaker.
    LUSTRE: lustre.md "Failover times to beat": corosync token 3 s plus stonith; measured on
    Lustre (125 client nodes x 600 mounts, one OSS killed): about 60 s with IR, 300 s
    without."""

    def build(fault: Fault) -> Scenario:
        return Scenario(
            name="lustre-ir" if ir else "lustre-noir", fault=fault, targets=1, network=_IB,
            server=_lustre_oss(), window=_lustre_window(), client=_lustre_client(ir, True),
            # detect: corosync token 3 s (LUSTRE) + consensus 1 s (ASSUMED); fence: stonith
            # by IPMI, off and checked off, 10 s (ASSUMED); take: ldiskfs MMP (LUSTRE);
            # start: mount and target start 5 s (ASSUMED)
            agent=AgentTimeline(detect_s=4.0, fence_s=10.0, take_s=LDISKFS_MMP, start_s=5.0),
            # ASSUMED: half the mounts had I/O in flight; the idle half do not ping
            # (suppress_pings, as large sites run): only IR, or the window's soft
            # expiry, tells them
            workload=Workload(active=0.5, silent=1.0))

    return build


# -- Cray 2009 --------------------------------------------------------------------------------
def cray2009(fault: Fault) -> Scenario:
    """Cray XT 2.2 with Lustre 1.6/1.8 (seed 001, CUG 2009): no IR, no AT, obd_timeout
    100 s, the window waits for every client. LUSTRE: the seed: OSS1 served ost0 and ost2
    (2 targets move); clients time out, retry OSS1, time out again, then reach OSS2; the
    window shows 886 s left with 1 of 178 clients back; failovers took 10-15 min, up to 30;
    'client death during failover' among the known issues."""
    return Scenario(
        name="cray2009", fault=fault, targets=2,
        network=Network(latency_s=20e-6, bandwidth_Bps=2e9),  # ASSUMED: SeaStar
        # ASSUMED: a 2009 OSS, 8 threads, slower than _lustre_oss; 1,000 write RPCs/s
        server=ServerModel(workers=8, connect_s=4e-3, replay_recv_s=100e-6, replay_s=400e-6,
                           ping_s=200e-6, io_s=2e-3, acked_ops_s=1_000,
                           commit_interval_s=5.0, notify_s=0.0),
        window=_lustre_window(),
        client=replace(_lustre_client(False, False),
                       retry_dead_first=True),  # LUSTRE: the seed, "retry OSS1"
        # ASSUMED (the seed names the steps, not their times): the CRMS heartbeat marks the
        # node failed after 120 s; the proxy 'shoots' it through CRMS and waits, 60 s;
        # ldiskfs MMP (LUSTRE); the proxy starts the OSTs: mount after a crash, journal
        # replay, 110 s. About 5 minutes before a client can reconnect
        agent=AgentTimeline(detect_s=120.0, fence_s=60.0, take_s=LDISKFS_MMP, start_s=110.0),
        # ASSUMED: 0.1% of the clients dead (10-20 of 10k-20k XT nodes down at any time)
        workload=Workload(active=0.5, dead=0.001, dead_closed_s=None))


# -- Shoal ------------------------------------------------------------------------------------
def shoal(src: ShoalSources, ir: bool | None = None) -> Callable[[Fault], Scenario]:
    """Shoal as configured by default (ir None: the IR setting's default). SETTING: every
    timeout and interval; MEASURED: the node's service times and the agent's store and
    fence steps (docs/benchmarks.md)."""
    use_ir = bool(SCHEMA["IR"].default) if ir is None else ir
    ttl = _setting("LEASE_TTL")
    pings = ping_interval(_setting("PING_EVICT_TIMEOUT"))

    def build(fault: Fault) -> Scenario:
        local = fault == "kill"  # the local cluster's bench kills; the rig powers off
        store_op = 0.015  # MEASURED: detect_s of a kill, 0.014-0.016 (a refusal + the store)
        if local:
            detect = store_op
            fence = 0.01  # MEASURED: local fence 0.007-0.017 s
        else:
            # the partner watch finds a silent partner gone after SILENT_FENCE, or its lease
            # runs out (TTL), whichever is first
            detect = min(src.silent_fence_s + store_op, ttl)
            fence = 0.1  # MEASURED: the rig's fence agent, off and checked, 0.09-0.12 s
        # the MMP claim watches check_wait(MMP_INTERVAL) after the owner key's CAS
        take = check_wait(_setting("MMP_INTERVAL")) + store_op
        return Scenario(
            name="shoal" if use_ir else "shoal-noir", fault=fault, targets=1,
            network=Network(latency_s=100e-6, bandwidth_Bps=1e9),  # ASSUMED: loopback/veth
            # one node = one event loop: one worker. MEASURED: replays run at about
            # 10,000/s (recv + run 100 us); 200 clients' notices in 0.003-0.015 s (60 us
            # each); 2,600-11,200 replays per failover at a 1 s commit interval, so about
            # 12,000 acked writes/s. ASSUMED: a connect 200 us, a ping 40 us, a 4 KiB
            # write 150 us (a connect does a hello, an export and the window's bookkeeping)
            server=ServerModel(workers=1, connect_s=200e-6, replay_recv_s=40e-6,
                               replay_s=60e-6, ping_s=40e-6, io_s=150e-6, acked_ops_s=12_000,
                               commit_interval_s=_setting("COMMIT_INTERVAL"), notify_s=60e-6),
            window=WindowModel(soft_s=_setting("RECOVERY_SOFT"),
                               hard_s=_setting("RECOVERY_HARD"), ir_factor=IR_FACTOR,
                               reach_s=reach(pings), from_first_connect=False,
                               ask_period_s=src.ask_period_s if use_ir else None,
                               dead_bound_s=RECONNECT_BOUND),
            client=ClientPolicy(ir=use_ir, at=ATParams(), fixed_timeout_s=None,
                                service_estimate_s=0.01, ping_interval_s=pings,
                                connect_timeout_s=src.connect_timeout_s,
                                connect_timeout_inc_s=0.0,
                                connect_timeout_max_s=src.connect_timeout_s,
                                backoff_min_s=src.backoff_min_s,
                                backoff_max_s=src.backoff_max_s,
                                busy_backoff_s=src.busy_backoff_s,
                                replay_window=src.replay_window, retry_dead_first=False),
            agent=AgentTimeline(detect_s=detect, fence_s=fence, take_s=take,
                                start_s=0.01 if local else 0.1),  # MEASURED: start_s
            workload=Workload(active=1.0),  # the bench: every client writes back to back
            budget=dict(src.budget))

    return build


def presets(src: ShoalSources) -> dict[str, Preset]:
    return {
        "cray2009": Preset("cray2009", 20_000, (600.0, 900.0),
                           "Cray XT 2.2, 2009: 10-15 min (seed 001)", cray2009),
        "lustre-ir": Preset("lustre-ir", 75_000, (40.0, 80.0),
                            "Lustre 2.x with IR: about 60 s (lustre.md)", lustre(True)),
        # "about 300 s": the model lands at 380 s, the soft window counted from a first
        # reconnect that timeouts put 71 s after the death (docs/sim.md); a third either way
        "lustre-noir": Preset("lustre-noir", 75_000, (200.0, 400.0),
                              "Lustre 2.x without IR: about 300 s (lustre.md)", lustre(False)),
        "shoal": Preset("shoal", 200, (1.78, 3.3),
                        "Shoal's settings: 2.54 s median at 200 clients (rig, power-off)",
                        shoal(src)),
        "shoal-noir": Preset("shoal-noir", 200, (2.9, 5.5),
                             "Shoal with IR=no: 3.9-4.4 s at 200 clients (rig, power-off)",
                             shoal(src, ir=False)),
    }
