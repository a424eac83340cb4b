"""`GET /chart`: the live candlestick page, its script and its chart library. Pure: no I/O
beyond reading the page's files once.

The page (publish/static/chart.html + chart.js) loads history from `GET /candles`, then follows
the WebSocket feed with `since` (docs/protocol.md "Resume"). Its one library, TradingView's
lightweight-charts, is an npm package pinned in publish/static/package.json: `make install` puts
it in publish/static/node_modules (never in the repository), and `/chart/lib.js` serves it from
there.
Without it, `/chart/lib.js` answers 404 and the page says how to install it.

A browser cannot hand the Basic-auth credentials it prompted for to a WebSocket, so the page is
given them (docs/protocol.md's "WebSocket server (contract)" allows `auth=<user>:<key>` on the
upgrade): only in the answer to a request that carried those very credentials, over the same
connection (use TLS outside localhost).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from common.intervals import Interval

STATIC = Path(__file__).resolve().parent / "static"
LIBRARY = STATIC / "node_modules" / "lightweight-charts" / "dist"
LIBRARY_FILE = "lightweight-charts.standalone.production.js"
HISTORY_CANDLES = 1000

Answer = tuple[int, str, bytes]
"""(HTTP status, content type, body)."""


class _Series(msgspec.Struct):
    label: str
    ms: int


class _Config(msgspec.Struct):
    symbols: list[str]
    intervals: list[_Series]
    history: int
    revisable_ms: int
    auth: str | None


def chartable(intervals: tuple[Interval, ...]) -> list[Interval]:
    """The intervals the chart can draw: its time axis counts whole seconds."""
    return [i for i in intervals if i.ms % 1000 == 0]


@dataclass
class ChartPages:
    PATHS = frozenset({"/chart", "/chart/", "/chart/app.js", "/chart/lib.js"})

    intervals: tuple[Interval, ...]
    revisable_ms: int = 10_000
    """How far back a closed candle may still get a revision (STREAMER_KLINE_REVISION_WINDOW_S,
    STREAMER_KLINE_REPAIR_WINDOW_S for gap repairs):
    the page subscribes with `since` that far before its newest candle, so a revision written
    between its history request and its subscription, or while it was reconnecting, reaches it."""
    library_dir: Path = LIBRARY
    history: int = HISTORY_CANDLES
    _files: dict[str, bytes] = field(default_factory=dict)

    def _read(self, path: Path) -> bytes | None:
        key = str(path)
        if key not in self._files:
            try:
                self._files[key] = path.read_bytes()
            except OSError:
                return None  # not cached: installing the library later needs no restart
        return self._files[key]

    def answer(self, path: str, symbols: list[str], auth: str | None) -> Answer:
        """The answer for a /chart path (None: not a chart path). `auth` is `user:key` as
        the request proved it, or None when the server runs without credentials."""
        if path in ("/chart", "/chart/"):
            return self._page(symbols, auth)
        if path == "/chart/app.js":
            body = self._read(STATIC / "chart.js")
            assert body is not None, "publish/static/chart.js is part of the package"
            return 200, "text/javascript; charset=utf-8", body
        if path == "/chart/lib.js":
            body = self._read(self.library_dir / LIBRARY_FILE)
            if body is None:
                text = "lightweight-charts is not installed: run `make install` (needs npm)\n"
                return 404, "text/plain; charset=utf-8", text.encode()
            return 200, "text/javascript; charset=utf-8", body
        return 404, "text/plain; charset=utf-8", b"not found\n"

    def _page(self, symbols: list[str], auth: str | None) -> Answer:
        config = _Config(
            symbols=sorted(symbols),
            intervals=[_Series(i.label, i.ms) for i in chartable(self.intervals)],
            history=self.history,
            revisable_ms=self.revisable_ms,
            auth=auth,
        )
        # `<` escaped: the JSON sits in a <script> element.
        data = msgspec.json.encode(config).replace(b"<", b"\\u003c")
        template = self._read(STATIC / "chart.html")
        assert template is not None, "publish/static/chart.html is part of the package"
        return 200, "text/html; charset=utf-8", template.replace(b"__CONFIG__", data)
