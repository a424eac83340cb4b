"""`CandleReader` on hand-written candle streams and history store (written as the aggregator
writes them: stream entry and store member in one script): positions across restarts, a trim
past the position filled from the store to the exact candles the bound promises (on a plain
Redis and on a three-node Redis Cluster), the seam after it, and backfilled members in a fill.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
from redis.cluster import RedisCluster as RedisClusterClient

from common.history import STORE_LUA, member_of
from common.keys import Keys
from common.sharding import shard_of
from common.wire import Candle, raw_number
from ingest.backfill import BACKFILL_LUA, backfilled
from streamer.client import CandleReader, Read, ReaderError
from tests.support.cluster import RedisCluster

pytestmark = pytest.mark.redis

PREFIX = "rd"
KEYS = Keys(PREFIX)
SHARDS = 2
T0 = 1_786_310_400_000
MINUTE = 60_000
A, B = "ETHUSDT", "BTCUSDT"  # shards 0 and 1 of 2
_WRITE = (
    STORE_LUA
    + """
local id = redis.call('XADD', KEYS[1], '*', 'data', ARGV[1])
store_candle(KEYS[2], ARGV[1], 1000)
return id
"""
)
_WRITE_UNSTORED = """
local id = redis.call('XADD', KEYS[1], '*', 'data', ARGV[1])
redis.call('HSETNX', KEYS[2], 'unstored', id)
return id
"""


def candle(symbol: str, n: int, revision: int = 0, *, own: bool = True) -> bytes:
    price = raw_number(f"{100 + n}.{revision}5")
    made = Candle(
        symbol=symbol, interval=MINUTE, interval_label="1m", timestamp=T0 + n * MINUTE,
        open=price, high=price, low=price, close=price, volume=raw_number("2"),
        turnover=raw_number(f"{2 * (100 + n)}.{revision}"), trade_count=3,
        buy_volume=raw_number("1"), sell_volume=raw_number("1"), revision=revision,
    )  # fmt: skip
    return msgspec.json.encode(made) if own else backfilled(made)


@pytest.fixture
def server(redis_url: str) -> tuple[str, bool]:
    return redis_url, False


@pytest.fixture(params=["redis", "cluster"])
def either(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, bool]]:
    """The session's Redis, or a three-node Redis Cluster of this test."""
    if request.param == "redis":
        yield request.getfixturevalue("redis_url"), False
        return
    cluster = RedisCluster(tmp_path / "cluster").start()
    yield cluster.url, True
    cluster.stop()


class Pipeline:
    """Writes candles as the aggregator does."""

    def __init__(self, url: str, cluster: bool) -> None:
        self.client: Any = (
            RedisClusterClient.from_url(url) if cluster else redis.Redis.from_url(url)
        )
        self._write = self.client.register_script(_WRITE)
        self._backfill = self.client.register_script(BACKFILL_LUA)
        self.client.hset(KEYS.meta(), mapping={"shards": SHARDS})

    def write(self, *raws: bytes) -> None:
        for raw in raws:
            symbol = msgspec.json.decode(raw)["symbol"]
            shard = shard_of(symbol, SHARDS)
            self._write(keys=[KEYS.klines(shard), KEYS.history(shard, "1m", symbol)], args=[raw])

    def write_unstored(self, *raws: bytes) -> None:
        """As a waiter deadline's write: to the stream only, its first id marked in the shard's
        state (aggregate.checkpoint.WRITE_LUA with the store left for later)."""
        script = self.client.register_script(_WRITE_UNSTORED)
        for raw in raws:
            shard = shard_of(msgspec.json.decode(raw)["symbol"], SHARDS)
            script(keys=[KEYS.klines(shard), KEYS.state(shard)], args=[raw])

    def backfill(self, *raws: bytes) -> None:
        for raw in raws:
            symbol = msgspec.json.decode(raw)["symbol"]
            key = KEYS.history(shard_of(symbol, SHARDS), "1m", symbol)
            self._backfill(keys=[key], args=[msgspec.json.decode(raw)["timestamp"], member_of(raw)])

    def trim(self, symbol: str, keep: int) -> None:
        self.client.xtrim(KEYS.klines(shard_of(symbol, SHARDS)), maxlen=keep, approximate=False)


def read(url: str, cluster: bool, count: int | None, **options: Any) -> tuple[list[Read], Any]:
    """Start the reader, take `count` candles (None: until none is left), leave `async with`."""

    async def go() -> tuple[list[Read], Any]:
        got: list[Read] = []
        reader = CandleReader.from_url(url, "r", cluster=cluster, prefix=PREFIX, block_ms=50,
                                       **options)  # fmt: skip
        async with reader:
            while count is None or len(got) < count:
                try:
                    async with asyncio.timeout(1.0):
                        got.append(await anext(reader))
                except TimeoutError:
                    break
        return got, reader

    return asyncio.run(go())


