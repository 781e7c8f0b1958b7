"""The status page (`shoal web`, cli/web.py) in a real browser: headless Chromium (Debian's),
driven over its DevTools protocol. A node is killed; the page shows the takeover and the new
owner by itself, without a reload, and its screenshot is not blank."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shoal.cluster.local import LocalCluster
from tests.scenarios.harness import served_by, wait_for

OSS_A, OSS_B = "nid00062", "nid00063"
CHROMIUM = shutil.which("chromium")

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium (make debs installs "
                                 "Debian's)")]

OWNER = """(() => {
  const row = [...document.querySelectorAll('#targets tr')]
      .find(r => r.cells[0] && r.cells[0].innerText === 'scratch-OST0000');
  return row ? row.cells[2].innerText : null; })()"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def png_colors(png: bytes) -> int:
    """How many distinct byte values the image's pixel data holds (a blank page: a few)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        kind = png[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat += png[pos + 8:pos + 8 + length]
        pos += 12 + length
    return len(set(zlib.decompress(idat)))


class Page:
    """One page of the browser, over the DevTools protocol."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.n = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.n += 1
        await self.ws.send_str(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads((await self.ws.receive()).data)
            if msg.get("id") == self.n:
                assert "error" not in msg, msg
                return dict(msg["result"])

    async def eval(self, expr: str) -> Any:
        r = await self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        return r["result"].get("value")


def test_the_page_shows_a_takeover_without_a_reload(cl: LocalCluster, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    web = subprocess.Popen([sys.executable, "-m", "shoal", "web", "--dir", str(cl.dir),
                            "--listen", f"127.0.0.1:{port}", "--interval", "0.5"],
                           stdout=subprocess.DEVNULL)
    browser = None
    try:
        def page_up() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - ours
                    return b"scratch-OST0000" in r.read()
            except OSError:
                return False

        wait_for("the status page", page_up, timeout=30)
        assert CHROMIUM is not None
        browser = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--remote-debugging-port=0", f"--user-data-dir={tmp_path / 'chromium'}",
             "--window-size=1300,900", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "HOME": str(tmp_path)})
        assert browser.stderr is not None
        devtools = None
        deadline = time.monotonic() + 30
        while devtools is None and time.monotonic() < deadline:
            line = browser.stderr.readline()
            if m := re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line):
                devtools = int(m.group(1))
        assert devtools is not None, "chromium did not start its DevTools"
        shot = asyncio.run(_watch(cl, devtools, url))
    finally:
        if browser is not None:
            browser.kill()
            browser.wait()
        web.terminate()
        web.wait(10)
    (tmp_path / "status-page.png").write_bytes(shot)
    assert len(shot) > 10_000 and png_colors(shot) > 20


async def _watch(cl: LocalCluster, devtools: int, url: str) -> bytes:
    async with aiohttp.ClientSession() as s:
        for _ in range(50):
            async with s.get(f"http://127.0.0.1:{devtools}/json/list") as r:
                pages = [p for p in await r.json() if p.get("url") == url]
            if pages:
                break
            await asyncio.sleep(0.2)
        async with s.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            page = Page(ws)
            for _ in range(100):
                if await page.eval(OWNER) == OSS_A:
                    break
                await asyncio.sleep(0.2)
            assert await page.eval(OWNER) == OSS_A
            await page.eval("window.loadedOnce = 'yes'")  # gone if the page reloads
            assert await asyncio.to_thread(cl.kill_node, OSS_A)
            await asyncio.to_thread(wait_for, "OSS_B serving OST0000",
                                    served_by(cl, OSS_B, ["scratch-OST0000"]), timeout=40)
            for _ in range(150):
                text = await page.eval("document.getElementById('failovers') ? "
                                       "document.getElementById('failovers').innerText : ''")
                if await page.eval(OWNER) == OSS_B and "recovered" in (text or ""):
                    break
                await asyncio.sleep(0.2)
            assert await page.eval(OWNER) == OSS_B
            assert f"{OSS_A} → {OSS_B}" in text
            assert await page.eval("window.loadedOnce") == "yes"
            shot = await page.call("Page.captureScreenshot", format="png")
            return base64.b64decode(shot["data"])
