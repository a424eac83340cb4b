"""Klines writes in Redis: exactly once per series, in order, holes filled or flagged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from common.errors import LeaseLostError, RetryableError
from common.history import member_of
from common.intervals import Interval
from common.keys import Keys
from common.wire import Candle, CandleView, Category, candle_encoder, candle_view_decoder
from ingest.klines import metrics
from ingest.klines.frames import make_candle
from ingest.klines.series import ShardKlines
from ingest.klines.store import KlineStore
from tests.support import replies
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.redis

KEYS = Keys("t")
SHARD = 1
TOKEN = "ingest:test"
M1 = Interval.parse("1m")
H1 = Interval.parse("1h")
T0 = 1786310760000  # 2026-08-09 21:26 UTC, a minute boundary


def candle(symbol: str, start_ms: int, close: str = "100.5", interval: Interval = M1) -> Candle:
    values = ("100", "101", "99", close, "1.5", "150.75")
    return make_candle(symbol, interval, start_ms, values, category=Category.LINEAR, closed=True)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    await client.set(KEYS.lease("ingest", SHARD), TOKEN)
    yield client
    await client.aclose()


def store_of(redis: aioredis.Redis, token: str = TOKEN) -> KlineStore:
    return KlineStore(redis, KEYS, SHARD, token, klines_maxlen=10_000, updates_maxlen=1000)


async def stream(redis: aioredis.Redis, key: str | None = None) -> list[CandleView]:
    rows = replies.entries(await redis.xrange(key or KEYS.klines(SHARD)))
    return [candle_view_decoder.decode(fields[b"data"]) for _, fields in rows]


class FakeRest:
    """Bybit's REST klines from a table, with failures and a gate to hold a fetch open."""

    def __init__(self, candles: list[Candle]) -> None:
        self.candles = candles
        self.calls: list[tuple[str, str, int, int]] = []
        self.fail = False
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def fetch(self, interval: Interval, symbol: str, first: int, last: int) -> list[Candle]:
        self.calls.append((symbol, interval.label, first, last))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise RetryableError("retCode 10006 'Too many visits!'")
        return [
            c
            for c in self.candles
            if c.symbol == symbol
            and c.interval_label == interval.label
            and first <= c.timestamp <= last
        ]


async def settle(klines: ShardKlines) -> None:
    async def idle() -> bool:
        return klines.pending == 0 and len(klines.tasks) == 0

    await async_wait_until(idle, 5, what="series queues to drain")


async def test_a_confirm_seen_twice_is_written_once(redis: aioredis.Redis) -> None:
    store = store_of(redis)
    assert await store.write_confirmed([candle("BTCUSDT", T0), candle("ETHUSDT", T0)]) == [
        True,
        True,
    ]
    assert await store.write_confirmed([candle("BTCUSDT", T0, close="1")]) == [False]
    assert await store.write_confirmed([candle("BTCUSDT", T0 - 60_000)]) == [False]
    assert await store.write_confirmed([candle("BTCUSDT", T0 + 60_000)]) == [True]
    views = await stream(redis)
    assert [(v.symbol, v.timestamp) for v in views] == [
        ("BTCUSDT", T0),
        ("ETHUSDT", T0),
        ("BTCUSDT", T0 + 60_000),
    ]
    assert str(views[0].close) == "100.5"
    assert await store.last_starts() == {"BTCUSDT:1m": T0 + 60_000, "ETHUSDT:1m": T0}


async def test_written_candles_go_to_the_history_store_too(redis: aioredis.Redis) -> None:
    store = KlineStore(redis, KEYS, SHARD, TOKEN, 10_000, 1000, history_candles=2)
    written = [candle("BTCUSDT", T0), candle("BTCUSDT", T0 + 60_000), candle("ETHUSDT", T0)]
    await store.write_confirmed(written)
    await store.write_confirmed([candle("BTCUSDT", T0, close="1")])  # refused: not in the store
    key = KEYS.history(SHARD, "1m", "BTCUSDT")
    members = await redis.zrange(key, 0, -1, withscores=True)
    assert members == [
        (member_of(candle_encoder.encode(c)), float(c.timestamp)) for c in written[:2]
    ]
    for n in range(2, 11):  # T0 + 10 min opens on a multiple of 16 s: cut back to depth 2
        await store.write_confirmed([candle("BTCUSDT", T0 + n * 60_000)])
    assert await redis.zcard(key) == 2
    assert await redis.zcard(KEYS.history(SHARD, "1m", "ETHUSDT")) == 1


