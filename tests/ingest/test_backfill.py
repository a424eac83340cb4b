"""STREAMER_HISTORY_BACKFILL: Bybit's REST klines into the history store at start.

Against a real redis-server: the backfill script writes only below a series' oldest candle of
the pipeline's own, at free open times, once; where it races the aggregator, every reader keeps
the pipeline's candle (HTTP rows, `/candles`, the WebSocket resume's seam).

End to end: the simulator (its market clock 60 times as fast, so that it has a quarter of an
hour of minutes when the pipeline starts) → ingest (with the backfill) → aggregate → publish.
`GET /v5/market/kline` on publish must then answer, for a range reaching back before the
pipeline's first candle, exactly what the simulator's own `/v5/market/kline` answers: the
backfilled candles, the gap-closing second pass and the pipeline's own candles after them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
import redis.asyncio as aioredis

from common.history import STORE_LUA, member_of
from common.intervals import Interval
from common.keys import Keys
from common.sharding import shard_of
from common.wire import Candle, CandleView, raw_number
from ingest.backfill import BACKFILL_LUA, backfilled, first_of
from publish.consumers.resume import Seam
from publish.history import HistoryReader
from publish.routes import HttpRoutes
from tests.support import replies
from tests.support.pipeline import PASSWORD, USER, Pipeline, start_pipeline, wait_for_ws
from tests.support.waiting import wait_until

MINUTE = Interval.parse("1m")
T0 = 1_786_310_400_000
KEYS = Keys("bf")
SHARDS = 2
_STORE = STORE_LUA + "\nstore_candle(KEYS[1], ARGV[1], 1000)\n"


def candle(n: int, close: str, *, own: bool = True, revision: int = 0) -> bytes:
    """The n-th 1m candle of BTCUSDT: the pipeline's own, or a backfilled one."""
    price = raw_number(close)
    made = Candle(
        symbol="BTCUSDT", interval=MINUTE.ms, interval_label="1m", timestamp=T0 + n * 60_000,
        open=price, high=price, low=price, close=price, volume=raw_number("1.5"),
        turnover=raw_number("3"), trade_count=2, buy_volume=raw_number("1"),
        sell_volume=raw_number("0.5"), revision=revision,
        source="trades" if own else "bybit",
    )  # fmt: skip
    return msgspec.json.encode(made) if own else backfilled(made)


class Store:
    def __init__(self, redis_url: str) -> None:
        self.client = redis.Redis.from_url(redis_url)
        self.key = KEYS.history(shard_of("BTCUSDT", SHARDS), "1m", "BTCUSDT")
        self._own = self.client.register_script(_STORE)
        self._backfill = self.client.register_script(BACKFILL_LUA)

    def own(self, *raws: bytes) -> None:
        for raw in raws:
            self._own(keys=[self.key], args=[raw])

    def backfill(self, *raws: bytes) -> int:
        args: list[Any] = []
        for raw in raws:
            args += [msgspec.json.decode(raw)["timestamp"], member_of(raw)]
        return int(self._backfill(keys=[self.key], args=args))

    def members(self) -> dict[int, list[bytes]]:
        out: dict[int, list[bytes]] = {}
        for member, score in replies.scored(self.client.zrange(self.key, 0, -1, withscores=True)):
            out.setdefault(int(score), []).append(member)
        return out


def read(redis_url: str, limit: int = 100) -> tuple[list[bytes], list[list[str]]]:
    """What `/candles` and `/v5/market/kline` give for the series (oldest first / newest first)."""

    async def go() -> tuple[list[bytes], list[list[str]]]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            reader = HistoryReader(client, KEYS, (MINUTE,), SHARDS)
            raws = await reader.candles("BTCUSDT", MINUTE, None, None, limit)
            routes = HttpRoutes(reader, "linear", None)
            answer = await routes.handle("/v5/market/kline?symbol=BTCUSDT&interval=1", None)
            assert answer is not None
            return raws, json.loads(answer.body)["result"]["list"]
        finally:
            await client.aclose()

    return asyncio.run(go())


