"""`shoal web`: the file system on one page, as an administrator thinks of it, updating by
itself (issue 21).

The failover pairs with who serves what now, each target's state, epoch and health, the
nodes, and the recent failovers drawn to scale: detect, fence, take, start, notify,
recovered. The server reads the fleet's status (the store and every node, as `shoal status`
does) every `interval` seconds and pushes the page's live part to every open page as a
server-sent event when it changed; the page replaces it, no reload. Read-only: it serves
nothing that changes the file system. aiohttp, and no script beyond the page's few lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import html
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

PHASES = ("detect", "fenced", "take", "start", "ir_notify", "recovered")
COLORS = {"detect": "#d62728", "fenced": "#9467bd", "take": "#ff7f0e", "start": "#1f77b4",
          "ir_notify": "#17becf", "recovered": "#2ca02c"}
STATE_COLORS = {"UP": "#2ca02c", "RECOVERING": "#ff7f0e", "FAILING_OVER": "#ff7f0e",
                "STOPPED": "#1f77b4", "alive": "#2ca02c", "dead": "#d62728",
                "fenced": "#9467bd"}
EVENTS_READ = 200  # of the store's event log, for the failovers drawn

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Shoal: {fs}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; }}
th {{ background: #f3f3f3; }}
.state {{ color: white; padding: 0.1em 0.5em; border-radius: 0.3em; }}
#stamp {{ color: #777; font-size: 90%; }}
</style></head>
<body><h1>Shoal: {fs}</h1>
<div id="live">{live}</div>
<script>
const es = new EventSource("stream");
es.onmessage = (m) => {{ document.getElementById("live").innerHTML = JSON.parse(m.data); }};
</script>
</body></html>
"""