async def test_a_stale_owner_cannot_write(redis: aioredis.Redis) -> None:
    with pytest.raises(LeaseLostError):
        await store_of(redis, token="someone-else").write_confirmed([candle("BTCUSDT", T0)])
    with pytest.raises(LeaseLostError):
        await store_of(redis, token="someone-else").write_updates([candle("BTCUSDT", T0)])
    assert await stream(redis) == []
    assert await redis.hgetall(KEYS.klines_last(SHARD)) == {}


async def test_cold_start_writes_live_confirms_without_backfill(redis: aioredis.Redis) -> None:
    rest = FakeRest([candle("BTCUSDT", T0 - 60_000 * k) for k in range(1, 5)])
    klines = ShardKlines(store_of(redis), rest.fetch, (M1,))
    await klines.load()
    klines.add_symbols(["BTCUSDT"])
    klines.catch_up(T0 + 120_000)
    klines.on_candle(candle("BTCUSDT", T0))
    klines.on_candle(candle("BTCUSDT", T0))
    await settle(klines)
    assert rest.calls == []
    assert [v.timestamp for v in await stream(redis)] == [T0]


async def test_a_hole_is_filled_before_the_live_confirm(redis: aioredis.Redis) -> None:
    history = [candle("BTCUSDT", T0 + 60_000 * k, close=f"{100 + k}") for k in range(6)]
    rest = FakeRest(history)
    store = store_of(redis)
    await store.write_confirmed([history[0]])
    klines = ShardKlines(store, rest.fetch, (M1,))
    await klines.load()  # a restart: the last written candle comes from Redis
    klines.add_symbols(["BTCUSDT"])
    rest.gate = asyncio.Event()
    klines.on_candle(history[4])
    await asyncio.wait_for(rest.entered.wait(), 5)
    # Live confirms that arrive while the series is backfilling wait behind it.
    klines.on_candle(history[5])
    klines.on_candle(history[4])
    rest.gate.set()
    await settle(klines)
    assert rest.calls == [("BTCUSDT", "1m", T0 + 60_000, T0 + 4 * 60_000 - 1)]
    views = await stream(redis)
    assert [v.timestamp for v in views] == [c.timestamp for c in history]
    assert [str(v.close) for v in views] == ["100", "101", "102", "103", "104", "105"]
    assert not any(v.gap for v in views)


async def test_catch_up_after_a_reconnect_takes_only_settled_candles(redis: aioredis.Redis) -> None:
    history = [candle("BTCUSDT", T0 + 60_000 * k) for k in range(5)]
    rest = FakeRest(history)
    store = store_of(redis)
    await store.write_confirmed([history[0]])
    klines = ShardKlines(store, rest.fetch, (M1,), settle_ms=5_000)
    await klines.load()
    klines.add_symbols(["BTCUSDT"])
    # Now is 3 s after the end of history[3]: history[3] has not settled, so up to [2].
    klines.catch_up(T0 + 4 * 60_000 + 3_000)
    await settle(klines)
    assert [v.timestamp for v in await stream(redis)] == [c.timestamp for c in history[:3]]
    klines.catch_up(T0 + 4 * 60_000 + 5_000)
    await settle(klines)
    assert [v.timestamp for v in await stream(redis)] == [c.timestamp for c in history[:4]]
    calls = len(rest.calls)
    klines.catch_up(T0 + 4 * 60_000 + 6_000)  # nothing has ended since: no REST call at all
    await settle(klines)
    assert len(rest.calls) == calls


async def test_rest_error_flags_a_gap_and_never_crashes(redis: aioredis.Redis) -> None:
    rest = FakeRest([])
    rest.fail = True
    store = store_of(redis)
    await store.write_confirmed([candle("BTCUSDT", T0)])
    klines = ShardKlines(store, rest.fetch, (M1,))
    await klines.load()
    klines.add_symbols(["BTCUSDT"])
    gaps = metrics.GAPS.get()
    klines.catch_up(T0 + 10 * 60_000)  # a catch-up that fails leaves the hole for later
    await settle(klines)
    assert [v.timestamp for v in await stream(redis)] == [T0]
    klines.on_candle(candle("BTCUSDT", T0 + 3 * 60_000))
    klines.on_candle(candle("BTCUSDT", T0 + 4 * 60_000))
    await settle(klines)
    views = await stream(redis)
    assert [(v.timestamp, v.gap) for v in views] == [
        (T0, False),
        (T0 + 3 * 60_000, True),
        (T0 + 4 * 60_000, False),
    ]
    assert metrics.GAPS.get() == gaps + 1


