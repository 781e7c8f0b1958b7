"""A client's Prometheus metrics (issue 21): each import's state and what it has on its
hands, read at each scrape from what the import keeps anyway (a mount serves them with
`-o metrics=ADDR:PORT`, through net/metrics_http.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shoal.client.client import Client
from shoal.protocol.import_state import ImportState


class ClientCollector(Collector):
    def __init__(self, client: Client, requests: Counter[str] | None = None,
                 seconds: Counter[str] | None = None,
                 early: Counter[str] | None = None,
                 late: Callable[[], int] | None = None) -> None:
        self.client = client
        self.requests = requests  # a mount's FUSE requests by operation
        self.seconds = seconds if seconds is not None else Counter()  # time serving them
        self.early = early  # a mount's reads sent with their opens: sent, used, dropped
        self.late = late  # a mount's kernel forgettings late for their cancels

    def collect(self) -> Iterator[Metric]:
        c = self.client
        labels = ["client", "target"]
        state = GaugeMetricFamily("shoal_client_import_state",
                                  "1 for the import's state (FULL, REPLAY, DISCONN, ...)",
                                  labels=[*labels, "state"])
        inflight = GaugeMetricFamily("shoal_client_rpcs_in_flight",
                                     "Requests sent and not answered", labels=labels)
        uncommitted = GaugeMetricFamily("shoal_client_uncommitted_requests",
                                        "Acknowledged changes the target has not committed "
                                        "(what a failover would replay)", labels=labels)
        ubytes = GaugeMetricFamily("shoal_client_uncommitted_bytes",
                                   "Their bytes", labels=labels)
        counters = {
            "recoveries": CounterMetricFamily("shoal_client_recoveries",
                                              "Recoveries into a new server (failovers, "
                                              "restarts)", labels=labels),
            "replays": CounterMetricFamily("shoal_client_replays",
                                           "Requests replayed", labels=labels),
            "evictions": CounterMetricFamily("shoal_client_evictions",
                                             "Times the server evicted this client",
                                             labels=labels),
            "timeouts": CounterMetricFamily("shoal_client_timeouts",
                                            "Requests that timed out (resent)", labels=labels),
        }
        for imp in c.imports:
            sm = imp.sm
            key = [c.uuid, imp.target]
            for s in ImportState:
                state.add_metric([*key, s.value], 1 if sm.state is s else 0)
            inflight.add_metric(key, len(sm.inflight))
            uncommitted.add_metric(key, len(sm.replay))
            ubytes.add_metric(key, sm.uncommitted_bytes)
            counters["recoveries"].add_metric(key, sm.recoveries)
            counters["replays"].add_metric(key, sm.replays_sent)
            counters["evictions"].add_metric(key, sm.evictions)
            counters["timeouts"].add_metric(key, imp.timeouts)
        yield from (state, inflight, uncommitted, ubytes, *counters.values())
        if self.requests is not None:
            fuse = CounterMetricFamily("shoal_mount_requests",
                                       "FUSE requests the kernel sent the mount, by operation",
                                       labels=["client", "op"])
            spent = CounterMetricFamily("shoal_mount_request_seconds",
                                        "Time the mount spent serving them, by operation",
                                        labels=["client", "op"])
            for op, n in sorted(self.requests.items()):
                fuse.add_metric([c.uuid, op], n)
                spent.add_metric([c.uuid, op], self.seconds[op])
            yield from (fuse, spent)
        if self.early is not None:
            early = CounterMetricFamily("shoal_mount_early_reads",
                                        "Small files' reads sent with their opens "
                                        "(mount/early_read.py): sent, and then used or "
                                        "dropped; stored: used, and put in the kernel's "
                                        "pages with the open", labels=["client", "outcome"])
            for outcome in ("sent", "used", "dropped", "stored"):
                early.add_metric([c.uuid, outcome], self.early[outcome])
            yield early
        if self.late is not None:
            late = CounterMetricFamily("shoal_mount_kernel_late",
                                       "Locks given back before the kernel had forgotten "
                                       "what they covered (its names, attributes or pages: "
                                       "mount/kernel_cache.py SETTLE_WAIT passed first)",
                                       labels=["client"])
            late.add_metric([c.uuid], self.late())
            yield late
