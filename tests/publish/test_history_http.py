"""History over HTTP, end to end: the simulator as the exchange → ingest → aggregate (killed -9
once) → publish; pybit, urllib and the project's own Bybit REST client read `/v5/market/kline`
and `/candles`, and get exactly what the candle stream holds.

The simulator's clock is shifted so that a minute boundary comes a few seconds after start: the
first minute is partial (not emitted), the next one is a whole 1m candle about 70 s in.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from common.intervals import Interval
from common.wire import STREAM_FIELD, Category, candle_view_decoder
from ingest.klines.rest import KlineRest
from tests.support import replies
from tests.support.history import latest_revisions, stored
from tests.support.pipeline import PASSWORD, USER, Pipeline, start_pipeline, wait_for_ws
from tests.support.redisproc import free_port
from tests.support.waiting import wait_until

pybit_ut = pytest.importorskip("pybit.unified_trading")
pybit_exceptions = pytest.importorskip("pybit.exceptions")

pytestmark = [pytest.mark.e2e, pytest.mark.redis]
LEAD_MS = 8_000  # start-up must fit before the boundary, even on a busy box
SECOND, MINUTE = Interval.parse("1s"), Interval.parse("1m")


def stream_raws(pipe: Pipeline) -> list[bytes]:
    client = pipe.client()
    try:
        return [
            fields[STREAM_FIELD]
            for shard in range(pipe.shards)
            for _, fields in replies.entries(client.xrange(pipe.keys.klines(shard)))
        ]
    finally:
        client.close()


def series(raws: list[bytes], symbol: str, interval: Interval) -> list[bytes]:
    """The stream's last word on each candle of one series, oldest first."""
    latest = latest_revisions(raws)
    times = sorted(ts for s, label, ts in latest if s == symbol and label == interval.label)
    return [latest[(symbol, interval.label, ts)] for ts in times]


def bybit_row(raw: bytes) -> list[str]:
    """A Bybit kline row computed from the stream's candle (exact decimals, plain text)."""
    c = candle_view_decoder.decode(raw)
    numbers = (c.open, c.high, c.low, c.close, c.volume, c.turnover)
    return [str(c.timestamp), *(_plain(n) for n in numbers)]