def seen(reads: list[Read]) -> list[tuple[str, int, int, bool]]:
    return [(c.symbol, (c.timestamp - T0) // MINUTE, c.revision, r) for c, r in reads]


def test_restart_goes_on_where_it_stopped(server: tuple[str, bool]) -> None:
    url, cluster = server
    pipe = Pipeline(url, cluster)
    pipe.write(*(candle(A, n) for n in range(4)))
    got, _ = read(url, cluster, None, start="latest")
    assert got == []  # a new reader starts at the live tail ...
    pipe.write(*(candle(A, n) for n in range(4, 10)), candle(B, 0), candle(A, 8, 1))
    got, _ = read(url, cluster, 3)
    assert seen(got) == [(A, 4, 0, False), (A, 5, 0, False), (A, 6, 0, False)]
    got, _ = read(url, cluster, None)  # ... and goes on after the last one handed out
    assert sorted(seen(got)) == sorted(
        [(A, n, 0, False) for n in range(7, 10)] + [(A, 8, 1, True), (B, 0, 0, False)]
    )
    in_order = [each for each in seen(got) if each[0] == A]  # one shard: the stream's order
    assert in_order == [(A, 7, 0, False), (A, 8, 0, False), (A, 9, 0, False), (A, 8, 1, True)]
    close = next(r.candle.close for r in got if r.candle.symbol == A)
    assert isinstance(close, Decimal) and close == Decimal("107.05")  # the exact digits


def test_a_trim_past_the_position_is_filled_from_the_store(either: tuple[str, bool]) -> None:
    url, cluster = either
    pipe = Pipeline(url, cluster)
    pipe.write(*(candle(A, n) for n in range(10)))
    got, _ = read(url, cluster, None, start="earliest")
    assert seen(got) == [(A, n, 0, False) for n in range(10)]
    # Away: ten more candles and a revision of one it had; the stream keeps only the last 3.
    pipe.write(*(candle(A, n) for n in range(10, 15)), candle(A, 8, 1))
    pipe.write(*(candle(A, n) for n in range(15, 20)))
    pipe.trim(A, 3)
    got, reader = read(url, cluster, None, lookback_s=90)
    # The store gives every candle that ended after the position's end (n=9 ends at T0+10m)
    # minus the 90 s lookback: n=8 (revised while away) on, each once; the stream then goes on
    # after the head the store was read at, so its last 3 entries do not come again.
    assert seen(got) == [(A, 8, 1, True), (A, 9, 0, True)] + [
        (A, n, 0, False) for n in range(10, 20)
    ]
    assert [(f.shard, f.candles, f.series) for f in reader.fills] == [(shard_of(A, SHARDS), 12, 1)]
    # The seam: a new revision comes, an old one does not; the position moved past the fill.
    pipe.write(candle(A, 19, 1), candle(A, 20))
    got, reader = read(url, cluster, None)
    assert seen(got) == [(A, 19, 1, True), (A, 20, 0, False)] and reader.fills == []


def test_a_fill_takes_a_deadlines_candles_not_stored_yet_from_the_stream(
    either: tuple[str, bool],
) -> None:
    """The newest candles of a deadline are in the stream, not yet in the store (the
    `unstored` mark): the fill's stream part starts at the mark, so none is lost."""
    url, cluster = either
    pipe = Pipeline(url, cluster)
    pipe.write(*(candle(A, n) for n in range(10)))
    got, _ = read(url, cluster, None, start="earliest")
    assert len(got) == 10
    pipe.write(*(candle(A, n) for n in range(10, 15)))
    pipe.write_unstored(candle(A, 15), candle(A, 16))
    pipe.trim(A, 3)
    got, reader = read(url, cluster, None, lookback_s=90)
    # The store: n=8 and 9 again (the lookback), 10 to 14; the stream from the mark: 15, 16.
    assert seen(got) == [(A, 8, 0, True), (A, 9, 0, True)] + [
        (A, n, 0, False) for n in range(10, 17)
    ]
    assert [(f.shard, f.candles) for f in reader.fills] == [(shard_of(A, SHARDS), 7)]


def test_a_fill_keeps_the_pipelines_candle_over_a_backfilled_one(
    server: tuple[str, bool],
) -> None:
    url, cluster = server
    pipe = Pipeline(url, cluster)
    assert shard_of(A, SHARDS) == shard_of("SOLUSDT", SHARDS)
    pipe.write(candle(A, 0))
    got, _ = read(url, cluster, None, start="earliest")
    assert len(got) == 1
    # Away: SOLUSDT gets backfilled 3..5, then the aggregator's first candle at 5 (the race)
    # and 6; the stream is trimmed past the reader.
    pipe.backfill(*(candle("SOLUSDT", n, own=False) for n in range(3, 6)))
    pipe.write(candle("SOLUSDT", 5), candle("SOLUSDT", 6), candle(A, 1), candle(A, 2))
    pipe.trim(A, 1)
    got, _ = read(url, cluster, None)
    sol = [(r.candle.timestamp, r.candle.source, r.candle.trade_count) for r in got
           if r.candle.symbol == "SOLUSDT"]  # fmt: skip
    assert sol == [
        (T0 + 3 * MINUTE, "bybit", None),
        (T0 + 4 * MINUTE, "bybit", None),
        (T0 + 5 * MINUTE, "trades", 3),
        (T0 + 6 * MINUTE, "trades", 3),
    ]


def test_no_pipeline_under_the_prefix_is_a_clear_error(redis_url: str) -> None:
    with pytest.raises(ReaderError, match="names no shards"):
        read(redis_url, False, None)
    with pytest.raises(ReaderError):
        CandleReader.from_url(redis_url, "")
