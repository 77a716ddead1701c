"""Headless Chromium as a WebRTC peer, driven over the DevTools protocol (CDP).

Only ever used from inside the loopback-only namespace (see :mod:`chromium.netns`): the
functions here start a browser, they do not check where they run, so call them from the
scenarios of :mod:`chromium.scenarios` only.

- :func:`chromium_binary`: ``/usr/lib/chromium/chromium`` (Debian's real binary; the
  ``/usr/bin/chromium`` wrapper prints noise), or None.
- :class:`Chromium`: ``start()`` launches it headless with its own user-data directory, reads
  the DevTools port from ``DIR/DevToolsActivePort``, finds the page target in ``/json/list``
  and opens its websocket; ``stop()`` closes the socket and stops the browser by PID
  (SIGTERM, then SIGKILL), reaping it.
- :class:`Cdp`: the protocol itself: ``call(method, **params)`` waits for the answer with the
  same id, events go to a queue; :meth:`Cdp.evaluate` is ``Runtime.evaluate`` with
  ``awaitPromise`` and ``returnByValue`` and turns a JavaScript exception into
  :class:`JavaScriptError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CHROMIUM",
    "CHROMIUM_FLAGS",
    "Cdp",
    "CdpError",
    "Chromium",
    "JavaScriptError",
    "chromium_binary",
]

CHROMIUM = Path("/usr/lib/chromium/chromium")
"""Debian's Chromium binary (package ``chromium``)."""

CHROMIUM_FLAGS: tuple[str, ...] = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
)
"""Flags of docs/peers.md; ``--user-data-dir`` is added per run."""

PAGE_URL = "data:text/html,<!doctype html><title>anchor</title>"
"""The page the helpers run in: a document of its own, loaded from nowhere."""

PAGE_JS = Path(__file__).with_name("page.js")
"""The JavaScript helpers installed in the page (``window.anchor``)."""


def chromium_binary() -> Path | None:
    """The Chromium binary, or None when the ``chromium`` package is not installed."""
    return CHROMIUM if os.access(CHROMIUM, os.X_OK) else None


class CdpError(RuntimeError):
    """The DevTools protocol answered with an error, or the browser went away."""


class JavaScriptError(CdpError):
    """The evaluated expression threw (or its promise rejected)."""