@pytest.mark.redis
def test_the_backfilled_candle_is_bybits_numbers_with_no_trade_fields() -> None:
    view = msgspec.json.decode(candle(3, "7.25", own=False), type=CandleView)
    assert (view.source, view.trade_count, view.buy_volume, view.sell_volume) == (
        "bybit", None, None, None
    )  # fmt: skip
    assert (view.close, view.volume, view.revision, view.closed, view.gap) == (
        msgspec.json.decode(b"7.25", type=type(view.close)), view.volume, 0, True, False
    )  # fmt: skip
    assert b'"trade_count":null,"buy_volume":null,"sell_volume":null' in candle(3, "1", own=False)
    # the n-1 candles before the last one: calendar months step back by the calendar
    month = Interval.parse("1M")
    assert first_of(month, 1_709_251_200_000, 3) == 1_704_067_200_000  # 2024-03 → 2024-01
    assert first_of(MINUTE, T0, 10) == T0 - 9 * 60_000


@pytest.mark.redis
def test_backfill_writes_only_below_the_pipelines_own_candles_once(redis_url: str) -> None:
    store = Store(redis_url)
    store.own(*(candle(n, f"{n}.5") for n in range(5, 9)))
    bybit = [candle(n, f"{n}.25", own=False) for n in range(0, 9)]
    assert store.backfill(*bybit) == 5  # 0..4: below the oldest own candle (5)
    assert store.backfill(*bybit) == 0  # run again (a restart, a second replica): nothing
    members = store.members()
    assert sorted(members) == [T0 + n * 60_000 for n in range(9)]
    assert all(len(m) == 1 for m in members.values())
    assert members[T0 + 4 * 60_000] == [member_of(bybit[4])]
    assert members[T0 + 5 * 60_000] == [member_of(candle(5, "5.5"))]  # own, untouched
    # the candles between backfilled ones and the first own one come in a later pass
    gap = Store(redis_url)
    gap.client.delete(gap.key)
    gap.own(candle(6, "6.5"))
    assert gap.backfill(*bybit[:4]) == 4
    assert gap.backfill(*bybit) == 2  # 4 and 5: free, below the oldest own one
    assert sorted(gap.members()) == [T0 + n * 60_000 for n in range(7)]


@pytest.mark.redis
def test_where_the_backfill_meets_the_aggregator_readers_keep_the_pipelines(
    redis_url: str,
) -> None:
    store = Store(redis_url)
    # A series with nothing of its own yet: backfilled 0..4, then the aggregator's first candle
    # at 4 (the race), then 5.
    assert store.backfill(*(candle(n, f"{n}.25", own=False) for n in range(5))) == 5
    store.own(candle(4, "4.5"), candle(5, "5.5"))
    assert len(store.members()[T0 + 4 * 60_000]) == 2  # both stored ...
    raws, rows = read(redis_url)
    want = [candle(n, f"{n}.25", own=False) for n in range(4)] + [
        candle(4, "4.5"),
        candle(5, "5.5"),
    ]
    assert raws == want  # ... the pipeline's is read
    assert [row[4] for row in rows] == ["5.5", "4.5", "3.25", "2.25", "1.25", "0.25"]
    # A WebSocket resume that sent the backfilled candle still sends the pipeline's after it.
    seam = Seam()
    seam.add((60_000, "BTCUSDT"), 0, (0, 0), [candle(4, "4.25", own=False)])
    assert seam.keep(candle(4, "4.5"))
    seam = Seam()
    seam.add((60_000, "BTCUSDT"), 0, (0, 0), [candle(4, "4.5")])
    assert not seam.keep(candle(4, "4.5")) and seam.keep(candle(4, "4.75", revision=1))


# --- end to end --------------------------------------------------------------------------

SPEED = 60
"""The simulator's market clock: a market minute is a second of wall time."""
COUNT = 10


def get(url: str, auth: tuple[str, str] | None = None) -> Any:
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())


def ours(pipe: Pipeline, symbol: str, code: str) -> list[list[str]]:
    url = f"http://127.0.0.1:{pipe.ws_port}/v5/market/kline?symbol={symbol}&interval={code}"
    body = get(url + "&limit=1000", (USER, PASSWORD))
    assert body["retCode"] == 0, body
    return body["result"]["list"]  # type: ignore[no-any-return]


def theirs(pipe: Pipeline, symbol: str, code: str, start: int, end: int) -> list[list[str]]:
    query = urllib.parse.urlencode(
        {"category": "linear", "symbol": symbol, "interval": code, "start": start, "end": end,
         "limit": 1000}
    )  # fmt: skip
    body = get(f"{pipe.sim.rest_url}/v5/market/kline?{query}")
    assert body["retCode"] == 0, body
    return body["result"]["list"]  # type: ignore[no-any-return]


def sim_minutes(pipe: Pipeline, symbol: str) -> int:
    """How many 1m candles the simulator lists (its open one too)."""
    return len(theirs(pipe, symbol, "1", 0, 2**62))


