"""Every node's Prometheus metrics (node/metrics.py, agent/metrics.py), scraped as Prometheus
would during `shoal load` and an OSS failover, and read with prometheus_client's parser:
the values that must move do (bytes written, the target's epoch and owner, the backup's
takeovers, the window's replays)."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest

from shoal.cluster.local import LocalCluster
from shoal.net.metrics_http import HEAD_MAX
from tests.scenarios.harness import (
    Load,
    assert_clean,
    scrape,
    served_by,
    set_fail,
    urls,
    value,
    wait_for,
)

OSS_A, OSS_B = "nid00062", "nid00063"
A_OSTS = ["scratch-OST0000", "scratch-OST0002"]
OST0 = "scratch-OST0000"

pytestmark = pytest.mark.timeout(120)

def test_metrics_move_with_the_load_and_the_failover(cl: LocalCluster) -> None:
    where = urls(cl)
    assert set(where) == {"nid00060", "nid00061", OSS_A, OSS_B}
    for url in where.values():
        assert scrape(url)  # every node answers
    load = Load(cl, clients=4, duration=8.0)
    load.wait_writing()
    first = scrape(where[OSS_A])
    time.sleep(0.5)
    second = scrape(where[OSS_A])
    written = [value(s, "shoal_ost_write_bytes_total", target=OST0) for s in (first, second)]
    assert written[0] is not None and written[1] is not None and written[1] > written[0] > 0
    assert value(second, "shoal_target_state", target=OST0, state="UP") == 1
    size = value(second, "shoal_target_bytes", target=OST0, which="size") or 0
    free = value(second, "shoal_target_bytes", target=OST0, which="free")
    assert size > 0 and free is not None and 0 <= free <= size
    assert (value(second, "shoal_target_inodes", target=OST0, which="total") or 0) > 0
    assert (value(second, "shoal_target_commit_seconds_total", target=OST0) or 0) > 0
    epoch_a = value(second, "shoal_target_epoch", target=OST0)
    assert epoch_a is not None
    before_b = scrape(where[OSS_B])
    assert value(before_b, "shoal_target_epoch", target=OST0) is None  # not served there
    takeovers = value(before_b, "shoal_node_takeovers_total", node=OSS_B)
    assert takeovers is not None

    set_fail(cl, OSS_A, loc="0x720", target=OST0)  # its tail is replayed on the backup
    time.sleep(0.5)
    assert cl.kill_node(OSS_A)
    wait_for("OSS_B serving the OSTs", served_by(cl, OSS_B, A_OSTS), timeout=40)
    after = scrape(where[OSS_B])
    assert (value(after, "shoal_target_epoch", target=OST0) or 0) > epoch_a
    assert (value(after, "shoal_node_takeovers_total", node=OSS_B) or 0) >= takeovers + 2
    assert (value(after, "shoal_node_lease_renewals_total", node=OSS_B, result="ok") or 0) > 0

    def recovered() -> bool:
        s = scrape(where[OSS_B])
        return value(s, "shoal_recovery_status", target=OST0, status="COMPLETE") == 1

    wait_for("OST0000's window closed", recovered, timeout=30)
    done = scrape(where[OSS_B])
    assert (value(done, "shoal_recovery_replayed_requests", target=OST0) or 0) > 0
    assert value(done, "shoal_target_state", target=OST0, state="UP") == 1
    assert_clean(load.result())
    # the writes after the failover land on the backup
    assert (value(scrape(where[OSS_B]), "shoal_ost_write_bytes_total", target=OST0) or 0) > 0


def test_another_path_is_a_404_and_an_oversized_request_is_dropped(cl: LocalCluster) -> None:
    url = urls(cl)[OSS_A]
    try:
        urllib.request.urlopen(url.replace("/metrics", "/admin"), timeout=10)  # noqa: S310
        raise AssertionError("not a 404")
    except urllib.error.HTTPError as exc:
        assert exc.code == 404
    host, port = url.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"x" * (HEAD_MAX * 2))
        assert sock.recv(100) == b""  # closed, nothing answered
    assert scrape(url)  # and the node still answers
