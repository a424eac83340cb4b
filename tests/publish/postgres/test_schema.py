"""The table is created with its key when missing, and a table that does not fit is refused
with one line that names every problem."""

from __future__ import annotations

import psycopg
import pytest

from common.errors import ConfigError
from publish.postgres.schema import Tables, ensure_tables

pytestmark = pytest.mark.postgres


async def _ensure(dsn: str, tables: Tables) -> str:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        return await ensure_tables(conn, tables)


async def test_created_when_missing_with_a_key_that_serves_one_series_in_a_time_range(
    pg_dsn: str,
) -> None:
    assert await _ensure(pg_dsn, Tables(None, "candles")) == "plain table"
    assert await _ensure(pg_dsn, Tables(None, "candles")) == "plain table"  # idempotent
    with psycopg.connect(pg_dsn) as conn:
        columns: dict[str, str] = dict(conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'candles'"
        ).fetchall())  # fmt: skip
        key = conn.execute(
            "SELECT array_agg(a.attname::text ORDER BY k.n) FROM pg_index i "
            "CROSS JOIN unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indrelid = 'candles'::regclass AND i.indisprimary"
        ).fetchone()
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(row[0] for row in conn.execute(
            "EXPLAIN SELECT * FROM candles WHERE category = 'linear' AND symbol = 'BTCUSDT' "
            "AND interval_label = '1m' AND open_time >= now() - interval '1 day' "
            "ORDER BY open_time DESC LIMIT 200"
        ).fetchall())  # fmt: skip
        assert conn.execute("SELECT to_regclass('candles_positions')").fetchone() == (
            "candles_positions",
        )
    assert columns["open_time"] == "timestamp with time zone"
    assert columns["interval_ms"] == "bigint"
    assert {columns[n] for n in ("open", "high", "low", "close", "volume", "turnover",
                                 "buy_volume", "sell_volume")} == {"numeric"}  # fmt: skip
    assert (columns["trade_count"], columns["revision"], columns["gap"], columns["source"]) == (
        "bigint", "integer", "boolean", "text",
    )  # fmt: skip
    assert key == (["category", "symbol", "interval_label", "open_time"],)
    assert "Index Scan Backward using candles_pkey" in plan


async def test_a_schema_qualified_name_is_used_as_given(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA market")
    await _ensure(pg_dsn, Tables("market", "klines"))
    with psycopg.connect(pg_dsn) as conn:
        found = conn.execute(
            "SELECT to_regclass('market.klines'), to_regclass('market.klines_positions')"
        ).fetchone()
    assert found == ("market.klines", "market.klines_positions")


async def test_a_table_whose_columns_do_not_fit_is_refused_in_one_line(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE candles (category text, symbol text, interval_label text, "
            "open_time timestamptz, interval_ms bigint, open float8, high numeric, low numeric, "
            "close numeric, volume numeric, turnover numeric, sell_volume numeric, "
            "trade_count bigint, revision int, gap boolean, source text, note text NOT NULL)"
        )
    with pytest.raises(ConfigError) as caught:
        await _ensure(pg_dsn, Tables(None, "candles"))
    message = str(caught.value)
    assert "\n" not in message
    assert message == (
        "STREAMER_POSTGRES_TABLE: table candles does not fit: missing column buy_volume "
        "(numeric); column open is double precision (want numeric); column note is NOT NULL "
        "without a default (this consumer does not write it)"
    )


async def test_a_table_without_the_unique_key_is_refused(pg_dsn: str) -> None:
    await _ensure(pg_dsn, Tables(None, "candles"))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE candles DROP CONSTRAINT candles_pkey")
    with pytest.raises(ConfigError, match=r"no unique index on \(category, symbol, "):
        await _ensure(pg_dsn, Tables(None, "candles"))


def test_table_names_are_checked() -> None:
    assert Tables.parse("public.candles") == Tables("public", "candles")
    for bad in ("1candles", "a.b.c", 'candles"; drop', "x" * 60):
        with pytest.raises(ConfigError, match="STREAMER_POSTGRES_TABLE"):
            Tables.parse(bad)
