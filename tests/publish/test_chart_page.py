"""The chart page's script (publish/static/chart.js) in headless Chromium, against a scripted
server: the page's own files from publish/chart.py, and WebSocket frames in an order the real
publish sends only by chance (the whole pipeline: test_chart_browser.py).

After publish restarts, its in-progress candles follow the live tail at once while its closed
candles catch up from the consumer's stored position, so the page can draw the in-progress
candle of second 4 before the closed candle of second 3 arrives, with a revision of second 1
behind it in the same frame. The chart library updates only its last bar or an existing one.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

from common.intervals import parse_intervals
from publish.chart import LIBRARY, LIBRARY_FILE, ChartPages
from tests.support.browser import Browser, chromium_binary
from tests.support.waiting import wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        chromium_binary() is None,
        reason="no Chromium here: `make install` installs Debian's chromium where apt exists",
    ),
    pytest.mark.skipif(
        not (LIBRARY / LIBRARY_FILE).is_file(),
        reason="lightweight-charts not installed: `make install` runs npm",
    ),
]

T0 = 1_796_000_000_000  # ms, a whole second


def candle(second: int, close: float, *, closed: bool = True, revision: int = 0) -> dict[str, Any]:
    return {
        "symbol": "BTCUSDT", "interval": 1000, "interval_label": "1s",
        "timestamp": T0 + second * 1000, "open": 100.0, "high": 110.0, "low": 90.0,
        "close": close, "volume": 1.5, "closed": closed, "revision": revision, "gap": False,
    }  # fmt: skip


HISTORY = [candle(0, 101.0), candle(1, 102.0), candle(2, 103.0)]
LIVE = [
    [candle(4, 104.5, closed=False)],
    [candle(3, 104.0), candle(1, 102.5, revision=1)],
    [candle(4, 105.0)],
]
SHOWN = {0: 101.0, 1: 102.5, 2: 103.0, 3: 104.0, 4: 105.0}  # second -> close


class Scripted:
    """GET /chart and its files from publish/chart.py, GET /candles → HISTORY, and on `/` the
    LIVE frames once the page has subscribed."""

    def __init__(self) -> None:
        self.pages = ChartPages(parse_intervals("1s"), revisable_ms=5000)
        self.subscribes: list[dict[str, Any]] = []

    def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/":
            return None
        if path == "/candles":
            status, kind, body = 200, "application/json", json.dumps({"candles": HISTORY}).encode()
        else:
            status, kind, body = self.pages.answer(path, ["BTCUSDT"], None)
        headers = Headers([("Content-Type", kind), ("Content-Length", str(len(body)))])
        return Response(status, HTTPStatus(status).phrase, headers, body)

    def handle(self, conn: ServerConnection) -> None:
        self.subscribes.append(json.loads(conn.recv(timeout=30)))
        for frame in LIVE:
            conn.send(json.dumps(frame))
        with contextlib.suppress(ConnectionClosed):
            conn.recv()  # until the page goes away


@pytest.fixture
def server() -> Iterator[tuple[Scripted, int]]:
    scripted = Scripted()
    with serve(
        scripted.handle, "127.0.0.1", 0, process_request=scripted.process_request
    ) as running:
        thread = threading.Thread(target=running.serve_forever, daemon=True)
        thread.start()
        yield scripted, port_of(running)
        running.shutdown()
    thread.join(10)


def port_of(running: Server) -> int:
    port: int = running.socket.getsockname()[1]
    return port


def test_a_closed_candle_behind_a_drawn_in_progress_one_is_drawn(
    tmp_path: Path, server: tuple[Scripted, int]
) -> None:
    scripted, port = server
    browser = Browser(tmp_path / "chromium")
    try:
        page = browser.page()
        page.goto(f"http://127.0.0.1:{port}/chart?symbol=BTCUSDT&interval=1s")
        expected = [{"time": (T0 + s * 1000) // 1000, "close": c} for s, c in SHOWN.items()]
        shown: list[Any] = []

        def drawn() -> bool:
            shown[:] = page.evaluate(
                "window.chartState?.bars().map(b => ({time: b.time, close: b.close})) || []"
            )
            return shown == expected

        try:
            wait_until(drawn, timeout_s=30, what="the bars")
        except AssertionError:
            raise AssertionError(f"bars {shown} != {expected}") from None
        # resumed from its newest closed candle back by the revision window
        assert scripted.subscribes == [
            {"op": "subscribe", "args": ["1s.BTCUSDT"], "since": T0 + 2000 - 5000}
        ]
        assert page.evaluate(f"window.chartState.candles[{T0 + 1000}].revision") == 1
    finally:
        browser.close()
