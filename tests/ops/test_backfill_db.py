"""`python -m ops backfill-db`: what Redis holds (the history store and the candle streams) into
PostgreSQL, idempotently."""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg
import pytest
import redis

from common.history import STORE_LUA
from common.intervals import parse_intervals
from common.keys import Keys
from common.sharding import shard_of
from common.wire import STREAM_FIELD
from tests.publish.helpers import PREFIX, xadd_candles
from tests.publish.postgres.helpers import RowKey, candle, expected_rows, table_rows
from tests.support import replies
from tests.support.history import stored
from tests.support.procs import ROOT

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.e2e]
T0 = 1_786_310_400_000  # a multiple of 16 s (the store's trim points, common/history.py)
SHARDS, DEPTH = 2, 40
_WRITE = (
    STORE_LUA
    + """
redis.call('XADD', KEYS[1], '*', 'data', ARGV[2])
store_candle(KEYS[2], ARGV[2], tonumber(ARGV[1]))
"""
)


def _backfill(redis_url: str, dsn: str) -> subprocess.CompletedProcess[str]:
    variables = {
        "STREAMER_REDIS_URL": redis_url, "STREAMER_REDIS_PREFIX": PREFIX,
        "STREAMER_SHARDS": str(SHARDS), "STREAMER_POSTGRES_DSN": dsn,
        "STREAMER_ENV_FILE": "/nonexistent.env",
    }  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "ops", "backfill-db"], cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **variables}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _write(client: redis.Redis, raws: list[bytes]) -> None:
    """As the aggregator writes: the candle stream and the history store in one script."""
    keys, script = Keys(PREFIX), client.register_script(_WRITE)
    for raw in raws:
        c = json.loads(raw)
        shard = shard_of(c["symbol"], SHARDS)
        script(keys=[keys.klines(shard), keys.history(shard, c["interval_label"], c["symbol"])],
               args=[DEPTH, raw])  # fmt: skip


def _held(client: redis.Redis) -> list[bytes]:
    """Every candle Redis holds, read here: the candle streams' entries and the store's."""
    keys = Keys(PREFIX)
    raws = [
        f[STREAM_FIELD]
        for k in range(SHARDS)
        for _, f in replies.entries(client.xrange(keys.klines(k)))
    ]
    return raws + list(stored(client, keys, parse_intervals("1m,7m")).values())


def _versions(dsn: str) -> dict[RowKey, str]:
    """Each row's version (xmin): a row rewritten, even to equal values, gets a new one."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT category, symbol, interval_label, "
            "(extract(epoch FROM open_time) * 1000)::bigint, xmin::text FROM candles"
        ).fetchall()
    return {(c, s, label, int(ms)): version for c, s, label, ms, version in rows}


def test_backfill_copies_the_store_and_the_streams_once_and_keeps_a_higher_revision(
    redis_url: str, pg_dsn: str
) -> None:
    """Series longer than the store's depth, with revisions; then the candle streams are trimmed,
    so the oldest candles are only in the store (a 7m series, not configured, among them), and
    the store's trimmed ones only in the streams. The table gets the latest revision of each."""
    client = redis.Redis.from_url(redis_url)
    raws: list[bytes] = []
    for n in range(150):
        for symbol in ("BTCUSDT", "ETHUSDT", "XRPUSDT"):
            raws.append(candle(symbol, T0 + 60_000 * n, close=f"{n}.{n}1"))
            if n % 5 == 2:
                raws.append(candle(symbol, T0 + 60_000 * (n - 1), revision=1, close=f"{n}.9"))
        if n % 7 == 0:
            raws.append(candle("BTCUSDT", T0 + 420_000 * n, label="7m", interval_ms=420_000))
    _write(client, raws)
    keys = Keys(PREFIX)
    for shard in range(SHARDS):
        client.xtrim(keys.klines(shard), maxlen=100, approximate=False)
    held = _held(client)
    want = expected_rows(held)
    assert len(want) < len(expected_rows(raws))  # Redis no longer holds the oldest
    store_only = set(want) - set(expected_rows(_held(client)[: SHARDS * 100]))
    assert store_only  # some candles only the store still holds
    series = len(client.keys(f"{PREFIX}:*:hist:*"))

    first = _backfill(redis_url, pg_dsn)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == (
        f"backfill-db: {len(held)} candles from {series} series of the history store and "
        f"{SHARDS} candle streams; {len(want)} rows written into candles (new, or at a higher "
        "revision)"
    )
    assert table_rows(pg_dsn) == want

    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # a newer revision already stored
        conn.execute("UPDATE candles SET revision = 9, close = 9.9 WHERE symbol = 'ETHUSDT'")
    before = _versions(pg_dsn)
    again = _backfill(redis_url, pg_dsn)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().endswith("; 0 rows written into candles (new, or at a higher "
                                         "revision)")  # fmt: skip
    assert _versions(pg_dsn) == before  # no row rewritten
    rows = table_rows(pg_dsn)
    assert {row[4] for key, row in rows.items() if key[1] == "ETHUSDT"} == {"9.9"}
    assert {k: v for k, v in rows.items() if k[1] != "ETHUSDT"} == {
        k: v for k, v in want.items() if k[1] != "ETHUSDT"
    }
    client.close()


def test_backfill_of_the_streams_alone_counts_what_it_read(redis_url: str, pg_dsn: str) -> None:
    """Candles in the candle streams only (no store). The revision 5 of one candle comes in a
    later transaction than its revision 1: that row is written twice, and counted so."""
    raws = [candle(f"S{i % 9}USDT", T0 + 60_000 * i, revision=i % 2) for i in range(12_000)]
    raws += [candle("S1USDT", T0 + 60_000, revision=5, close="5.5"),
             candle("S1USDT", T0 + 60_000, revision=4, close="4.4")]  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    xadd_candles(client, raws, SHARDS)
    done = _backfill(redis_url, pg_dsn)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "backfill-db: 12002 candles from 0 series of the history store and 2 candle streams; "
        "12001 rows written into candles (new, or at a higher revision)"
    )
    assert table_rows(pg_dsn) == expected_rows(raws)
    client.close()


def test_backfill_without_a_database_says_so_in_one_line(redis_url: str) -> None:
    done = _backfill(redis_url, "")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: STREAMER_POSTGRES_DSN is empty; set the database to fill"
    )
