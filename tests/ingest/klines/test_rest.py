"""REST backfill against a real HTTP server: pages, errors (retCode, HTTP), retries, gaps."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis.asyncio as aioredis

from common.errors import RetryableError
from common.intervals import Interval
from common.keys import Keys
from common.wire import Candle, Category, candle_view_decoder
from ingest.klines.frames import make_candle
from ingest.klines.rest import KlineRest
from ingest.klines.series import ShardKlines
from ingest.klines.store import KlineStore
from tests.support import replies

M1 = Interval.parse("1m")
T0 = 1786310760000

Answer = Callable[[dict[str, str]], tuple[int, bytes]]


class FakeBybit:
    """A REST server whose answers a test chooses; it records every query."""

    def __init__(self, answer: Answer) -> None:
        self.queries: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                outer.queries.append(query)
                status, body = answer(query)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def bybit() -> Iterator[Callable[[Answer], FakeBybit]]:
    servers: list[FakeBybit] = []

    def start(answer: Answer) -> FakeBybit:
        servers.append(FakeBybit(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def klines_answer(query: dict[str, str]) -> tuple[int, bytes]:
    """Bybit's shape: every minute in [start, end] (at most `limit`), newest first."""
    first, last, limit = int(query["start"]), int(query["end"]), int(query["limit"])
    starts = list(range(first, last + 1, 60_000))[-limit:]
    rows = [[str(s), "10", "12", "9", "11", "2", "22"] for s in reversed(starts)]
    body = {"retCode": 0, "retMsg": "OK", "result": {"list": rows}, "time": 0}
    return 200, json.dumps(body).encode()


def rest(url: str) -> KlineRest:
    return KlineRest(url, Category.LINEAR, timeout_s=2, attempts=3, base_delay_s=0.01)


async def test_pages_forward_in_chunks_of_1000(bybit: Callable[[Answer], FakeBybit]) -> None:
    server = bybit(klines_answer)
    candles = await rest(server.url).fetch(M1, "BTCUSDT", T0, T0 + 2499 * 60_000)
    assert [c.timestamp for c in candles] == [T0 + k * 60_000 for k in range(2500)]
    assert [(q["start"], q["end"]) for q in server.queries] == [
        (str(T0), str(T0 + 999 * 60_000)),
        (str(T0 + 1000 * 60_000), str(T0 + 1999 * 60_000)),
        (str(T0 + 2000 * 60_000), str(T0 + 2499 * 60_000)),
    ]
    assert {(q["category"], q["symbol"], q["interval"], q["limit"]) for q in server.queries} == {
        ("linear", "BTCUSDT", "1", "1000")
    }


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b'{"retCode":10006,"retMsg":"Too many visits!","result":{},"time":1}'),
        (502, b"<html>Bad Gateway</html>"),
        (200, b"not json"),
    ],
)
async def test_errors_are_retried_then_raised(
    bybit: Callable[[Answer], FakeBybit], status: int, body: bytes
) -> None:
    server = bybit(lambda query: (status, body))
    with pytest.raises(RetryableError, match="kline backfill BTCUSDT 1m"):
        await rest(server.url).fetch(M1, "BTCUSDT", T0, T0 + 60_000)
    assert len(server.queries) == 3


async def test_an_error_then_success_is_retried(bybit: Callable[[Answer], FakeBybit]) -> None:
    calls = iter([(503, b"busy"), None])

    def answer(query: dict[str, str]) -> tuple[int, bytes]:
        return next(calls) or klines_answer(query)

    server = bybit(answer)
    candles = await rest(server.url).fetch(M1, "BTCUSDT", T0, T0 + 60_000)
    assert [c.timestamp for c in candles] == [T0, T0 + 60_000]


@pytest.mark.redis
async def test_a_failing_backfill_flags_a_gap_and_goes_on(
    bybit: Callable[[Answer], FakeBybit], redis_url: str
) -> None:
    server = bybit(lambda query: (200, b'{"retCode":10001,"retMsg":"params error","time":1}'))
    keys = Keys("t")
    redis = aioredis.Redis.from_url(redis_url)
    await redis.set(keys.lease("ingest", 0), "tok")
    store = KlineStore(redis, keys, 0, "tok", klines_maxlen=1000, updates_maxlen=1000)
    values = ("1", "1", "1", "1", "0", "0")

    def confirm(start: int) -> Candle:
        return make_candle("BTCUSDT", M1, start, values, category=Category.LINEAR, closed=True)

    await store.write_confirmed([confirm(T0)])
    klines = ShardKlines(store, rest(server.url).fetch, (M1,))
    await klines.load()
    klines.add_symbols(["BTCUSDT"])
    klines.on_candle(confirm(T0 + 5 * 60_000))
    assert await klines.drained(10)
    views = [
        candle_view_decoder.decode(f[b"data"])
        for _, f in replies.entries(await redis.xrange(keys.klines(0)))
    ]
    assert [(v.timestamp, v.gap) for v in views] == [(T0, False), (T0 + 5 * 60_000, True)]
    assert len(server.queries) == 3
    await redis.aclose()