def symbols_of(pipe: Pipeline) -> list[str]:
    body = get(f"{pipe.sim.rest_url}/v5/market/instruments-info?category=linear")
    return sorted(i["symbol"] for i in body["result"]["list"])


def stored_sources(pipe: Pipeline, symbol: str, label: str) -> dict[int, list[str]]:
    client = pipe.client()
    try:
        key = pipe.keys.history(pipe.shard_of(symbol), label, symbol)
        out: dict[int, list[str]] = {}
        for member, score in replies.scored(client.zrange(key, 0, -1, withscores=True)):
            out.setdefault(int(score), []).append(json.loads(b"{" + member)["source"])
        return out
    finally:
        client.close()


@pytest.mark.e2e
@pytest.mark.redis
def test_backfill_serves_bybits_history_at_once_then_joins_the_pipelines(
    tmp_path: Path, redis_url: str
) -> None:
    pipe = start_pipeline(
        tmp_path, redis_url,
        ("--symbols", "3", "--rate", "30", "--quiet-fraction", "0", "--speed", str(SPEED)),
        shards=2, intervals="1s,1m,3m", STREAMER_HISTORY_BACKFILL=str(COUNT),
        STREAMER_ENABLED_CONSUMERS="websocket",
    )  # fmt: skip
    try:
        symbols = symbols_of(pipe)
        # A quarter of an hour of market time before the pipeline starts.
        wait_until(lambda: sim_minutes(pipe, symbols[0]) > 15, 60, "the simulator's history")
        pipe.start("publish", "publish")
        wait_for_ws(pipe.ws_port)
        pipe.start("aggregate", "aggregate")
        ingest = pipe.start("ingest", "ingest")
        ingest.wait_output("history backfill at start", 30)
        assert "0 failed" in ingest.output()
        for symbol in symbols:
            rows = ours(pipe, symbol, "1")
            assert len(rows) >= COUNT
            # At once: Bybit's candles from before the pipeline's first one, as the exchange
            # answers them itself.
            assert rows == theirs(pipe, symbol, "1", int(rows[-1][0]), int(rows[0][0]))
            sources = stored_sources(pipe, symbol, "1m")
            assert len(sources) >= COUNT and sources[min(sources)] == ["bybit"]
            rows3 = ours(pipe, symbol, "3")
            assert len(rows3) >= 3
            assert rows3 == theirs(pipe, symbol, "3", int(rows3[-1][0]), int(rows3[0][0]))
        # 1s has no Bybit kline: only the pipeline's own candles
        assert {"trades"} == {k for s in stored_sources(pipe, symbols[0], "1s").values() for k in s}

        # The second pass closes the gap up to the pipeline's own first candle.
        ingest.wait_output("history backfill 1m, once its own candles came", 60)
        for symbol in symbols:
            sources = stored_sources(pipe, symbol, "1m")
            times = sorted(sources)
            assert times == [times[0] + n * 60_000 for n in range(len(times))], "a hole"
            # (both at one time: the aggregator's first candle raced the backfill; it wins)
            kinds = ["trades" if "trades" in sources[t] else "bybit" for t in times]
            first_own = kinds.index("trades")
            assert set(kinds[:first_own]) == {"bybit"} and set(kinds[first_own:]) == {"trades"}
            rows = ours(pipe, symbol, "1")
            assert rows == theirs(pipe, symbol, "1", int(rows[-1][0]), int(rows[0][0]))
        # /candles: Bybit's numbers, "source": "bybit", the trade-only fields null
        url = (f"http://127.0.0.1:{pipe.ws_port}/candles?symbol={symbols[0]}&interval=1m"
               f"&limit={COUNT}&start=0")  # fmt: skip
        first = get(url, (USER, PASSWORD))["candles"][0]
        assert first["source"] == "bybit" and first["revision"] == 0 and first["closed"] is True
        assert (first["trade_count"], first["buy_volume"], first["sell_volume"]) == (None,) * 3

        # Started again: nothing written twice (what was stored stays as it was).
        assert ingest.stop() == 0
        before = {symbol: stored_sources(pipe, symbol, "1m") for symbol in symbols}
        again = pipe.restart("ingest")  # (its log goes on in the same file)
        wait_until(lambda: again.output().count("history backfill at start") == 2, 30,
                   "the second start's backfill")  # fmt: skip
        for symbol in symbols:
            after = stored_sources(pipe, symbol, "1m")
            assert {t: after[t] for t in before[symbol]} == before[symbol]
    finally:
        pipe.stop_all()
