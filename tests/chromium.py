"""Headless Chromium for the browser tests (the dashboard, the report page): start it in its own process group
with DevTools on a free port, and a minimal DevTools Protocol client over one page's websocket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
    "--hide-scrollbars",
    "--allow-file-access-from-files",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


def binary() -> str | None:
    return next((p for n in NAMES if (p := shutil.which(n)) is not None), None)


class Cdp:
    """Calls (``call``) and page evaluation (``js``) over a page target's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, describe: str | None = None) -> None:
        self.ws = ws
        self.describe = describe
        """A page expression whose value a ``wait_for`` timeout reports (what the page shows)."""
        self._next = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            fut = self._pending.pop(data["id"], None) if "id" in data else None
            if fut is not None and not fut.done():
                fut.set_result(data)
            elif "method" in data:
                self.events.append(data)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("DevTools connection closed"))

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next] = fut
        await self.ws.send_json({"id": self._next, "method": method, "params": params})
        answer = await asyncio.wait_for(fut, 60)
        assert "error" not in answer, (method, answer["error"])
        result: dict[str, Any] = answer["result"]
        return result

    async def js(self, expression: str) -> Any:
        """The value of ``expression`` in the page (awaited when it is a promise)."""
        r = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in r, (expression, r["exceptionDetails"])
        return r["result"].get("value")

    async def wait_for(self, expression: str, what: str, timeout_s: float = 60.0) -> Any:
        """Poll until ``expression`` is truthy (an exception thrown by it counts as not yet)."""
        deadline = time.monotonic() + timeout_s
        while not (
            value := await self.js(
                f"(() => {{ try {{ return {expression}; }} catch (e) {{ return null; }} }})()"
            )
        ):
            if time.monotonic() >= deadline:  # what the page shows, read only now (it may not load before)
                page = f"; page: {await self.js(self.describe)}" if self.describe else ""
                raise AssertionError(f"timed out waiting for {what}{page}")
            await asyncio.sleep(0.2)
        return value

    def page_errors(self) -> list[dict[str, Any]]:
        """Uncaught exceptions and console.error calls seen so far."""
        return [
            e
            for e in self.events
            if e["method"] == "Runtime.exceptionThrown"
            or (e["method"] == "Runtime.consoleAPICalled" and e["params"].get("type") == "error")
        ]


def _devtools_port(profile: Path) -> int | None:
    try:
        lines = (profile / "DevToolsActivePort").read_text().splitlines()
    except FileNotFoundError:
        return None
    return int(lines[0]) if len(lines) >= 2 else None


def _start(exe: str, profile: Path, log_path: Path, window: tuple[int, int]) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [
                exe,
                *FLAGS,
                f"--window-size={window[0]},{window[1]}",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@contextlib.asynccontextmanager
async def page(
    exe: str, tmp: Path, *, window: tuple[int, int] = (1200, 900), describe: str | None = None
) -> AsyncIterator[Cdp]:
    """A blank page in a fresh headless Chromium (stopped, with its whole process group, at the end);
    ``describe``: see :attr:`Cdp.describe`."""
    profile = tmp / "chromium-profile"
    profile.mkdir(parents=True)
    proc = await asyncio.to_thread(_start, exe, profile, tmp / "chromium.log", window)
    try:
        deadline = time.monotonic() + 30
        while (port := _devtools_port(profile)) is None:
            assert proc.poll() is None, (tmp / "chromium.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "chromium did not open its DevTools port in 30 s"
            await asyncio.sleep(0.1)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                target = next(t for t in await resp.json() if t["type"] == "page")
            async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                cdp = Cdp(ws, describe)
                try:
                    yield cdp
                finally:
                    await ws.close()
                    cdp._reader.cancel()
    finally:
        await asyncio.to_thread(_stop, proc)
