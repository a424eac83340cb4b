"""Which PostgreSQL driver for the postgres consumer: psycopg 3 or asyncpg, measured.

`pip install asyncpg` first (it is not a dependency), then `python -m bench.pg_drivers`.
Each way takes the same candle JSON, decodes it, and upserts it through the same staging table
and the same `INSERT ... ON CONFLICT` (`publish/postgres/writer.py`), in transactions of 2,000
candles, on one private PostgreSQL; best of 3 rounds, all ways in the same run: candles/s (wall
clock), and candles per CPU-second of this (the client) process, which is what the driver changes
(the server's work is the same COPY or statement for every way of one kind) and which a machine
busy with other work disturbs less than the wall clock.
"""

from __future__ import annotations

import asyncio
import datetime
import io
import sys
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import msgspec
import psycopg
from psycopg import sql

from bench.publish import make_candles
from publish.postgres.rows import Rows, _decoder
from publish.postgres.schema import COLUMNS, Tables, ensure_tables
from publish.postgres.writer import prepare_session, upsert_sql
from tests.support.pgproc import PostgresProcess

TABLES = Tables(None, "candles")
BATCH = 2000


def _tuples(raws: list[bytes], number: Callable[[msgspec.Raw], Any]) -> list[tuple[Any, ...]]:
    out = []
    for raw in raws:
        c = _decoder.decode(raw)
        out.append((
            c.category, c.symbol, c.interval_label,
            datetime.datetime.fromtimestamp(c.timestamp / 1000, datetime.UTC), c.interval,
            *(number(getattr(c, n)) for n in ("open", "high", "low", "close", "volume",
                                              "turnover", "buy_volume", "sell_volume")),
            c.trade_count, c.revision, c.gap, c.source,
        ))  # fmt: skip
    return out


def _text(value: msgspec.Raw) -> str:
    return bytes(value).decode()


def _decimal(value: msgspec.Raw) -> Decimal:
    return Decimal(bytes(value).decode())


async def _psycopg(dsn: str, batches: list[list[bytes]], how: str) -> None:
    upsert = upsert_sql(TABLES)
    copy_sql = sql.SQL("COPY {} FROM STDIN").format(TABLES.staging)
    insert = sql.SQL("INSERT INTO {} VALUES ({})").format(
        TABLES.staging, sql.SQL(", ").join(sql.Placeholder() * len(COLUMNS))
    )
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await prepare_session(conn, TABLES)
        for raws in batches:
            async with conn.transaction():
                if how == "executemany":
                    await conn.cursor().executemany(insert, _tuples(raws, _text))
                else:
                    async with conn.cursor().copy(copy_sql) as copy:
                        if how == "copy text":
                            await copy.write(Rows().extend(raws).copy_text())
                        else:
                            for row in _tuples(raws, _text):
                                await copy.write_row(row)
                await conn.execute(upsert)


async def _asyncpg(dsn: str, batches: list[list[bytes]], how: str) -> None:
    import asyncpg  # type: ignore[import-not-found]  # measured only where installed

    conn = await asyncpg.connect(dsn)
    upsert = upsert_sql(TABLES).as_string()
    await conn.execute(
        "CREATE TEMP TABLE candles_incoming (LIKE candles_model) ON COMMIT DELETE ROWS"
    )
    for raws in batches:
        async with conn.transaction():
            if how == "copy records":
                await conn.copy_records_to_table(
                    "candles_incoming", records=_tuples(raws, _decimal)
                )
            elif how == "copy text":
                data = io.BytesIO(Rows().extend(raws).copy_text())
                await conn.copy_to_table("candles_incoming", source=data, format="text")
            else:
                columns = list(zip(*_tuples(raws, _decimal), strict=True))
                await conn.execute(
                    "INSERT INTO candles_incoming SELECT * FROM unnest($1::text[], $2::text[], "
                    "$3::text[], $4::timestamptz[], $5::int8[], $6::numeric[], $7::numeric[], "
                    "$8::numeric[], $9::numeric[], $10::numeric[], $11::numeric[], "
                    "$12::numeric[], $13::numeric[], $14::int8[], $15::int4[], $16::bool[], "
                    "$17::text[])",
                    *map(list, columns),
                )
            await conn.execute(upsert)
    await conn.close()


WAYS: list[tuple[str, Callable[[str, list[list[bytes]], str], Awaitable[None]], str]] = [
    ("psycopg 3.3: COPY (text, rows joined as bytes) + upsert", _psycopg, "copy text"),
    ("psycopg 3.3: COPY write_row() + upsert", _psycopg, "write_row"),
    ("psycopg 3.3: executemany (pipeline) + upsert", _psycopg, "executemany"),
    ("asyncpg: copy_records_to_table (binary, Decimal) + upsert", _asyncpg, "copy records"),
    ("asyncpg: copy_to_table (text, rows joined as bytes) + upsert", _asyncpg, "copy text"),
    ("asyncpg: INSERT ... SELECT unnest(arrays) + upsert", _asyncpg, "unnest"),
]


async def main(count: int) -> None:
    raws = make_candles(count, 1_786_000_000_000)
    batches = [raws[i : i + BATCH] for i in range(0, count, BATCH)]
    server = PostgresProcess().start()
    try:
        dsn = server.create_database("drivers")
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await ensure_tables(conn, TABLES)
            await prepare_session(conn, TABLES)
            await conn.execute("CREATE TABLE candles_model (LIKE candles_incoming)")
        best: dict[str, tuple[float, float]] = {}
        for _ in range(3):
            for name, way, how in WAYS:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("TRUNCATE candles")
                start, cpu = time.perf_counter(), time.process_time()
                await way(dsn, batches, how)
                rate = count / (time.perf_counter() - start)
                per_cpu = count / (time.process_time() - cpu)
                held = best.get(name, (0.0, 0.0))
                best[name] = (max(held[0], rate), max(held[1], per_cpu))
        print("| way | candles/s (wall) | candles per CPU-second of the client |")
        print("|---|---:|---:|")
        for name, (rate, per_cpu) in best.items():
            print(f"| {name} | {rate:,.0f} | {per_cpu:,.0f} |")
    finally:
        server.destroy()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 60_000))
