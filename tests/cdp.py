"""A headless Chromium driven over the DevTools protocol (CDP) with trio-websocket: just enough for
the health-page test (open a page, evaluate JavaScript, take a screenshot). No npm, no browser download:
Debian's ``chromium`` package (``testnet/system-deps.sh`` installs it)."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import trio

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class CdpError(Exception):
    pass


class Page:
    """One page target, attached with a flat session on the browser's websocket."""

    def __init__(self, browser: "Browser", session_id: str) -> None:
        self.browser, self.session_id = browser, session_id

    async def send(self, method: str, params: dict | None = None) -> dict:
        return await self.browser.send(method, params, session_id=self.session_id)

    async def evaluate(self, expression: str) -> Any:
        res = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                   "awaitPromise": True})
        if "exceptionDetails" in res:
            raise CdpError(f"{expression!r} failed: {res['exceptionDetails'].get('text')}")
        return res.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 60.0, poll: float = 0.25) -> Any:
        """Evaluate ``expression`` until it is truthy; returns its value (fails after ``timeout``)."""
        with trio.fail_after(timeout):
            while True:
                try:
                    value = await self.evaluate(expression)
                except CdpError:
                    value = None
                if value:
                    return value
                await trio.sleep(poll)

    async def screenshot(self, path: Path) -> Path:
        res = await self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(res["data"]))
        return path


class Browser:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[trio.Event, list]] = {}

    async def _reader(self) -> None:
        while True:
            msg = json.loads(await self.ws.get_message())
            slot = self._waiting.get(msg.get("id", -1))
            if slot is not None:
                slot[1].append(msg)
                slot[0].set()

    async def send(self, method: str, params: dict | None = None, session_id: str | None = None) -> dict:
        mid = next(self._ids)
        msg: dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
        if session_id:
            msg["sessionId"] = session_id
        ev, box = trio.Event(), []
        self._waiting[mid] = (ev, box)
        try:
            await self.ws.send_message(json.dumps(msg))
            with trio.fail_after(30):
                await ev.wait()
        finally:
            self._waiting.pop(mid, None)
        if "error" in box[0]:
            raise CdpError(f"{method}: {box[0]['error']}")
        return box[0].get("result", {})

    async def open(self, url: str, width: int = 1280, height: int = 900) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        att = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, att["sessionId"])
        await page.send("Emulation.setDeviceMetricsOverride",
                        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        await page.send("Page.enable")
        await page.send("Page.navigate", {"url": url})
        await page.wait_for("document.readyState === 'complete'")
        return page


@asynccontextmanager
async def chromium(executable: str | None = None) -> AsyncIterator[Browser]:
    """A headless Chromium with a fresh profile; killed (and its profile removed) on exit."""
    from trio_websocket import open_websocket_url

    exe = executable or find_chromium()
    if exe is None:
        raise CdpError("no chromium executable found")
    profile = tempfile.mkdtemp(prefix="swarmlm-chromium-")
    errlog = open(Path(profile).with_suffix(".log"), "w+b")
    proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=errlog, start_new_session=True,
                            env={**os.environ, "HOME": profile})
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        with trio.fail_after(60):
            while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
                if proc.poll() is not None:
                    errlog.seek(0)
                    raise CdpError(f"chromium exited with {proc.returncode}: {errlog.read().decode()[-2000:]}")
                await trio.sleep(0.1)
        port, path = port_file.read_text().splitlines()[:2]
        async with open_websocket_url(f"ws://127.0.0.1:{port}{path}", max_message_size=64 << 20) as ws:
            browser = Browser(ws)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(browser._reader)
                try:
                    yield browser
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # chromium and the renderer/zygote children it started
        except ProcessLookupError:
            pass
        proc.wait(10)
        errlog.close()
        os.unlink(errlog.name)
        shutil.rmtree(profile, ignore_errors=True)
