"""`python -m ops backfill-db`: every candle Redis holds, into the PostgreSQL table.

For a fresh database next to a pipeline that has run for a while, or to fill a hole by hand. It
reads both places Redis keeps candles: the history store (each series' newest
STREAMER_HISTORY_CANDLES, common/history.py, often reaching further back than the candle streams
for a quiet series or a long interval) and every shard's candle stream (trimmed by length,
further back for a busy short interval, with every revision). Every candle is upserted by the
consumer's own rules: the highest revision wins, and a row already there at the same or a higher
revision is left as it is. So running it twice, or while the `postgres` consumer runs, changes
nothing the second time (the output counts the rows written). It does not touch the consumer's
positions.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast

from common.errors import ConfigError
from common.history import SeriesHead
from common.intervals import Interval
from common.keys import Keys
from common.redisconn import AnyRedis, connect
from common.settings import PublishSettings
from common.wire import STREAM_FIELD

if TYPE_CHECKING:
    from publish.postgres.schema import Tables
    from publish.postgres.writer import Connection

READ_COUNT = 5000
"""Candles per Redis read, and about as many per transaction."""


async def run_backfill(settings: PublishSettings) -> int:
    if not settings.postgres_dsn:
        print("error: STREAMER_POSTGRES_DSN is empty; set the database to fill", file=sys.stderr)
        return 2
    try:
        from publish.postgres.leases import connect as pg_connect
        from publish.postgres.schema import Tables, ensure_tables
        from publish.postgres.writer import prepare_session
    except ImportError as exc:
        print(f"error: {exc}; pip install 'bybit-klines-pipeline[postgres]'", file=sys.stderr)
        return 2
    import psycopg

    tables = Tables.parse(settings.postgres_table)
    try:
        conn = await pg_connect(settings.postgres_dsn, settings.postgres_connect_timeout_s)
        await ensure_tables(conn, tables)
    except (psycopg.Error, ConfigError) as exc:
        print(f"error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    client = connect(settings)
    fill = _Fill(conn, tables)
    try:
        await prepare_session(conn, tables)
        series = await fill.all(_store(client, settings))
        streams = await fill.all(_streams(client, Keys(settings.redis_prefix), settings.shards))
    except psycopg.Error as exc:
        print(f"error: PostgreSQL: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    finally:
        await conn.close()
        await client.aclose()
    print(
        f"backfill-db: {fill.read} candles from {series} series of the history store and "
        f"{streams} candle streams; {fill.written} rows written into {tables.text} (new, or "
        "at a higher revision)"
    )
    return 0


Source = AsyncIterator[tuple[bool, list[bytes]]]
"""Pages of candles: (the first page of a new series or stream, its candles)."""


class _Fill:
    """Candles gathered into transactions of about READ_COUNT rows, upserted."""

    def __init__(self, conn: Connection, tables: Tables) -> None:
        self._conn = conn
        self._tables = tables
        self.read = 0
        self.written = 0

    async def all(self, source: Source) -> int:
        """Upsert every page of `source`; returns how many series or streams it had."""
        from publish.postgres.rows import Rows
        from publish.postgres.writer import upsert_rows

        rows, begun = Rows(), 0
        async for first, raws in source:
            begun += first
            rows.extend(raws)
            self.read += len(raws)
            if len(rows) >= READ_COUNT:
                self.written += await upsert_rows(self._conn, self._tables, rows)
                rows = Rows()
        self.written += await upsert_rows(self._conn, self._tables, rows)
        return begun


async def _store(client: AnyRedis, settings: PublishSettings) -> Source:
    """Every series of the history store, oldest candles first, READ_COUNT at a time."""
    keys = Keys(settings.redis_prefix)
    by_label = {i.label: i for i in settings.kline_intervals}
    pattern = keys.history_pattern()
    found = [raw.decode() if isinstance(raw, bytes) else str(raw)
             async for raw in client.scan_iter(match=pattern, count=1000)]  # fmt: skip
    for key in sorted(found):
        label, _, symbol = key.rsplit(":hist:", 1)[1].partition(":")
        interval = by_label.get(label) or _interval(label)
        if interval is None or not symbol:
            continue
        head, at = SeriesHead(symbol, interval), 0
        while members := await _members(client, key, at):
            yield at == 0, [head.candle(member) for member in members]
            at += len(members)


def _interval(label: str) -> Interval | None:
    """The interval of a label no longer configured (its series are still in the store)."""
    try:
        return Interval.parse(label)
    except ConfigError:
        return None


async def _streams(client: AnyRedis, keys: Keys, shards: int) -> Source:
    """Every shard's candle stream, oldest entries first, READ_COUNT at a time."""
    for shard in range(shards):
        after = "-"
        while entries := await _page(client, keys.klines(shard), after):
            yield after == "-", [f[STREAM_FIELD] for _, f in entries if STREAM_FIELD in f]
            after = "(" + entries[-1][0].decode()


async def _page(client: AnyRedis, stream: str, after: str) -> list[Any]:
    return cast(list[Any], await client.xrange(stream, min=after, count=READ_COUNT))


async def _members(client: AnyRedis, key: str, at: int) -> list[bytes]:
    return cast(list[bytes], await client.zrange(key, at, at + READ_COUNT - 1))