def _plain(value: Decimal) -> str:
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def get(port: int, target: str, auth: tuple[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{target}")
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            body = reply.read()
            return reply.status, json.loads(body) if body.startswith(b"{") else body
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def check_credentials(port: int) -> None:
    target = "/v5/market/kline?category=linear&symbol=BTCUSDT&interval=1s"
    assert get(port, target)[0] == 401
    assert get(port, target, (USER, "wrong"))[0] == 401
    assert get(port, target, ("wrong", PASSWORD))[0] == 401
    assert get(port, "/candles?symbol=BTCUSDT&interval=1s")[0] == 401
    assert get(port, target + "&auth=" + urllib.parse.quote(f"{USER}:nope"))[0] == 401
    status, body = get(port, target + "&auth=" + urllib.parse.quote(f"{USER}:{PASSWORD}"))
    assert status == 200 and body["retCode"] == 0
    assert get(port, target, (USER, PASSWORD))[0] == 200
    assert get(port, "/health") == (200, b"ok\n")  # stays open


def check_bad_parameters(port: int) -> None:
    def kline(query: str) -> Any:
        status, body = get(port, "/v5/market/kline?" + query, (USER, PASSWORD))
        assert status == 200 and body["retCode"] == 10001, body
        assert set(body) == {"retCode", "retMsg", "result", "retExtInfo", "time"}
        return body["retMsg"]

    assert kline("category=linear&symbol=BTCUSDT&interval=2").startswith("Invalid period!")
    assert kline("category=linear&symbol=BTCUSDT&interval=5").startswith("Invalid period!")
    assert kline("category=linear&symbol=BTCUSDT").startswith("Invalid period!")
    assert (
        kline("category=linear&symbol=BTCUSDT&interval=1&limit=0") == "params error: limit invalid"
    )
    assert kline("category=linear&symbol=BTCUSDT&interval=1&limit=1001") == (
        "params error: limit invalid"
    )
    assert kline("category=linear&symbol=BTCUSDT&interval=1&start=x") == (
        "params error: start invalid"
    )
    assert kline("category=linear&symbol=BTCUSDT&interval=1&end=-5") == "params error: end invalid"
    assert kline("category=spot&symbol=BTCUSDT&interval=1") == "params error: symbol invalid"
    assert kline("category=futures&symbol=BTCUSDT&interval=1") == "Illegal category"
    assert kline("category=linear&interval=1") == "params error: symbol invalid"
    status, body = get(port, "/candles?symbol=BTCUSDT&interval=1s&limit=10001", (USER, PASSWORD))
    assert status == 400 and body == b'{"error":"params error: limit invalid"}'


def check_ranges(port: int, want: list[bytes], cut: int) -> None:
    """start/end/limit as Bybit reads them: the newest `limit` of [start, end], newest first."""
    rows = [bybit_row(raw) for raw in reversed(want)]  # newest first

    def kline(query: str) -> list[list[str]]:
        status, body = get(port, f"/v5/market/kline?symbol=BTCUSDT&interval=1s&{query}",
                           (USER, PASSWORD))  # fmt: skip
        assert status == 200 and body["retCode"] == 0, body
        assert body["result"]["symbol"] == "BTCUSDT" and body["result"]["category"] == "linear"
        listed: list[list[str]] = body["result"]["list"]
        return listed

    assert kline(f"end={cut}") == rows[:200]  # category linear and limit 200 by default
    assert kline(f"end={cut}&limit=5") == rows[:5]
    start, end = int(rows[30][0]), int(rows[10][0])
    assert kline(f"start={start}&end={end}&limit=1000") == rows[10:31]
    assert kline(f"start={start}&end={end}&limit=3") == rows[10:13]
    assert kline(f"start={start + 1}&end={end - 1}") == rows[11:30]
    assert kline(f"end={int(rows[-1][0]) - 1}") == []
    # /candles: oldest first; with `start`, the first `limit` from it (to page forward)
    n = len(want)
    for query, picked in ((f"start={start}&end={end}", want[n - 31 : n - 10]),
                          (f"start={start}&limit=3", want[n - 31 : n - 28]),
                          (f"end={end}&limit=4", want[n - 14 : n - 10])):  # fmt: skip
        status, body = get(port, f"/candles?symbol=BTCUSDT&interval=1s&{query}", (USER, PASSWORD))
        assert status == 200 and body["candles"] == [json.loads(raw) for raw in picked], query


def test_history_over_http_equals_the_candle_stream(tmp_path: Path, redis_url: str) -> None:
    wall_ms = int(time.time() * 1000)
    boundary = (wall_ms // 60_000 + 1) * 60_000
    offset = boundary - LEAD_MS - wall_ms
    pipe = start_pipeline(
        tmp_path, redis_url,
        ("--symbols", "4", "--rate", "200", "--quiet-fraction", "0",
         "--clock-offset-ms", str(offset)),
        shards=2, intervals="1s,1m",
    )  # fmt: skip
    try:
        pipe.start("publish", "publish")
        wait_for_ws(pipe.ws_port)
        pipe.start("aggregate", "aggregate")
        pipe.start("ingest", "ingest")
        check_credentials(pipe.ws_port)
        check_bad_parameters(pipe.ws_port)

        def seconds() -> int:
            return len(series(stream_raws(pipe), "BTCUSDT", SECOND))

        wait_until(lambda: seconds() > 20, 60, "1s candles of BTCUSDT")
        pipe.procs["aggregate"].kill9()  # mid-run: the store must still equal the stream
        pipe.restart("aggregate").wait_output("resumed after", 30)
        wait_until(
            lambda: any(candle_view_decoder.decode(r).timestamp >= boundary
                        for r in series(stream_raws(pipe), "BTCUSDT", MINUTE)),
            120, "a whole 1m candle",
        )  # fmt: skip
        assert pipe.sim.proc.stop() == 0
        assert pipe.procs["aggregate"].stop() == 0  # the streams and the store hold still now
        raws = stream_raws(pipe)
        check_store(pipe, raws)
        minutes, secs = series(raws, "BTCUSDT", MINUTE), series(raws, "BTCUSDT", SECOND)
        cut_minute = candle_view_decoder.decode(minutes[-1]).timestamp
        cut_second = candle_view_decoder.decode(secs[-1]).timestamp
        assert len(secs) > 50

        session = pybit_ut.HTTP(testnet=False)
        session.endpoint = f"http://{USER}:{PASSWORD}@127.0.0.1:{pipe.ws_port}"  # the URL only
        got = session.get_kline(category="linear", symbol="BTCUSDT", interval=1, end=cut_minute)
        assert got["retCode"] == 0
        assert got["result"]["list"] == [bybit_row(r) for r in reversed(minutes)]
        got = session.get_kline(category="linear", symbol="BTCUSDT", interval="1s",
                                end=cut_second, limit=1000)  # fmt: skip
        assert got["result"]["list"] == [bybit_row(r) for r in reversed(secs)]
        with pytest.raises(pybit_exceptions.InvalidRequestError, match="Invalid period"):
            session.get_kline(category="linear", symbol="BTCUSDT", interval=5)

        check_ranges(pipe.ws_port, secs, cut_second)
        assert PASSWORD not in pipe.procs["publish"].output()  # auth= is never logged
        status, body = get(pipe.ws_port, f"/candles?symbol=BTCUSDT&interval=1s&end={cut_second}",
                           (USER, PASSWORD))  # fmt: skip
        assert status == 200
        assert body["candles"] == [json.loads(raw) for raw in secs]

        # The project's own Bybit REST client (no credentials: a second publish without them)
        open_port = free_port()
        pipe.start("publish", "publish-open", STREAMER_WEBSOCKET_PORT=str(open_port),
                   STREAMER_WSS_AUTH_DISABLED="true", STREAMER_WSS_AUTH_USER="",
                   STREAMER_WSS_AUTH_KEY="", STREAMER_ENABLED_CONSUMERS="websocket")  # fmt: skip
        wait_for_ws(open_port)
        rest = KlineRest(f"http://127.0.0.1:{open_port}", Category.LINEAR, timeout_s=10)
        first = candle_view_decoder.decode(minutes[0]).timestamp
        fetched = asyncio.run(rest.fetch(MINUTE, "BTCUSDT", first, cut_minute))
        views = [candle_view_decoder.decode(r) for r in minutes]
        assert [(c.timestamp, Decimal(bytes(c.open).decode()), Decimal(bytes(c.close).decode()),
                 Decimal(bytes(c.volume).decode())) for c in fetched] == [
            (v.timestamp, v.open, v.close, v.volume) for v in views
        ]  # fmt: skip
    finally:
        pipe.stop_all()


def check_store(pipe: Pipeline, raws: list[bytes]) -> None:
    """After the kill -9, the store holds the latest revision of every candle of the stream."""
    client = pipe.client()
    try:
        assert stored(client, pipe.keys, pipe.parsed_intervals()) == latest_revisions(raws)
    finally:
        client.close()
