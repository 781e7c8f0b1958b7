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
from typing import Protocol

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


class _Families:
    def __init__(self) -> None:
        t = ["target"]
        self.info = GaugeMetricFamily("shoal_target_info", "A target this node serves (1)",
                                      labels=["target", "kind"])
        self.state = GaugeMetricFamily("shoal_target_state",
                                       "1 for the target's state here, 0 for the others",
                                       labels=["target", "state"])
        self.epoch = GaugeMetricFamily("shoal_target_epoch",
                                       "The epoch the target is served in (moves at every "
                                       "start)", labels=t)
        self.exports = GaugeMetricFamily("shoal_target_exports",
                                         "Clients the target knows (num_exports)", labels=t)
        self.committed = GaugeMetricFamily("shoal_target_last_committed",
                                           "The last transaction number on disk", labels=t)
        self.commits = CounterMetricFamily("shoal_target_commits",
                                           "Journal commits", labels=t)
        self.commit_time = CounterMetricFamily("shoal_target_commit_seconds",
                                               "Time spent in journal commits (its rate over "
                                               "commits' rate: the commit latency)", labels=t)
        self.space = GaugeMetricFamily("shoal_target_bytes",
                                       "The target's device: size, free, available",
                                       labels=["target", "which"])
        self.inodes = GaugeMetricFamily("shoal_target_inodes",
                                        "The target's device: inodes, free", labels=["target",
                                                                                     "which"])
        self.requests = CounterMetricFamily("shoal_target_requests",
                                            "Requests served, by operation",
                                            labels=["target", "operation"])
        self.service = CounterMetricFamily("shoal_target_service_seconds",
                                           "Time spent serving requests, by operation",
                                           labels=["target", "operation"])
        self.errors = CounterMetricFamily("shoal_target_errors",
                                          "Requests answered with an error, by errno name",
                                          labels=["target", "errno"])
        self.read = CounterMetricFamily("shoal_ost_read_bytes", "Bytes read from the OST",
                                        labels=t)
        self.written = CounterMetricFamily("shoal_ost_write_bytes",
                                           "Bytes written to the OST", labels=t)
        self.dirty = GaugeMetricFamily("shoal_ost_uncommitted_bytes",
                                       "Bytes acknowledged and not yet committed", labels=t)
        self.recovering = GaugeMetricFamily("shoal_recovery_status",
                                            "1 for the recovery window's status "
                                            "(INACTIVE, RECOVERING, COMPLETE)",
                                            labels=["target", "status"])
        self.rec_clients = GaugeMetricFamily("shoal_recovery_clients",
                                             "The window's clients: known, connected, "
                                             "completed, evicted",
                                             labels=["target", "which"])
        self.replayed = GaugeMetricFamily("shoal_recovery_replayed_requests",
                                          "Requests replayed in the last window", labels=t)

    def target(self, name: str, svc: TargetService, state: str,
               rec: RecoveryStatus | None) -> None:
        self.info.add_metric([name, svc.kind], 1)
        for s in (*STATES, state) if state not in STATES else STATES:
            self.state.add_metric([name, s], 1 if s == state else 0)
        self.epoch.add_metric([name], svc.epoch)
        self.exports.add_metric([name], len(svc.known_clients))
        self.committed.add_metric([name], svc.last_committed)
        self.commits.add_metric([name], svc.commits)
        self.commit_time.add_metric([name], svc.commit_seconds)
        try:
            st = os.statvfs(svc.device)
        except OSError:
            st = None  # a device going away: its space is not known
        if st is not None:
            for which, n in (("size", st.f_blocks), ("free", st.f_bfree),
                             ("available", st.f_bavail)):
                self.space.add_metric([name, which], n * st.f_frsize)
            self.inodes.add_metric([name, "total"], st.f_files)
            self.inodes.add_metric([name, "free"], st.f_ffree)
        for op, count in sorted(svc.stats.items()):
            if op.startswith("err_"):
                self.errors.add_metric([name, op[4:]], count)
            elif op != "reconstructed":
                self.requests.add_metric([name, op], count)
                self.service.add_metric([name, op], svc.service_time.get(op, 0.0))
        if isinstance(svc, OST):
            self.read.add_metric([name], svc.bytes_read)
            self.written.add_metric([name], svc.bytes_written)
            self.dirty.add_metric([name], svc.dirty_bytes())
        if rec is not None:
            for s in ("INACTIVE", "RECOVERING", "COMPLETE"):
                self.recovering.add_metric([name, s], 1 if s == rec.status else 0)
            completed = rec.completed if rec.status == "RECOVERING" \
                else rec.max_clients - rec.evicted
            for which, n in (("known", rec.max_clients), ("connected", rec.connected),
                             ("completed", completed), ("evicted", rec.evicted)):
                self.rec_clients.add_metric([name, which], n)
            self.replayed.add_metric([name], rec.replayed)

    def all(self) -> list[Metric]:
        return [self.info, self.state, self.epoch, self.exports, self.committed,
                self.commits, self.commit_time, self.space, self.inodes, self.requests, self.service, self.errors, self.read,
                self.written, self.dirty, self.recovering, self.rec_clients, self.replayed]


def metrics_port(rpc_port: int, configured: int) -> int:
    """The port metrics are served on: METRICS_PORT, or the RPC port + 1 (0)."""
    if configured:
        return configured
    return rpc_port + 1 if rpc_port < 65535 else 0


