"""Headless Chromium driven over the DevTools protocol, for the chart's browser test.

Debian's `chromium` (installed by `make install` where apt exists), started on a free DevTools
port with a fresh profile in the test's folder and the flags that keep it off the network, and
spoken to with the `websockets` client the project already has: no browser driver package and no
browser download. `Browser.page()` opens a tab; `Page.evaluate` reads what the page exposes
(`window.chartState`), `Page.screenshot` saves a PNG.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--mute-audio",
)
_LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class BrowserError(RuntimeError):
    pass


class Browser:
    """One Chromium process; `close()` ends it."""

    def __init__(self, workdir: Path, width: int = 1280, height: int = 720) -> None:
        binary = chromium_binary()
        if binary is None:
            raise BrowserError("no chromium on PATH (make install installs Debian's chromium)")
        workdir.mkdir(parents=True, exist_ok=True)
        self._log = workdir / "chromium.log"
        args = [
            binary,
            *FLAGS,
            f"--user-data-dir={workdir / 'profile'}",
            f"--window-size={width},{height}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "about:blank",
        ]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self._log.open("wb"))
        self._stack = contextlib.ExitStack()
        self._ws = self._stack.enter_context(
            connect(self._endpoint(), max_size=64 * 1024 * 1024, open_timeout=10)
        )
        self._ids = itertools.count(1)

    def _endpoint(self, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = _LISTENING.search(self._log.read_text(errors="replace"))
            if found:
                return found.group(1)
            if self._proc.poll() is not None:
                raise BrowserError(f"chromium exited: {self._log.read_text(errors='replace')}")
            time.sleep(0.05)  # polling the log for the DevTools line, with a deadline
        raise BrowserError("chromium did not open its DevTools port in time")

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """One DevTools command; events that arrive before its answer are skipped."""
        msg_id = next(self._ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params}
        if session is not None:
            msg["sessionId"] = session
        self._ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self._ws.recv(timeout=60))
            if reply.get("id") != msg_id:
                continue
            if "error" in reply:
                raise BrowserError(f"{method}: {reply['error']}")
            result: dict[str, Any] = reply.get("result", {})
            return result

    def page(self) -> Page:
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        return Page(self, session)

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


class Page:
    def __init__(self, browser: Browser, session: str) -> None:
        self._browser = browser
        self._session = session
        self.send("Page.enable")
        self.send("Runtime.enable")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        return self._browser.send(method, self._session, **params)

    def basic_auth(self, user: str, key: str) -> None:
        """Answer the server's Basic-auth challenge as a person typing the prompt would."""
        token = base64.b64encode(f"{user}:{key}".encode()).decode()
        self.send("Network.enable")
        self.send("Network.setExtraHTTPHeaders", headers={"Authorization": f"Basic {token}"})

    def goto(self, url: str) -> None:
        result = self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"navigate {url}: {result['errorText']}")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited), as JSON."""
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 20.0, what: str = "") -> Any:
        """Poll a JavaScript expression until it is truthy, with a deadline."""
        deadline = time.monotonic() + timeout_s
        value: Any = None
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)  # polling the page's state, with a deadline
        raise BrowserError(f"timed out waiting for {what or expression} (last: {value!r})")

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path
