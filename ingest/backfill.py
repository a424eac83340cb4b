"""STREAMER_HISTORY_BACKFILL=<n>: at start, the history store's missing recent candles from
Bybit's REST kline, so that a fresh install serves history at once.

For every symbol ingest serves and every configured interval Bybit has a kline for, the store
(common/history.py) should hold the series' newest n closed candles (at most
STREAMER_HISTORY_CANDLES). The ones older than the series' oldest stored candle are fetched from
`GET /v5/market/kline` (ingest/klines/rest.py) and written as `BackfilledCandle`s: Bybit's
numbers, `"source": "bybit"`, and `trade_count`, `buy_volume`, `sell_volume` null (Bybit's kline
does not say them). They equal the pipeline's own candles by the open rule (CoreBase._render).

Only into the store, never into the candle stream: the stream is the pipeline's output in the
order it was made, which every consumer, pub/sub, PostgreSQL and `ops verify` (which recomputes
the stream from the trades) read as such; old candles appended to it would reach them as news,
out of order, with no trades behind them (and klines mode refuses candles older than a series'
last one). The store is what history readers read: `/v5/market/kline`, `/candles`, the
WebSocket resume, the reader library's hole fill.

Consistency with the store's writers. One script per series writes, atomically, only candles
older than the series' oldest candle of the pipeline's own, at open times that hold nothing yet:
a candle the pipeline wrote is never replaced, and a backfill run twice (a restart, two
replicas) writes nothing twice. The pipeline only ever adds candles at a series' new end, so it
never meets a backfilled one, but for one race: a series with no candle of its own yet, whose
first one the aggregator writes while the backfill writes the same open time. Then both are
stored, and every reader keeps the pipeline's (`common.history.member_rank`: a backfilled member
ranks below any candle of the stream; the WebSocket resume sends the pipeline's after it).

Custom intervals (`1s`, `7m`) have no Bybit kline: their history comes from `python -m ingest
replay` of Bybit's archive files, through the aggregator's normal write path.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common.errors import BadMessageError, RetryableError
from common.history import BACKFILLED, member_of
from common.intervals import Calendar, Interval
from common.keys import Keys
from common.lifecycle import sleep_or_stop
from common.settings import IngestSettings
from common.sharding import shard_of
from common.wire import BackfilledCandle, Candle, candle_encoder
from ingest.klines.frames import decode_rest
from ingest.klines.rest import PAGE_LIMIT, KlineRest
from ingest.rest import _get as http_get

log = logging.getLogger(__name__)

REQUESTS_PER_S = 20.0
"""Bybit allows 600 requests per 5 s per IP (Bybit's V5 rate limits: docs/protocol.md); the backfill
takes a sixth of that, leaving the rest to klines mode and gap repair."""
WORKERS = 4
CLOCK_REFRESH_S = 10.0

BACKFILL_LUA = (
    """
-- KEYS[1]: one series' history key. ARGV: (open time, member) pairs, oldest first.
-- Stores each candle older than the series' oldest candle of the pipeline's own (any, when it
-- has none) at an open time that holds nothing yet; returns how many. Backfilled members are
-- the oldest of a series, so the search for its oldest own one reads few.
local bound = math.huge
local at = 0
while bound == math.huge do
  local chunk = redis.call('ZRANGE', KEYS[1], at, at + 99, 'WITHSCORES')
  if #chunk == 0 then break end
  for i = 1, #chunk, 2 do
    if not string.find(chunk[i], '"""
    + BACKFILLED.decode()
    + """', 1, true) then
      bound = tonumber(chunk[i + 1])
      break
    end
  end
  at = at + 100
end
local n = 0
for i = 1, #ARGV, 2 do
  if tonumber(ARGV[i]) < bound and redis.call('ZCOUNT', KEYS[1], ARGV[i], ARGV[i]) == 0 then
    redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1])
    n = n + 1
  end
end
return n
"""
)


def backfilled(candle: Candle) -> bytes:
    """The JSON of a Bybit REST candle as the store keeps a backfilled one."""
    return candle_encoder.encode(
        BackfilledCandle(
            symbol=candle.symbol, interval=candle.interval, interval_label=candle.interval_label,
            timestamp=candle.timestamp, open=candle.open, high=candle.high, low=candle.low,
            close=candle.close, volume=candle.volume, turnover=candle.turnover,
            category=candle.category,
        )
    )  # fmt: skip


def first_of(interval: Interval, last_ms: int, count: int) -> int:
    """The open time `count - 1` candles before `last_ms`."""
    if interval.calendar is not Calendar.MONTH:  # weeks are 7 days long too
        return last_ms - (count - 1) * interval.ms
    first = last_ms
    for _ in range(count - 1):
        first = interval.floor(first - 1)
    return first


@dataclass
class Totals:
    series: int = 0
    full: int = 0
    candles: int = 0
    failed: int = 0


class ExchangeMinute:
    """The exchange's open 1m candle (Bybit lists its open candle first), asked again every
    CLOCK_REFRESH_S: what has closed is judged by the exchange's clock, not ours. Every Bybit
    interval is whole minutes on minute boundaries, so an interval's open candle is the one
    holding the open minute's start."""

    def __init__(self, settings: IngestSettings, symbol: str) -> None:
        query = {"category": settings.bybit_category.value, "symbol": symbol, "interval": "1"}
        self._url = f"{settings.bybit_rest_url}/v5/market/kline?{urllib.parse.urlencode(query)}"
        self._timeout_s = settings.bybit_rest_timeout_s
        self._open_ms = 0
        self._asked_s = -CLOCK_REFRESH_S
        self._lock = asyncio.Lock()

    async def open_ms(self) -> int:
        async with self._lock:
            if time.monotonic() - self._asked_s >= CLOCK_REFRESH_S:
                body = await asyncio.to_thread(http_get, self._url + "&limit=1", self._timeout_s)
                answer = decode_rest(body)
                if answer.ret_code != 0 or answer.result is None or not answer.result.rows:
                    raise RetryableError(f"kline: retCode {answer.ret_code} {answer.ret_msg!r}")
                self._open_ms = int(answer.result.rows[0][0])
                self._asked_s = time.monotonic()
            return self._open_ms


class Backfill:
    """Two passes per series: at start, and once more when, by the exchange's clock, the
    aggregator has written the series' first candle of its own (two intervals and a minute
    later): the candles between the first pass's newest and that one (the first, partial
    candle of a cold start, which the aggregator never writes) are filled in then."""

    def __init__(
        self, settings: IngestSettings, symbols: list[str], redis: aioredis.Redis, keys: Keys
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._keys = keys
        self._count = min(settings.history_backfill, settings.history_candles)
        fixed = settings.fixed_shards()
        self.series = [
            (symbol, interval)
            for symbol in symbols
            if fixed is None or shard_of(symbol, settings.shards) in fixed
            for interval in settings.kline_intervals
            if interval.bybit_code is not None
        ]
        self._rest = KlineRest(
            settings.bybit_rest_url, settings.bybit_category, settings.bybit_rest_timeout_s
        )
        self._script = redis.register_script(BACKFILL_LUA)
        self._clock = ExchangeMinute(settings, symbols[0]) if symbols else None
        self._next_slot_s = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        if not self.series:
            log.info("history backfill: no series of a Bybit interval, nothing to do")
            return
        log.info("history backfill: %d series, up to %d candles each", len(self.series),
                 self._count)  # fmt: skip
        assert self._clock is not None
        try:
            began_ms = await self._clock.open_ms()
        except (RetryableError, BadMessageError, OSError) as exc:
            log.warning("history backfill skipped: the exchange's clock: %s", exc)
            return
        await self._pass(self.series, stop, "at start", None)
        later = [
            self._again(interval, [s for s in self.series if s[1] == interval], began_ms, stop)
            for interval in dict.fromkeys(interval for _, interval in self.series)
        ]
        await asyncio.gather(*later)

    async def _again(
        self,
        interval: Interval,
        series: list[tuple[str, Interval]],
        began_ms: int,
        stop: asyncio.Event,
    ) -> None:
        assert self._clock is not None
        due_ms = interval.next_open(interval.next_open(interval.floor(began_ms))) + 60_000
        first_ms = first_of(interval, interval.floor(interval.floor(began_ms) - 1), self._count)
        while not stop.is_set():
            try:
                if await self._clock.open_ms() >= due_ms:
                    what = f"{interval}, once its own candles came"
                    await self._pass(series, stop, what, first_ms)
                    return
            except (RetryableError, BadMessageError, OSError) as exc:
                log.warning("history backfill: the exchange's clock: %s", exc)
            await sleep_or_stop(stop, CLOCK_REFRESH_S)

    async def _pass(
        self,
        series: list[tuple[str, Interval]],
        stop: asyncio.Event,
        what: str,
        first_ms: int | None,
    ) -> None:
        """Backfill the series: their newest candles (`first_ms` None), or all from it on."""
        began = time.monotonic()
        totals = Totals()
        queue: asyncio.Queue[tuple[str, Interval]] = asyncio.Queue()
        for each in series:
            queue.put_nowait(each)
        work = (self._work(queue, totals, stop, first_ms) for _ in range(WORKERS))
        await asyncio.gather(*work)
        log.info(
            "history backfill %s%s: %d candles into %d of %d series in %.1f s (%d held them "
            "already, %d failed)",
            what, " (stopped)" if stop.is_set() else "", totals.candles, totals.series,
            len(series), time.monotonic() - began, totals.full, totals.failed,
        )  # fmt: skip

    async def _work(
        self,
        queue: asyncio.Queue[tuple[str, Interval]],
        totals: Totals,
        stop: asyncio.Event,
        first_ms: int | None,
    ) -> None:
        while not stop.is_set() and not queue.empty():
            symbol, interval = queue.get_nowait()
            try:
                written = await self._series(symbol, interval, first_ms)
            except (RetryableError, BadMessageError, RedisError, OSError) as exc:
                totals.failed += 1
                log.warning("history backfill %s %s failed: %s", symbol, interval, exc)
                continue
            if written is None:
                totals.full += 1
            elif written:
                totals.series += 1
                totals.candles += written

    async def _series(self, symbol: str, interval: Interval, first_ms: int | None) -> int | None:
        """Candles written (None: the store held the newest ones already)."""
        assert self._clock is not None
        key = self._keys.history(shard_of(symbol, self._settings.shards), interval.label, symbol)
        last = interval.floor(interval.floor(await self._clock.open_ms()) - 1)  # the last closed
        if first_ms is None:
            first = first_of(interval, last, self._count)
            held: Any = await self._redis.zcount(key, first, last)
            if held >= self._count:
                return None
        else:
            first = first_ms
        for _ in range(0, (last - first) // interval.ms + 1, PAGE_LIMIT):  # a slot per page
            await self._pace()
        candles = await self._rest.fetch(interval, symbol, first, last)
        args: list[int | bytes] = []
        for candle in candles:
            args += [candle.timestamp, member_of(backfilled(candle))]
        return int(await self._script(keys=[key], args=args)) if args else 0

    async def _pace(self) -> None:
        """At most REQUESTS_PER_S requests a second, over every worker."""
        now = time.monotonic()
        slot = max(now, self._next_slot_s)
        self._next_slot_s = slot + 1 / REQUESTS_PER_S
        if slot > now:
            await asyncio.sleep(slot - now)


async def alongside(
    serve: Awaitable[None],
    settings: IngestSettings,
    symbols: list[str],
    redis: aioredis.Redis,
    keys: Keys,
    stop: asyncio.Event,
) -> None:
    """Serve, with the backfill (when STREAMER_HISTORY_BACKFILL > 0) running beside it. A
    backfill that fails other than by a REST or Redis error (a bug) stops the process: the
    service drains, then the error is raised."""
    if settings.history_backfill == 0:
        await serve
        return
    backfill = asyncio.create_task(Backfill(settings, symbols, redis, keys).run(stop))
    failed: list[BaseException] = []

    def done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            failed.append(task.exception())  # type: ignore[arg-type]
            log.critical("history backfill died: %r", task.exception())
            stop.set()

    backfill.add_done_callback(done)
    try:
        await serve
    finally:
        backfill.cancel()
        await asyncio.gather(backfill, return_exceptions=True)
    if failed:
        raise failed[0]
