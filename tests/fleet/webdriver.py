"""A real headless Chromium driven over WebDriver (W3C, plain HTTP to Debian's chromedriver), for
the fleet page tests: no browser-automation library needed, only chromium and chromium-driver."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from gateway.testing import free_port

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1500,760",
                 "--force-device-scale-factor=1"]


class WebDriverError(Exception):
    """chromedriver answered with an error."""


class Browser:
    """One WebDriver session."""

    def __init__(self, base: str, session: str) -> None:
        self.base = f"{base}/session/{session}"

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        return await asyncio.to_thread(_http, method, self.base + path, body)

    async def go(self, url: str) -> None:
        await self.call("POST", "/url", {"url": url})

    async def js(self, script: str, *args: Any) -> Any:
        return await self.call("POST", "/execute/sync", {"script": script, "args": list(args)})

    async def find(self, css: str) -> str:
        found = await self.call("POST", "/element", {"using": "css selector", "value": css})
        assert isinstance(found, dict) and ELEMENT in found, found
        return str(found[ELEMENT])

    async def click(self, css: str) -> None:
        await self.call("POST", f"/element/{await self.find(css)}/click", {})

    async def type(self, css: str, text: str) -> None:
        await self.call("POST", f"/element/{await self.find(css)}/value", {"text": text})

    async def clear(self, css: str) -> None:
        await self.call("POST", f"/element/{await self.find(css)}/clear", {})

    async def screenshot(self, path: Path) -> bytes:
        png = base64.b64decode(await self.call("GET", "/screenshot"))
        await asyncio.to_thread(path.write_bytes, png)
        return png


def _http(method: str, url: str, body: Any) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())["value"]
    except urllib.error.HTTPError as e:
        raise WebDriverError(e.read().decode(errors="replace")) from None


@contextlib.asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[Browser]:
    """chromedriver on a free port with a fresh headless Chromium profile; both stopped after."""
    driver, binary = shutil.which("chromedriver"), shutil.which("chromium")
    if driver is None or binary is None:
        raise RuntimeError("chromium and chromedriver are needed: hil/system-deps.sh test "
                           "(apt-get install chromium chromium-driver)")
    port = free_port()
    proc = await asyncio.create_subprocess_exec(driver, f"--port={port}", stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    session = ""
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                await asyncio.to_thread(_http, "GET", base + "/status", None)
                break
            await asyncio.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": binary, "args": [*CHROMIUM_ARGS, f"--user-data-dir={profile}"]}}}}
        created = await asyncio.to_thread(_http, "POST", base + "/session", caps)
        session = created["sessionId"]
        yield Browser(base, session)
    finally:
        if session:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(_http, "DELETE", f"{base}/session/{session}", None)
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