async def test_missing_rows_and_oversized_holes_are_flagged(redis: aioredis.Redis) -> None:
    # REST lacks T0+2m; the hole before T0+6m is 5 candles, more than max_backfill=3.
    history = [candle("BTCUSDT", T0 + 60_000 * k) for k in (1, 3)]
    history += [candle("BTCUSDT", T0 + 60_000 * k, interval=M1) for k in (3, 4, 5)][1:]
    rest = FakeRest(history)
    store = store_of(redis)
    await store.write_confirmed([candle("BTCUSDT", T0)])
    klines = ShardKlines(store, rest.fetch, (M1,), max_backfill=10)
    await klines.load()
    klines.add_symbols(["BTCUSDT"])
    klines.on_candle(candle("BTCUSDT", T0 + 6 * 60_000))
    await settle(klines)
    views = await stream(redis)
    assert [(v.timestamp - T0) // 60_000 for v in views] == [0, 1, 3, 4, 5, 6]
    assert [v.gap for v in views] == [False, False, True, False, False, False]

    small = ShardKlines(store, rest.fetch, (M1,), max_backfill=3)
    await small.load()
    small.add_symbols(["BTCUSDT"])
    rest.candles = [candle("BTCUSDT", T0 + 60_000 * k) for k in range(7, 20)]
    small.on_candle(candle("BTCUSDT", T0 + 20 * 60_000))
    await settle(small)
    views = (await stream(redis))[6:]
    assert [(v.timestamp - T0) // 60_000 for v in views] == [17, 18, 19, 20]
    assert [v.gap for v in views] == [True, False, False, False]


async def test_updates_are_throttled_to_the_latest_snapshot(redis: aioredis.Redis) -> None:
    store = store_of(redis)
    klines = ShardKlines(store, FakeRest([]).fetch, (M1, H1))
    klines.add_symbols(["BTCUSDT"])
    for close in ("1", "2", "3"):
        snap = make_candle(
            "BTCUSDT",
            M1,
            T0,
            ("1", "3", "1", close, "1", "1"),
            category=Category.LINEAR,
            closed=False,
        )
        klines.on_candle(snap)
    await store.write_updates(klines.take_updates())
    assert klines.take_updates() == []
    views = await stream(redis, KEYS.updates(SHARD))
    assert [(str(v.close), v.closed, v.source) for v in views] == [("3", False, "bybit")]
    assert await stream(redis) == []


async def test_unproductive_catch_ups_back_off(redis: aioredis.Redis) -> None:
    rest = FakeRest([])  # REST has nothing for the hole (e.g. before the exchange's history)
    store = store_of(redis)
    await store.write_confirmed([candle("BTCUSDT", T0)])
    klines = ShardKlines(store, rest.fetch, (M1,), settle_ms=0)
    await klines.load()
    klines.add_symbols(["BTCUSDT"])
    now = T0 + 10 * 60_000
    klines.catch_up(now)
    await settle(klines)
    assert len(rest.calls) == 1
    klines.catch_up(now + 5_000)  # the next sweep: within the backoff, no REST call
    await settle(klines)
    assert len(rest.calls) == 1
    klines.catch_up(now + 10_000)  # 5 s * 2^1 later: tried again
    await settle(klines)
    assert len(rest.calls) == 2
    # A live confirm still fills (and flags) the hole at once.
    klines.on_candle(candle("BTCUSDT", T0 + 10 * 60_000))
    await settle(klines)
    assert len(rest.calls) == 3
    assert [(v.timestamp, v.gap) for v in await stream(redis)] == [
        (T0, False),
        (T0 + 10 * 60_000, True),
    ]


async def test_a_lost_lease_stops_the_shard_quietly(redis: aioredis.Redis) -> None:
    klines = ShardKlines(store_of(redis, token="stale"), FakeRest([]).fetch, (M1,))
    await klines.load()
    klines.add_symbols(["BTCUSDT"])
    klines.on_candle(candle("BTCUSDT", T0))
    klines.on_candle(candle("BTCUSDT", T0 + 60_000))
    await settle(klines)
    assert klines.lost
    assert await stream(redis) == []
    klines.on_candle(candle("BTCUSDT", T0 + 120_000))  # ignored once lost
    assert klines.pending == 0
