"""Which events are alerts, and the webhook and command hooks against real receivers (an
HTTP server on loopback, a real process)."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

from shoal.agent import alerts as alerts_mod
from shoal.agent.alerts import Alerts, StormWatch, is_alert
from shoal.agent.records import Event


def ev(kind: str, **data: Any) -> Event:
    return Event(1.0, "nid00063", kind, "scratch-OST0000", "detail", data)


def test_what_is_an_alert() -> None:
    assert is_alert(ev("detect", failover=True, last_owner="nid00062"))
    assert not is_alert(ev("detect", failover=False))  # a first start
    assert is_alert(ev("fence_failed", alert=True))
    assert is_alert(ev("no_failover", alert=True))
    assert is_alert(ev("owner_failsafe"))
    assert not is_alert(ev("take")) and not is_alert(ev("recovered"))


def test_the_webhook_gets_the_whole_record() -> None:
    got: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"

        async def go() -> None:
            a = Alerts({"ALERT_WEBHOOK": url})
            a.event(ev("take"))  # not an alert: nothing sent
            a.event(ev("fence_failed", alert=True, victim="nid00062"))
            await a.close()
            assert a.sent == 1

        asyncio.run(go())
    finally:
        server.shutdown()
    [alert] = got
    assert alert["alert"] == "fence_failed" and alert["target"] == "scratch-OST0000"
    assert alert["data"] == {"alert": True, "victim": "nid00062"}


def test_a_hook_that_hangs_is_bounded_and_a_crowd_is_dropped(tmp_path: Path,
                                                               monkeypatch: Any) -> None:
    monkeypatch.setattr(alerts_mod, "HOOK_TIMEOUT", 0.5)
    monkeypatch.setattr(alerts_mod, "MAX_RUNNING", 2)

    async def go() -> Alerts:
        a = Alerts({"ALERT_COMMAND": f"{sys.executable} -c 'import time; time.sleep(30)'"})
        for _ in range(3):
            a.event(ev("owner_failsafe"))
        assert a.dropped == 1
        t0 = asyncio.get_running_loop().time()
        await a.close()
        assert asyncio.get_running_loop().time() - t0 < 5
        return a

    a = asyncio.run(go())
    assert a.sent == 2  # each ended, killed at its timeout


def test_an_eviction_storm_is_told_once_until_it_calms() -> None:
    w = StormWatch(count=3, window=10.0)
    assert [w.evicted(t) for t in (0.0, 4.0)] == [0, 0]
    assert w.evicted(9.0) == 3  # three within ten seconds
    assert w.evicted(9.5) == 0 and w.evicted(12.0) == 0  # the same storm
    assert w.evicted(30.0) == 0  # calm for a window: counting again
    assert [w.evicted(t) for t in (31.0, 32.0)] == [0, 3]
    spread = StormWatch(count=3, window=10.0)
    assert [spread.evicted(t) for t in (0.0, 11.0, 22.0, 33.0)] == [0, 0, 0, 0]
