"""HTTP on the feed's port (docs/protocol.md "History over HTTP"): `GET /v5/market/kline` and
`GET /candles`, from the history store. Pure routes, `(target, Authorization header) ->
HttpAnswer`; the socket side is publish/consumers/http.py (websockets' `process_request`).

`/v5/market/kline` answers as Bybit does (common/bybit_rest.py, shared with the simulator): the
newest `limit` candles with `start <= open time <= end`, newest first, as strings; bad parameters
get HTTP 200 with retCode 10001. `interval` is a Bybit code (`1`, `60`, `D`) or a configured
label (`1s`, `7m`). Only closed candles are served: the store holds no in-progress candle (Bybit
lists its open candle first).

`/candles` gives full candle objects (docs/formats.md "The candle") oldest first, `limit` up to
10,000: with `start` the first `limit` from it (page on with `start` = the last timestamp + 1), else
the newest.

With an archive (PostgreSQL) the reader answers older ranges from it too (publish/history.py).
When it cannot be read, the store's part is served with HTTP 200 and the answer says where it
stops: `retExtInfo: {"missingBefore": <ms>, "reason": ...}` on `/v5/market/kline` (retCode 0:
what is served is right, and Bybit's clients only look at retCode), `"missing_before": <ms>` on
`/candles`. Candles of the range older than that may exist and are not in the answer.
"""

from __future__ import annotations

import logging
import re
from typing import NamedTuple

import msgspec
from redis.exceptions import RedisError

from common.bybit_rest import (
    KLINE_LIMIT_DEFAULT,
    KLINE_LIMIT_MAX,
    PARAMS_ERROR,
    Json,
    ParamError,
    envelope,
    int_param,
    kline_result,
    limit_param,
    split_target,
)
from common.intervals import Interval
from common.logs import RateLimitedLog
from publish.auth import Credentials
from publish.chart import ChartPages
from publish.history import HistoryReader, Page, prices

limited = RateLimitedLog(logging.getLogger(__name__))
CATEGORIES = ("spot", "linear", "inverse", "option")
# A stored member begins `"timestamp":T,"open":O,"high":H,"low":L,"close":C,"volume":V,
# "turnover":X,"trade_count":...` (the field order of common.wire.Candle; fields are only ever
# appended). Replacing the names by `","` gives a row; C-speed byte replaces over all members.
_NAMES = (b',"open":', b',"high":', b',"low":', b',"close":', b',"volume":', b',"turnover":')
_REST = re.compile(rb',"trade_count":[^\n]*')
_REPLACES = ((b'"timestamp":', b'["'), *((name, b'","') for name in _NAMES))
_ROW_FORMAT = b'["%d","%s","%s","%s","%s","%s","%s"]'


def _rows(entries: list[tuple[int, bytes]]) -> bytes:
    """Bybit's kline rows as JSON text, the numbers' exact text as strings. A member of another
    shape (none is known) takes the decoding path, one candle at a time. The fast path checks
    each marker's count by how much its replace shortened the text (a count would be one more
    pass over it), after cutting the members' tails first (most of their bytes)."""
    n = len(entries)
    blob, tails = _REST.subn(b'"]', b"\n".join(member for _, member in entries))
    every_member = tails == n
    for name, by in _REPLACES:
        before = len(blob)
        blob = blob.replace(name, by)
        every_member = every_member and before - len(blob) == n * (len(name) - len(by))
    if every_member:
        return blob.replace(b"\n", b",")
    out = []
    for open_ms, member in entries:
        p = prices(member)
        out.append(_ROW_FORMAT % (open_ms, p.open, p.high, p.low, p.close, p.volume, p.turnover))
    return b",".join(out)


CANDLES_LIMIT_DEFAULT = 1000
CANDLES_LIMIT_MAX = 10_000
JSON = "application/json"


class HttpAnswer(NamedTuple):
    status: int
    body: bytes
    content_type: str = JSON
    challenge: bool = False  # 401: ask for Basic credentials


UNAUTHORIZED = HttpAnswer(401, b"credentials required\n", "text/plain", challenge=True)
UNAVAILABLE = HttpAnswer(503, b"the history store is not reachable, try again\n", "text/plain")
ARCHIVE_AWAY = (
    "the archive (PostgreSQL) is unreachable: older candles of the range are not included"
)