def _t(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")[:-3]


def _state(text: str) -> str:
    color = STATE_COLORS.get(text, "#d62728")
    return f'<span class="state" style="background:{color}">{html.escape(text)}</span>'


def failovers(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each failover among `events` (oldest first): its target, the old and new owner, and
    when each phase came, from the detect that started it."""
    out: list[dict[str, Any]] = []
    open_: dict[str, dict[str, Any]] = {}
    for e in sorted(events, key=lambda e: e["time"]):
        kind, target = e["kind"], e["target"]
        if kind == "detect" and (e.get("data") or {}).get("failover"):
            f = {"target": target, "from": (e.get("data") or {}).get("last_owner", ""),
                 "to": e["node"], "at": e["time"], "phases": {"detect": 0.0}}
            open_[target] = f
            out.append(f)
        elif target in open_ and kind in PHASES and kind not in open_[target]["phases"]:
            f = open_[target]
            f["phases"][kind] = e["time"] - f["at"]
            if kind == "recovered":
                del open_[target]
    return out


def timeline_svg(f: dict[str, Any], px_per_s: float = 200.0) -> str:
    """One failover's phases on a line drawn to scale (px_per_s pixels a second)."""
    end = max(f["phases"].values() or [0.0])
    width = round(end * px_per_s) + 160
    parts = [f'<svg width="{width}" height="46" role="img" aria-label="failover of '
             f'{html.escape(f["target"])}">',
             f'<line x1="10" y1="20" x2="{round(end * px_per_s) + 10}" y2="20" '
             'stroke="#999" stroke-width="2"/>']
    for i, (kind, at) in enumerate(sorted(f["phases"].items(), key=lambda kv: kv[1])):
        x = round(at * px_per_s) + 10
        parts.append(f'<circle cx="{x}" cy="20" r="6" fill="{COLORS.get(kind, "#444")}">'
                     f'<title>{kind} +{at:.3f}s</title></circle>')
        y = 40 if i % 2 else 10
        parts.append(f'<text x="{x + 8}" y="{y}" font-size="10">{kind} +{at:.2f}s</text>')
    parts.append("</svg>")
    return "".join(parts)


def live_html(st: dict[str, Any], now: float) -> str:
    """The page's live part: pairs, nodes, failovers."""
    rows = []
    for t in st["targets"]:
        rows.append(
            f"<tr><td>{html.escape(t['name'])}</td><td>{_state(t['state'])}</td>"
            f"<td>{html.escape(t['owner'] or '-')}</td>"
            f"<td>{html.escape(' '.join(t['backup']))}</td><td>{t['epoch'] or '-'}</td>"
            f"<td>{_t(t['since'])}</td><td>{html.escape(t['health'] or '-')}</td>"
            f"<td>{html.escape(t['reason'] or '')}</td></tr>")
    nodes = []
    for n in st["nodes"]:
        metrics = n.get("metrics")
        link = f'<a href="{html.escape(metrics)}">metrics</a>' if metrics else "-"
        nodes.append(f"<tr><td>{html.escape(n['name'])}</td><td>{html.escape(n['address'])}"
                     f"</td><td>{_state(n['state'])}</td><td>{_t(n['up_since'])}</td>"
                     f"<td>{link}</td></tr>")
    fos = []
    for f in reversed(failovers(st["events"])[-8:]):
        total = f["phases"].get("recovered")
        took = f"{total:.2f} s" if total is not None else "under way"
        fos.append(f"<tr><td>{_t(f['at'])}</td><td>{html.escape(f['target'])}</td>"
                   f"<td>{html.escape(f['from'])} &rarr; {html.escape(f['to'])}</td>"
                   f"<td>{took}</td><td>{timeline_svg(f)}</td></tr>")
    return (
        f'<p id="stamp">updated {_t(now)}</p>'
        "<h2>Targets</h2><table id=\"targets\"><tr><th>target</th><th>state</th>"
        "<th>owner</th><th>backup</th><th>epoch</th><th>since</th><th>health</th>"
        f"<th>why</th></tr>{''.join(rows)}</table>"
        "<h2>Nodes</h2><table id=\"nodes\"><tr><th>node</th><th>address</th><th>state</th>"
        f"<th>up since</th><th></th></tr>{''.join(nodes)}</table>"
        "<h2>Recent failovers</h2>"
        + (f"<table id=\"failovers\"><tr><th>at</th><th>target</th><th>moved</th>"
           f"<th>took</th><th>phases (to scale)</th></tr>{''.join(fos)}</table>"
           if fos else "<p>none</p>"))


class StatusPage:
    """The page and its stream, fed by `read()` (the fleet's status) every `interval` s."""

    def __init__(self, fs: str, read: Callable[[], Awaitable[dict[str, Any]]],
                 interval: float = 1.0) -> None:
        self.fs = fs
        self.read = read
        self.interval = interval
        self.live = "<p>reading the file system ...</p>"
        self._changed = asyncio.Condition()
        self._version = 0

    async def refresh(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                st = await self.read()
                live = live_html(st, datetime.datetime.now().timestamp())
            except Exception as exc:  # noqa: BLE001 - shown on the page, and tried again
                live = f"<p>not read: {html.escape(str(exc))}</p>"
            if live != self.live:
                async with self._changed:
                    self.live, self._version = live, self._version + 1
                    self._changed.notify_all()
            await asyncio.sleep(max(0.0, self.interval - (loop.time() % self.interval)))

    async def page(self, _request: web.Request) -> web.Response:
        return web.Response(text=PAGE.format(fs=html.escape(self.fs), live=self.live),
                            content_type="text/html")

    async def stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        seen = -1
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while True:
                async with self._changed:
                    if seen == self._version:
                        await self._changed.wait()
                    seen, live = self._version, self.live
                await resp.write(f"data: {json.dumps(live)}\n\n".encode())
        return resp

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.page)
        app.router.add_get("/stream", self.stream)

        async def background(app: web.Application) -> Any:
            task = asyncio.create_task(self.refresh())
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        app.cleanup_ctx.append(background)
        return app
