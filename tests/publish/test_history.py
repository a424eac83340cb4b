"""The history store's script fragment and its reader, against a real redis-server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
import redis.asyncio as aioredis

from common.history import STORE_LUA, member_of
from common.intervals import Interval, parse_intervals
from common.keys import Keys
from common.sharding import shard_of
from common.wire import Candle, candle_encoder, raw_number
from publish.history import ArchiveUnavailable, HistoryReader
from tests.support import replies
from tests.support.redisproc import RedisProcess

pytestmark = pytest.mark.redis

MINUTE = Interval.parse("1m")
T0 = 1_786_310_400_000
_WRITE = (
    STORE_LUA
    + """
for i = 2, #ARGV do
  store_candle(KEYS[i - 1], ARGV[i], tonumber(ARGV[1]))
end
"""
)


def candle(symbol: str, n: int, close: str = "100.5", revision: int = 0) -> bytes:
    """The n-th 1m candle of a series; equal content at two times on purpose (quiet series)."""
    price = raw_number(close)
    return candle_encoder.encode(
        Candle(
            symbol=symbol, interval=MINUTE.ms, interval_label="1m", timestamp=T0 + n * MINUTE.ms,
            open=price, high=price, low=price, close=price, volume=raw_number("0"),
            turnover=raw_number("0"), trade_count=0, buy_volume=raw_number("0"),
            sell_volume=raw_number("0"), revision=revision,
        )
    )  # fmt: skip


def write(client: redis.Redis, keys: Keys, candles: list[bytes], depth: int, shards: int) -> None:
    script = client.register_script(_WRITE)
    names = []
    for raw in candles:
        symbol = raw.split(b'"symbol":"', 1)[1].split(b'"', 1)[0].decode()
        names.append(keys.history(shard_of(symbol, shards), "1m", symbol))
    script(keys=names, args=[depth, *candles])


def read(redis_url: str, keys: Keys, shards: int, **kwargs: Any) -> list[bytes]:
    async def go() -> list[bytes]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            reader = HistoryReader(client, keys, parse_intervals("1s,1m"), shards)
            return await reader.candles(**kwargs)
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_member_is_the_candle_without_its_series_head() -> None:
    raw = candle("BTCUSDT", 3)
    assert member_of(raw) == raw[raw.index(b'"timestamp"') :]


def test_revisions_replace_and_depth_trims_amortised(redis_url: str) -> None:
    """T0 is a multiple of 16 s, so every 4th minute (n % 4 == 0) is a trim point."""
    client = redis.Redis.from_url(redis_url)
    keys = Keys("h")
    depth = 20
    key = keys.history(shard_of("BTCUSDT", 4), "1m", "BTCUSDT")

    def scores() -> list[int]:
        return [int(s) for _, s in replies.scored(client.zrange(key, 0, -1, withscores=True))]

    write(client, keys, [candle("BTCUSDT", n) for n in range(23)], depth, 4)
    # equal content at 23 times: 23 members; the trim at n=20 kept 20, then 21 and 22 came
    assert scores() == [T0 + n * 60_000 for n in range(1, 23)]
    write(client, keys, [candle("BTCUSDT", 22, "101", revision=1)], depth, 4)
    assert client.zrangebyscore(key, T0 + 22 * 60_000, T0 + 22 * 60_000) == [
        member_of(candle("BTCUSDT", 22, "101", revision=1))
    ]
    assert len(scores()) == 22
    write(client, keys, [candle("BTCUSDT", 23)], depth, 4)
    assert len(scores()) == 23
    write(client, keys, [candle("BTCUSDT", 24)], depth, 4)  # a trim point: the newest 20
    assert scores() == [T0 + n * 60_000 for n in range(5, 25)]
    for n in range(25, 60):
        write(client, keys, [candle("BTCUSDT", n)], depth, 4)
        assert depth <= len(scores()) <= depth + 3


def test_reader_ranges_limits_and_order(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = Keys("h")
    raws = [candle("ETHUSDT", n, f"{100 + n}.25") for n in range(50)]
    write(client, keys, raws, 1000, 3)
    write(client, keys, [candle("ETHUSDT", 49, "7", revision=2)], 1000, 3)
    latest = [*raws[:49], candle("ETHUSDT", 49, "7", revision=2)]

    def at(n: int) -> int:
        return T0 + n * 60_000

    base = {"symbol": "ETHUSDT", "interval": MINUTE}
    assert read(redis_url, keys, 3, **base, start_ms=None, end_ms=None, limit=1000) == latest
    # the newest `limit` of the range, as Bybit picks them; oldest first unless asked
    assert read(redis_url, keys, 3, **base, start_ms=None, end_ms=None, limit=5) == latest[-5:]
    got = read(redis_url, keys, 3, **base, start_ms=at(10), end_ms=at(20), limit=3,
               newest_first=True)  # fmt: skip
    assert got == [latest[20], latest[19], latest[18]]
    # bounds are inclusive; from_start pages forward
    got = read(redis_url, keys, 3, **base, start_ms=at(10), end_ms=at(20), limit=3,
               from_start=True)  # fmt: skip
    assert got == latest[10:13]
    got = read(redis_url, keys, 3, **base, start_ms=at(10) + 1, end_ms=None, limit=2,
               from_start=True, newest_first=True)  # fmt: skip
    assert got == [latest[12], latest[11]]
    assert read(redis_url, keys, 3, **base, start_ms=at(60), end_ms=None, limit=9) == []
    assert read(redis_url, keys, 3, symbol="NOPE", interval=MINUTE, start_ms=None,
                end_ms=None, limit=9) == []  # fmt: skip


def test_reader_names_intervals_and_lists_series(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = Keys("h*")  # a glob character in the prefix must not widen the SCAN
    write(client, keys, [candle("AAAUSDT", 0), candle("BBBUSDT", 0)], 1000, 2)
    write(client, Keys("hx"), [candle("CCCUSDT", 0)], 1000, 2)

    async def go() -> None:
        aclient = aioredis.Redis.from_url(redis_url)
        reader = HistoryReader(aclient, keys, parse_intervals("1s,1m,1h"), 2)
        try:
            assert reader.interval("1") == MINUTE and reader.interval("1m") == MINUTE
            assert reader.interval("60") == Interval.parse("1h")
            assert reader.interval("1s") == Interval.parse("1s")
            assert reader.interval("60s") == MINUTE and reader.interval("60m") == reader.interval(
                "1h"
            )
            assert reader.interval("5") is None  # a Bybit code not configured
            assert reader.interval("D") is None and reader.interval("x") is None
            assert await reader.series() == [("AAAUSDT", MINUTE), ("BBBUSDT", MINUTE)]
        finally:
            await aclient.aclose()

    asyncio.run(go())


def test_the_store_survives_a_redis_restart_with_aof(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path / "aof", extra=("--appendonly", "yes")).start()
    try:
        client = server.client()
        keys = Keys("p")
        raws = [candle("BTCUSDT", n, f"{200 + n}.5") for n in range(30)]
        write(client, keys, raws, 1000, 4)
        write(client, keys, [candle("BTCUSDT", 7, "1.5", revision=1)], 1000, 4)
        client.close()
        server.stop()  # SIGTERM: redis-server flushes its append-only file and exits
        server.start()  # the same port and directory: it loads the file
        want = [*raws[:7], candle("BTCUSDT", 7, "1.5", revision=1), *raws[8:]]
        got = read(server.url, keys, 4, symbol="BTCUSDT", interval=MINUTE, start_ms=None,
                   end_ms=None, limit=1000)  # fmt: skip
        assert got == want
    finally:
        server.stop()


class FakeArchive:
    """An archive in memory (the PostgreSQL table's role): the candles it was given, by open
    time, read with the rules of publish.history.Archive; `down` makes it unreachable."""

    def __init__(self, raws: list[bytes]) -> None:
        self.rows = {int(msgspec.json.decode(raw)["timestamp"]): member_of(raw) for raw in raws}
        self.down = False
        self.reads = 0

    async def entries(
        self, symbol: str, interval: Interval, start_ms: int | None, end_ms: int | None,
        limit: int, *, from_start: bool,
    ) -> list[tuple[int, bytes]]:  # fmt: skip
        self.reads += 1
        if self.down:
            raise ArchiveUnavailable("away")
        low, high = start_ms or 0, end_ms if end_ms is not None else 2**62
        times = sorted(t for t in self.rows if low <= t <= high)
        times = times[:limit] if from_start else times[-limit:]
        return [(t, self.rows[t]) for t in times]

    async def aclose(self) -> None:
        pass


def test_an_archive_gives_what_the_store_trimmed_window_by_window(redis_url: str) -> None:
    """120 candles through a store of depth 20, with revisions, one of them of a candle trimmed
    long ago (it lands alone below the others); an archive that has every candle but the two
    newest, two of them at a lower revision than the store. Every window, newest or oldest
    `limit`, is the record's: the latest revision of each candle, none missing or doubled."""
    client = redis.Redis.from_url(redis_url)
    keys, depth = Keys("a"), 20
    written = [candle("BTCUSDT", n, f"{100 + n}.5") for n in range(120)]
    revised = [candle("BTCUSDT", 100, "9.5", revision=1), candle("BTCUSDT", 3, "3.5", revision=2)]
    write(client, keys, written, depth, 2)
    write(client, keys, revised, depth, 2)  # n=3: 180 s is no trim point, so it stays
    record = [*written[:3], revised[1], *written[4:100], revised[0], *written[101:]]
    archive = FakeArchive(written[:-2])  # behind the store, revisions 0 only

    def at(n: int) -> int:
        return T0 + n * 60_000

    async def go() -> None:
        aclient = aioredis.Redis.from_url(redis_url)
        reader = HistoryReader(aclient, keys, parse_intervals("1m"), 2, archive=archive,
                               depth=depth)  # fmt: skip
        try:
            points = [None, at(0) - 1, at(3), at(50), at(99), at(100), at(105), at(119), at(130)]
            for start in points:
                for end in points:
                    for limit in (1, 3, 19, 20, 25, 1000):
                        for from_start in (False, True):
                            low, high = start or 0, end if end is not None else 2**62
                            inside = [r for r in record if low <= json_ts(r) <= high]
                            want = inside[:limit] if from_start else inside[-limit:]
                            page = await reader.read("BTCUSDT", MINUTE, start, end, limit,
                                                     from_start=from_start)  # fmt: skip
                            got = reader.candles_of("BTCUSDT", MINUTE, page.entries)
                            assert got == want, (start, end, limit, from_start)
                            assert page.missing_before is None
            reads = archive.reads
            await reader.read("BTCUSDT", MINUTE, at(100), None, 1000)
            await reader.read("BTCUSDT", MINUTE, None, None, 20)
            assert archive.reads == reads  # the store alone answers these
            # the archive away: the store's part from its floor (the 20th newest) on, and where
            archive.down = True
            page = await reader.read("BTCUSDT", MINUTE, None, None, 1000)
            assert page.missing_before == at(100)
            assert reader.candles_of("BTCUSDT", MINUTE, page.entries) == record[100:]
            page = await reader.read("BTCUSDT", MINUTE, at(0), None, 5, from_start=True)
            assert reader.candles_of("BTCUSDT", MINUTE, page.entries) == record[100:105]
            assert (await reader.read("BTCUSDT", MINUTE, None, None, 7)).missing_before is None
            # nothing in the store (Redis emptied): the archive alone
            archive.down = False
            await aclient.delete(reader.key("BTCUSDT", MINUTE))
            page = await reader.read("BTCUSDT", MINUTE, None, None, 1000)
            assert reader.candles_of("BTCUSDT", MINUTE, page.entries) == written[:-2]
        finally:
            await reader.aclose()

    asyncio.run(go())


def json_ts(raw: bytes) -> int:
    return int(msgspec.json.decode(raw)["timestamp"])
