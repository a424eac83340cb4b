"""The recorded real Bybit kline frames through klines mode's frame hook and writer.

Ground truth: ../shared/testdata/bybit (cryptofeed capture, 2026-08-09 21:26:57-21:27:42 UTC).
The capture holds one confirm per series, the 21:26 candle, which must come out of the candle
stream with exactly Bybit's values (derived_kline1.csv, `confirm` True).
"""

from __future__ import annotations

import csv
import json
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from common.intervals import Interval
from common.keys import Keys
from common.lifecycle import TaskSet
from common.settings import IngestSettings
from common.wire import Candle, candle_view_decoder
from ingest.klines import metrics
from ingest.klines.service import KlinesShards
from tests.ingest.klines.test_frames import recorded_kline_frames
from tests.support import replies
from tests.support.procs import TESTDATA
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.redis

KEYS = Keys("t")
SYMBOLS = ["BTCUSDT", "DOGEUSDT", "ETHUSDT", "SOLUSDT"]
SPOT = ["BTCUSDT", "ETHUSDT"]


class FakePool:
    """Stands in for the connection pool: frames are fed by hand."""

    def __init__(self) -> None:
        self.symbols: set[str] = set()

    async def add(self, symbols: list[str]) -> None:
        self.symbols.update(symbols)

    async def remove(self, symbols: list[str]) -> None:
        self.symbols.difference_update(symbols)

    async def wait_subscribed(self, symbols: list[str], timeout_s: float) -> bool:
        return True


async def no_rest(interval: Interval, symbol: str, start_ms: int, end_ms: int) -> list[Candle]:
    raise AssertionError("no backfill expected on a cold start")


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def serving(
    redis: aioredis.Redis,
    updates_ms: int = 0,
    category: str = "linear",
    symbols: list[str] = SYMBOLS,
) -> KlinesShards:
    settings = IngestSettings(
        _env_file=None,
        bybit_category=category,
        bybit_symbols=symbols,
        klines_mode=True,
        kline_intervals="1m",
        shards=1,
        kline_updates_ms=updates_ms,
    )
    pool = FakePool()
    shards = KlinesShards(
        redis, KEYS, settings, no_rest, TaskSet(),
        open_pool=lambda **hooks: pool,  # type: ignore[arg-type]  # a fake connection pool
        token="ingest:replay", symbols=symbols,
    )  # fmt: skip
    await redis.set(KEYS.lease("ingest", 0), shards.token)
    await shards.start_shard(0)

    async def subscribed() -> bool:
        return pool.symbols == set(symbols)

    await async_wait_until(subscribed, 5, what="the shard's symbols subscribed")
    return shards


def expected_confirms() -> dict[str, dict[str, str]]:
    path = TESTDATA / "cryptofeed__BYBIT.derived_kline1.csv"
    with path.open() as f:
        rows = [
            r for r in csv.DictReader(f) if r["category"] == "linear" and r["confirm"] == "True"
        ]
    return {r["symbol"]: r for r in rows}


async def test_the_confirmed_2126_candles_come_out_with_bybits_exact_values(
    redis: aioredis.Redis,
) -> None:
    frames = recorded_kline_frames("/linear")
    shards = await serving(redis)
    for frame in frames + frames:  # every frame twice: a confirm seen twice is written once
        assert shards.on_frame(frame.encode(), 0)
    assert await shards.shards[0].drained(5)
    rows = replies.entries(await redis.xrange(KEYS.klines(0)))
    texts = [fields[b"data"] for _, fields in rows]
    views = [candle_view_decoder.decode(t) for t in texts]
    assert sorted(v.symbol for v in views) == SYMBOLS
    expected = expected_confirms()
    for text, view in zip(texts, views, strict=True):
        row = expected[view.symbol]
        assert view.timestamp == int(row["start_ms"]) == 1786310760000
        for name in ("open", "high", "low", "close", "volume", "turnover"):
            # Exactly Bybit's digits in the JSON text, not a float rendering of them.
            assert f'"{name}":{row[name]},'.encode() in text
        assert (view.interval, view.interval_label, view.closed, view.revision) == (
            60000,
            "1m",
            True,
            0,
        )
        assert (view.source, view.category, view.gap) == ("bybit", "linear", False)
    btc = json.loads(next(t for t, v in zip(texts, views, strict=True) if v.symbol == "BTCUSDT"))
    assert (btc["open"], btc["high"], btc["low"], btc["close"]) == (
        65119.9,
        65119.9,
        65114.2,
        65114.2,
    )
    assert (btc["volume"], btc["turnover"]) == (3.712, 241712.1394)
    last = await redis.hgetall(KEYS.klines_last(0))
    assert last == {f"{s}:1m".encode(): b"1786310760000" for s in SYMBOLS}
    await shards.stop_shard(0, graceful=True)


