"""The failover agent's Prometheus metrics, added to its node's (node/metrics.py): what it
did (takeovers, fences, every event by kind) and how its lease fares."""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from shoal.agent.events import EventLog
from shoal.agent.heartbeat import Heartbeat


def agent_families(node: str, heartbeat: Heartbeat, events: EventLog) -> Iterable[Metric]:
    n = [node]
    counts = events.counts
    for name, kinds, text in (
            ("shoal_node_takeovers", ("take",), "Targets this node took over (owner key won)"),
            ("shoal_node_fences", ("fenced",), "Nodes this node fenced"),
            ("shoal_node_fence_failures", ("fence_failed",), "Fences that failed")):
        c = CounterMetricFamily(name, text, labels=["node"])
        c.add_metric(n, sum(counts[k] for k in kinds))
        yield c
    by_kind = CounterMetricFamily("shoal_node_events", "Events this node emitted, by kind",
                                  labels=["node", "kind"])
    for kind, count in sorted(counts.items()):
        by_kind.add_metric([node, kind], count)
    yield by_kind
    renewals = CounterMetricFamily("shoal_node_lease_renewals", "Lease renewals",
                                   labels=["node", "result"])
    renewals.add_metric([node, "ok"], heartbeat.renewals)
    renewals.add_metric([node, "failed"], heartbeat.failures)
    yield renewals
    worst = GaugeMetricFamily("shoal_node_lease_renewal_max_seconds",
                              "The longest lease renewal so far", labels=["node"])
    worst.add_metric(n, heartbeat.max_renew_s)
    yield worst
    store = GaugeMetricFamily("shoal_node_store_ok", "1 while the store answers",
                              labels=["node"])
    store.add_metric(n, 1 if heartbeat.store_ok else 0)
    yield store
    failsafe = GaugeMetricFamily("shoal_node_failsafe",
                                 "1 while the node serves on its partners' word (the store "
                                 "unreachable)", labels=["node"])
    failsafe.add_metric(n, 1 if time.monotonic() < heartbeat.failsafe_until else 0)
    yield failsafe
