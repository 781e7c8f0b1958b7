"""A node's Prometheus metrics (issue 21), named so that a lustre_exporter user finds them.

Nothing is counted for them on the request path: a scrape reads what the node keeps anyway
(each target's request counts and service times, commits, recovery status, bytes moved,
space), on the event loop, so it sees one consistent moment. The failover agent adds its
own (takeovers, fences, lease renewals) through `extra`, as it plugs into the node
elsewhere: the node knows no agent.

The exposition is prometheus_client's, served on the node's own event loop by
net/metrics_http.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shoal.protocol.recovery_status import RecoveryStatus
from shoal.target.base import TargetService
from shoal.target.ost import OST

STATES = ("UP", "RECOVERING")


class MetricsSource(Protocol):
    """What the collector reads of the node (node/server.py NodeServer)."""

    node: str
    services: dict[str, TargetService]
    target_states: dict[str, str]

    def recovery_status(self, target: str) -> RecoveryStatus | None: ...

    def loop_lag(self) -> float: ...


class NodeCollector(Collector):
    def __init__(self, src: MetricsSource) -> None:
        self.src = src
        # more families at each scrape (the agent's): a callable yielding them
        self.extra: list[Callable[[], Iterable[Metric]]] = []

    def collect(self) -> Iterator[Metric]:
        src = self.src
        node = src.node
        lag = GaugeMetricFamily("shoal_node_loop_lag_seconds",
                                "How late the node's event loop ran its last check",
                                labels=["node"])
        lag.add_metric([node], src.loop_lag())
        yield lag
        fams = _Families()
        for name, svc in sorted(src.services.items()):
            fams.target(name, svc, src.target_states.get(name, "UP"),
                        src.recovery_status(name))
        yield from fams.all()
        for more in self.extra:
            yield from more()


G, C = GaugeMetricFamily, CounterMetricFamily
# (attribute, family, metric name, help, labels besides "target"), in exposition order
FAMILIES = (
    ("info", G, "shoal_target_info", "A target this node serves (1)", ["kind"]),
    ("state", G, "shoal_target_state", "1 for the target's state here, 0 for the others",
     ["state"]),
    ("epoch", G, "shoal_target_epoch", "The epoch the target is served in (moves at every "
     "start)", []),
    ("exports", G, "shoal_target_exports", "Clients the target knows (num_exports)", []),
    ("committed", G, "shoal_target_last_committed", "The last transaction number on disk",
     []),
    ("commits", C, "shoal_target_commits", "Journal commits", []),
    ("commit_time", C, "shoal_target_commit_seconds", "Time spent in journal commits (its "
     "rate over commits' rate: the commit latency)", []),
    ("space", G, "shoal_target_bytes", "The target's device: size, free, available",
     ["which"]),
    ("inodes", G, "shoal_target_inodes", "The target's device: inodes, free", ["which"]),
    ("requests", C, "shoal_target_requests", "Requests served, by operation", ["operation"]),
    ("service", C, "shoal_target_service_seconds", "Time spent serving requests, by "
     "operation", ["operation"]),
    ("errors", C, "shoal_target_errors", "Requests answered with an error, by errno name",
     ["errno"]),
    ("read", C, "shoal_ost_read_bytes", "Bytes read from the OST", []),
    ("written", C, "shoal_ost_write_bytes", "Bytes written to the OST", []),
    ("dirty", G, "shoal_ost_uncommitted_bytes", "Bytes acknowledged and not yet committed",
     []),
    ("recovering", G, "shoal_recovery_status", "1 for the recovery window's status "
     "(INACTIVE, RECOVERING, COMPLETE)", ["status"]),
    ("rec_clients", G, "shoal_recovery_clients", "The window's clients: known, connected, "
     "completed, evicted", ["which"]),
    ("replayed", G, "shoal_recovery_replayed_requests", "Requests replayed in the last "
     "window", []),
)


class _Families:
    def __init__(self) -> None:
        self.fams: dict[str, Any] = {
            attr: kind(name, text, labels=["target", *labels])
            for attr, kind, name, text, labels in FAMILIES}

    def target(self, name: str, svc: TargetService, state: str,
               rec: RecoveryStatus | None) -> None:
        self.fams["info"].add_metric([name, svc.kind], 1)
        for s in (*STATES, state) if state not in STATES else STATES:
            self.fams["state"].add_metric([name, s], 1 if s == state else 0)
        self.fams["epoch"].add_metric([name], svc.epoch)
        self.fams["exports"].add_metric([name], len(svc.known_clients))
        self.fams["committed"].add_metric([name], svc.last_committed)
        self.fams["commits"].add_metric([name], svc.commits)
        self.fams["commit_time"].add_metric([name], svc.commit_seconds)
        try:
            st = os.statvfs(svc.device)
        except OSError:
            st = None  # a device going away: its space is not known
        if st is not None:
            for which, n in (("size", st.f_blocks), ("free", st.f_bfree),
                             ("available", st.f_bavail)):
                self.fams["space"].add_metric([name, which], n * st.f_frsize)
            self.fams["inodes"].add_metric([name, "total"], st.f_files)
            self.fams["inodes"].add_metric([name, "free"], st.f_ffree)
        for op, count in sorted(svc.stats.items()):
            if op.startswith("err_"):
                self.fams["errors"].add_metric([name, op[4:]], count)
            elif op != "reconstructed":
                self.fams["requests"].add_metric([name, op], count)
                self.fams["service"].add_metric([name, op], svc.service_time.get(op, 0.0))
        if isinstance(svc, OST):
            self.fams["read"].add_metric([name], svc.bytes_read)
            self.fams["written"].add_metric([name], svc.bytes_written)
            self.fams["dirty"].add_metric([name], svc.dirty_bytes())
        if rec is not None:
            for s in ("INACTIVE", "RECOVERING", "COMPLETE"):
                self.fams["recovering"].add_metric([name, s], 1 if s == rec.status else 0)
            completed = rec.completed if rec.status == "RECOVERING" \
                else rec.max_clients - rec.evicted
            for which, n in (("known", rec.max_clients), ("connected", rec.connected),
                             ("completed", completed), ("evicted", rec.evicted)):
                self.fams["rec_clients"].add_metric([name, which], n)
            self.fams["replayed"].add_metric([name], rec.replayed)

    def all(self) -> list[Metric]:
        return list(self.fams.values())


def metrics_port(rpc_port: int, configured: int) -> int:
    """The port metrics are served on: METRICS_PORT, or the RPC port + 1 (0)."""
    if configured:
        return configured
    return rpc_port + 1 if rpc_port < 65535 else 0


