"""Reading a series back from the table, as the candle JSON the streams carry (docs/formats.md
"The candle").

For the history endpoints (`/v5/market/kline`, `/candles`, WebSocket `since`): ranges older than
the Redis store holds come from here (`PostgresArchive`, the archive of publish/history.py). The
primary key (series columns, then open time) serves the query as one index range scan, newest or
oldest first.
"""

from __future__ import annotations

import asyncio
import time
from typing import cast

import psycopg
from psycopg import sql

from common.history import member_of
from common.intervals import Interval
from publish.history import ArchiveUnavailable, Entry
from publish.postgres.leases import connect
from publish.postgres.rows import candle_json
from publish.postgres.schema import NUMBERS, Tables
from publish.postgres.writer import Connection

MAX_LIMIT = 100_000
MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: what a wider bound could match
READ_TIMEOUT_S = 10.0
"""A read (connection included) that takes longer is given up: the store answers alone."""
RETRY_S = 2.0
"""After a failed read, the next ones give up at once for this long (no wait per request while
the database is away)."""
CONNECTIONS = 4
_Row = tuple[int, int, str, str, str, str, str, str, str, str, int, int, bool, str]


async def read_range(
    conn: Connection,
    tables: Tables,
    *,
    category: str,
    symbol: str,
    interval_label: str,
    start_ms: int | None,
    end_ms: int | None,
    limit: int = 1000,
    from_start: bool = False,
) -> list[bytes]:
    """Candles of one series with `start_ms <= open time <= end_ms` (ms since the epoch, as
    Bybit reads `start`/`end`; None: unbounded), oldest first; when more than `limit` match, the
    newest `limit` of them (Bybit's rule for a page), or with `from_start` the oldest."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit {limit}: allowed 1..{MAX_LIMIT}")
    bounds: list[sql.Composable] = []
    values: list[str | int] = [category, symbol, interval_label]
    for ms, test in ((start_ms, ">="), (end_ms, "<=")):
        if ms is not None:
            bounds.append(sql.SQL(
                f"AND open_time {test} timestamptz 'epoch' + %s * interval '1 millisecond' "
            ))  # fmt: skip
            values.append(min(max(ms, 0), MAX_MS))
    inner = sql.SQL(
        "SELECT (extract(epoch FROM open_time) * 1000)::bigint AS open_ms, "
        "interval_ms, {numbers}, trade_count, revision, gap, source FROM {table} "
        "WHERE category = %s AND symbol = %s AND interval_label = %s {bounds}"
        "ORDER BY open_time {order} LIMIT %s"
    ).format(
        numbers=sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(n)) for n in NUMBERS),
        table=tables.candles,
        bounds=sql.Composed(bounds),
        order=sql.SQL("ASC" if from_start else "DESC"),
    )
    query = (
        inner
        if from_start
        else sql.SQL("SELECT * FROM ({}) AS page ORDER BY open_ms").format(inner)
    )
    cur = await conn.execute(query, [*values, limit], binary=False)
    return [
        candle_json(category, symbol, interval_label, row[0], row[1], row[2:10], *row[10:])
        for row in cast(list[_Row], await cur.fetchall())
    ]


class PostgresArchive:
    """The table as the history's archive (publish/history.py `Archive`): a few connections of
    its own, opened when first needed and dropped after any failure."""

    def __init__(
        self, dsn: str, tables: Tables, category: str, *, connect_timeout_s: float
    ) -> None:
        self._dsn = dsn
        self._tables = tables
        self._category = category
        self._connect_timeout_s = connect_timeout_s
        self._idle: list[Connection] = []
        self._slots = asyncio.Semaphore(CONNECTIONS)
        self._retry_at = 0.0
        self._problem = ""

    async def entries(
        self,
        symbol: str,
        interval: Interval,
        start_ms: int | None,
        end_ms: int | None,
        limit: int,
        *,
        from_start: bool,
    ) -> list[Entry]:
        if time.monotonic() < self._retry_at:
            raise ArchiveUnavailable(self._problem)
        async with self._slots:
            conn = self._idle.pop() if self._idle else None
            done = False
            try:
                async with asyncio.timeout(READ_TIMEOUT_S):
                    if conn is None:
                        conn = await connect(self._dsn, self._connect_timeout_s)
                    raws = await read_range(
                        conn, self._tables, category=self._category, symbol=symbol,
                        interval_label=interval.label, start_ms=start_ms, end_ms=end_ms,
                        limit=min(limit, MAX_LIMIT), from_start=from_start,
                    )  # fmt: skip
                done = True
            except (psycopg.Error, OSError, TimeoutError) as exc:
                self._retry_at = time.monotonic() + RETRY_S
                self._problem = f"PostgreSQL: {_short(exc)}"
                raise ArchiveUnavailable(self._problem) from None
            finally:
                if conn is not None and done:
                    self._idle.append(conn)
                elif conn is not None:
                    await conn.close()
        return [(_open_ms(raw), member_of(raw)) for raw in raws]

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()


def _open_ms(raw: bytes) -> int:
    at = raw.index(b'"timestamp":') + 12
    return int(raw[at : raw.index(b",", at)])


def _short(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {READ_TIMEOUT_S:.0f} s"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