class Cdp:
    """A DevTools-protocol session over one target's websocket."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        """Every event the target sent (``{"method", "params"}``), in order."""
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(cls, url: str) -> Cdp:
        """Open the target's websocket ``url``."""
        from websockets.asyncio.client import connect

        ws = await connect(url, max_size=64 * 1024 * 1024, open_timeout=10, ping_interval=None)
        return cls(ws)

    async def _read(self) -> None:
        reason: BaseException = CdpError("the DevTools websocket closed")
        try:
            async for raw in self._ws:
                message = json.loads(raw)
                if "id" in message:
                    future = self._waiting.pop(message["id"], None)
                    if future is not None and not future.done():
                        future.set_result(message)
                else:
                    self.events.put_nowait(message)
        except Exception as exc:  # the socket broke: fail every caller still waiting
            reason = CdpError(f"the DevTools websocket failed: {exc!r}")
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(reason)
        self._waiting.clear()

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send ``method`` with ``params``; return its ``result`` (raise :class:`CdpError`)."""
        if self._reader.done():
            raise CdpError(f"{method}: the DevTools websocket is closed")
        self._next_id += 1
        ident = self._next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        await self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        answer = await future
        if "error" in answer:
            raise CdpError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def wait_event(self, method: str, timeout: float) -> dict[str, Any]:
        """The next event named ``method`` (others are dropped), within ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.events.get()
                if event.get("method") == method:
                    params: dict[str, Any] = event.get("params", {})
                    return params

    async def evaluate(self, expression: str) -> Any:
        """``Runtime.evaluate`` awaiting the promise; the value (JSON-able) it resolved to."""
        result = await self.call(
            "Runtime.evaluate",
            expression=expression,
            awaitPromise=True,
            returnByValue=True,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            exception = details.get("exception", {})
            text = exception.get("description") or exception.get("value") or details.get("text")
            raise JavaScriptError(f"{text}")
        return result.get("result", {}).get("value")

    async def close(self) -> None:
        """Close the websocket and stop the reader."""
        with contextlib.suppress(Exception):
            await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader


class Chromium:
    """One headless Chromium with one page, driven over CDP (see the module docstring)."""

    def __init__(self, workdir: Path, extra_flags: Sequence[str] = ()) -> None:
        self.workdir = workdir
        self.profile = workdir / "profile"
        self.log_path = workdir / "chromium.log"
        self.extra_flags = tuple(extra_flags)
        self.proc: subprocess.Popen[bytes] | None = None
        self.cdp: Cdp | None = None
        self.devtools_port: int | None = None
        self.started_in: float | None = None
        """Seconds from launch to an open page websocket."""

    @property
    def pid(self) -> int | None:
        """PID of the browser process (the one it is stopped by)."""
        return self.proc.pid if self.proc is not None else None

    def log(self) -> str:
        """What Chromium printed (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def start(self, timeout: float = 30.0) -> Cdp:
        """Launch Chromium on about:blank and open the page's DevTools websocket."""
        binary = chromium_binary()
        if binary is None:
            raise RuntimeError(f"{CHROMIUM} is missing: apt-get install chromium")
        self.profile.mkdir(parents=True, exist_ok=True)
        argv = [
            str(binary),
            *CHROMIUM_FLAGS,
            *self.extra_flags,
            f"--user-data-dir={self.profile}",
            "about:blank",
        ]
        began = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        async with asyncio.timeout(timeout):
            port = await self._devtools_port()
            url = await self._page_websocket(port)
            self.cdp = await Cdp.connect(url)
        self.started_in = time.monotonic() - began
        return self.cdp

    async def _devtools_port(self) -> int:
        active = self.profile / "DevToolsActivePort"
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"chromium exited with {self.proc.returncode}: {self.log()[-2000:]}"
                )
            with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
                port = int(active.read_text().splitlines()[0])
                self.devtools_port = port
                return port
            await asyncio.sleep(0.05)

    async def _page_websocket(self, port: int) -> str:
        def targets() -> list[dict[str, Any]]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                found: list[dict[str, Any]] = json.load(r)
                return found

        while True:
            with contextlib.suppress(OSError, ValueError):
                for target in await asyncio.to_thread(targets):
                    if target.get("type") == "page" and "webSocketDebuggerUrl" in target:
                        url: str = target["webSocketDebuggerUrl"]
                        return url
            await asyncio.sleep(0.05)

    async def open_page(self, timeout: float = 15.0) -> Cdp:
        """Navigate the page to :data:`PAGE_URL`, wait for its load event and install
        ``page.js`` (``window.anchor``). Returns the page's CDP session."""
        assert self.cdp is not None, "start() first"
        cdp = self.cdp
        await cdp.call("Page.enable")
        await cdp.call("Runtime.enable")
        async with asyncio.timeout(timeout):
            await cdp.call("Page.navigate", url=PAGE_URL)
            await cdp.wait_event("Page.loadEventFired", timeout)
            await cdp.evaluate(PAGE_JS.read_text())
            ready = await cdp.evaluate(
                "location.protocol === 'data:' && typeof window.anchor === 'object'"
            )
        if ready is not True:
            raise CdpError(f"page.js is not installed in {PAGE_URL}")
        return cdp

    async def stop(self, grace: float = 5.0) -> int | None:
        """Close the websocket and stop the browser by PID (SIGTERM, SIGKILL after
        ``grace``). Returns its exit status (None if it was never started)."""
        if self.cdp is not None:
            await self.cdp.close()
            self.cdp = None
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                await asyncio.to_thread(proc.wait)
        return proc.returncode