class HttpRoutes:
    PATHS = frozenset({"/v5/market/kline", "/candles", *ChartPages.PATHS})

    def __init__(
        self,
        reader: HistoryReader,
        category: str,
        credentials: Credentials | None,
        revisable_ms: int = 10_000,
    ) -> None:
        self._reader = reader
        self._category = category
        self._credentials = credentials
        self._labels = " ".join(
            f"{i.label} ({i.bybit_code})" if i.bybit_code else i.label for i in reader.intervals
        )
        self._chart = ChartPages(reader.intervals, revisable_ms)

    async def handle(self, target: str, authorization: str | None) -> HttpAnswer | None:
        """The answer for a route of PATHS; None for any other path."""
        path, query = split_target(target)
        if path not in self.PATHS:
            return None
        if self._credentials is not None and not self._credentials.allows(authorization, target):
            return UNAUTHORIZED
        try:
            if path == "/candles":
                return await self._candles(query)
            if path in ChartPages.PATHS:
                return await self._chart_page(path)
            try:
                return await self._kline(query)
            except ParamError as exc:
                return HttpAnswer(200, envelope(PARAMS_ERROR, str(exc), exc.result))
        except RedisError as exc:
            limited.warning("redis", "history read failed: %r", exc)
            return UNAVAILABLE

    def _interval(self, query: dict[str, str]) -> Interval:
        interval = self._reader.interval(query.get("interval", ""))
        if interval is None:
            raise ParamError(f"Invalid period! configured: {self._labels}")
        return interval

    async def _kline(self, query: dict[str, str]) -> HttpAnswer:
        category = query.get("category") or "linear"  # Bybit's default
        if category not in CATEGORIES:
            raise ParamError("Illegal category")
        symbol = query.get("symbol", "")
        if not symbol or category != self._category:
            raise ParamError("params error: symbol invalid", {"category": "", "list": []})
        interval = self._interval(query)
        limit = limit_param(query, KLINE_LIMIT_DEFAULT, KLINE_LIMIT_MAX)
        start, end = int_param(query, "start"), int_param(query, "end")
        page = await self._reader.read(symbol, interval, start, end, limit)
        rows = msgspec.Raw(b"[" + _rows(page.entries[::-1]) + b"]")  # newest first
        ext: Json = {}
        if page.missing_before is not None:
            ext = {"missingBefore": page.missing_before, "reason": ARCHIVE_AWAY}
        return HttpAnswer(200, envelope(0, "OK", kline_result(symbol, category, rows), ext))

    async def _candles(self, query: dict[str, str]) -> HttpAnswer:
        try:
            symbol = query.get("symbol", "")
            if not symbol:
                raise ParamError("symbol is required")
            interval = self._interval(query)
            limit = limit_param(query, CANDLES_LIMIT_DEFAULT, CANDLES_LIMIT_MAX)
            start, end = int_param(query, "start"), int_param(query, "end")
        except ParamError as exc:
            return HttpAnswer(400, b'{"error":%s}' % msgspec.json.encode(str(exc)))
        page = await self._reader.read(symbol, interval, start, end, limit,
                                       from_start=start is not None)  # fmt: skip
        raws = self._reader.candles_of(symbol, interval, page.entries)
        return HttpAnswer(200, b'{"candles":[' + b",".join(raws) + b"]" + _missing(page) + b"}")

    async def _chart_page(self, path: str) -> HttpAnswer:
        symbols: list[str] = []
        if path in ("/chart", "/chart/"):  # the symbols with candles in the store
            symbols = sorted({symbol for symbol, _ in await self._reader.series()})
        auth = None
        if self._credentials is not None:  # the request proved them (checked above)
            auth = (self._credentials.user + b":" + self._credentials.key).decode()
        status, content_type, body = self._chart.answer(path, symbols, auth)
        return HttpAnswer(status, body, content_type)


def _missing(page: Page) -> bytes:
    """`/candles`' word on an archive it could not read (nothing when there is none)."""
    if page.missing_before is None:
        return b""
    return b',"missing_before":%d,"reason":%s' % (
        page.missing_before,
        msgspec.json.encode(ARCHIVE_AWAY),
    )