def snapshot_rows(category: str) -> dict[tuple[str, int], dict[str, str]]:
    """(symbol, frame ts) -> the in-progress kline item of that frame, from derived_kline1.csv."""
    path = TESTDATA / "cryptofeed__BYBIT.derived_kline1.csv"
    with path.open() as f:
        rows = [
            r for r in csv.DictReader(f) if r["category"] == category and r["confirm"] == "False"
        ]
    return {(r["symbol"], int(r["msg_ts_ms"])): r for r in rows}


@pytest.mark.parametrize(("category", "symbols"), [("linear", SYMBOLS), ("spot", SPOT)])
async def test_every_snapshot_becomes_an_in_progress_update(
    redis: aioredis.Redis, category: str, symbols: list[str]
) -> None:
    """Each recorded frame's in-progress item, value by value (exact text), as the CSV flattened
    from the same capture has it; the README's last 21:27 BTCUSDT snapshot among them."""
    frames = recorded_kline_frames(f"/{category}")
    shards = await serving(redis, updates_ms=1000, category=category, symbols=symbols)
    expected = snapshot_rows(category)
    seen = 0
    for frame in frames:
        assert shards.on_frame(frame.encode(), 0)
        parsed = json.loads(frame)
        symbol = parsed["topic"].rsplit(".", 1)[1]
        updates = shards.shards[0].take_updates()
        if all(item["confirm"] for item in parsed["data"]):  # spot: a confirm alone
            assert updates == []
            continue
        [update] = updates
        row = expected[(symbol, parsed["ts"])]
        assert (update.symbol, update.timestamp, update.closed) == (
            symbol,
            int(row["start_ms"]),
            False,
        )
        got = [bytes(x).decode() for x in (update.open, update.high, update.low, update.close,
                                            update.volume, update.turnover)]  # fmt: skip
        assert got == [row[k] for k in ("open", "high", "low", "close", "volume", "turnover")]
        seen += 1
    # linear: 71 (the four 21:26 confirms ride along with a snapshot); spot: 23 (confirms alone)
    assert seen == len(expected) == {"linear": 71, "spot": 23}[category]
    if category == "linear":
        last = expected[max(k for k in expected if k[0] == "BTCUSDT")]
        assert (last["timestamp_ms"], last["volume"], last["turnover"]) == (
            "1786310860441", "7.035", "458078.3588",
        )  # fmt: skip
    await shards.stop_shard(0, graceful=True)


async def test_malformed_frames_are_counted_and_other_frames_passed_on(
    redis: aioredis.Redis,
) -> None:
    shards = await serving(redis)
    before = metrics.MALFORMED.get()
    assert shards.on_frame(b'{"topic":"kline.1.BTCUSDT","data":[{"start":"x"}],"ts":1}', 0)
    assert shards.on_frame(b'{"topic":"kline.9.BTCUSDT","data":[],"ts":1}', 0)
    assert metrics.MALFORMED.get() == before + 2
    # Op replies (acks, pongs, refusals naming a kline topic) go on to the pool's own parser.
    assert not shards.on_frame(b'{"success":true,"ret_msg":"pong","op":"ping"}', 0)
    refusal = (
        b'{"success":false,"ret_msg":"error:handler not found,topic:kline.1.X","op":"subscribe"}'
    )
    assert not shards.on_frame(refusal, 0)
    assert await redis.xlen(KEYS.klines(0)) == 0
    await shards.stop_shard(0, graceful=True)
