"""Headless Chromium (the Debian ``chromium``) driven over the DevTools protocol.

:func:`open_page` starts a browser with its own profile folder, opens a URL and
yields a :class:`Page`: ``evaluate`` runs JavaScript in the page and returns
its JSON value, ``wait_until`` polls an expression until it is true, and
``screenshot`` writes a PNG of the whole page. The protocol is spoken with
``websockets``' synchronous client; no Playwright, no downloaded browser.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


class BrowserError(RuntimeError):
    """The browser did not start, or a DevTools call failed."""


class Page:
    """One tab, over its DevTools websocket."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self._ids = itertools.count(1)

    def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        """Send one command; its result (events that arrive meanwhile are skipped)."""
        number = next(self._ids)
        self.socket.send(json.dumps({"id": number, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") != number:
                continue
            if "error" in message:
                raise BrowserError(f"{method}: {message['error']}")
            result: dict[str, Any] = message["result"]
            return result

    def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` (promises awaited); page errors raise."""
        answer = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in answer:
            raise BrowserError(f"{expression}: {answer['exceptionDetails'].get('text')}")
        return answer["result"].get("value")

    def wait_until(self, expression: str, timeout: float = 60.0) -> Any:
        """Poll ``expression`` until it is truthy; its value (TimeoutError if never)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {timeout:.0f} s: {expression}")
            time.sleep(0.25)

    def screenshot(self, path: Path, width: int) -> Path:
        """A PNG of the whole page at ``width`` CSS pixels."""
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width, height=height, deviceScaleFactor=1, mobile=False,
        )  # fmt: skip
        time.sleep(0.5)  # Plotly's responsive charts redraw on the resize
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


def browser_binary() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    raise BrowserError("no chromium found: apt-get install chromium")


@contextmanager
def open_page(url: str, *, width: int = 1400, height: int = 1000) -> Iterator[Page]:
    """A headless browser showing ``url``; closed, with its profile, at the end."""
    profile = Path(tempfile.mkdtemp(prefix="tributary-chromium-"))
    argv = [
        browser_binary(), "--headless=new", "--disable-gpu", "--no-first-run",
        "--no-default-browser-check", "--disable-extensions", "--remote-debugging-port=0",
        "--remote-allow-origins=*", f"--user-data-dir={profile}",
        f"--window-size={width},{height}", "about:blank",
    ]  # fmt: skip
    if os.geteuid() == 0:  # Chromium refuses to run as root with its sandbox
        argv.insert(1, "--no-sandbox")
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with connect(_page_socket(profile, process), max_size=None) as socket:
            page = Page(socket)
            page.call("Page.enable")
            page.call("Page.navigate", url=url)
            page.wait_until("location.href !== 'about:blank' && document.readyState === 'complete'")
            yield page
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(profile, ignore_errors=True)


def _page_socket(profile: Path, process: subprocess.Popen[bytes], timeout: float = 30.0) -> str:
    """The DevTools websocket of the browser's first tab (the port is in its profile)."""
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BrowserError(f"chromium exited with {process.returncode}")
        if port_file.exists() and port_file.read_text().strip():
            port = port_file.read_text().split()[0]
            try:
                targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=2.0).json()
            except httpx.HTTPError:
                targets = []
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                socket: str = pages[0]["webSocketDebuggerUrl"]
                return socket
        time.sleep(0.1)
    raise BrowserError(f"chromium's DevTools did not answer within {timeout:.0f} s")
