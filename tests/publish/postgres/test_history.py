"""`read_range`: one series in a time range, back as the candle JSON that went in."""

from __future__ import annotations

import datetime

import msgspec
import psycopg
import pytest

from publish.postgres.history import read_range
from publish.postgres.rows import Rows
from publish.postgres.schema import NUMBERS, Tables, create_table_sql, ensure_tables
from publish.postgres.writer import prepare_session, upsert_rows
from tests.publish.postgres.helpers import candle
from tests.support.procs import ROOT

pytestmark = pytest.mark.postgres
TABLES = Tables(None, "candles")
T0 = 1_786_310_820_000


async def test_a_series_range_comes_back_oldest_first_as_the_candles_written(pg_dsn: str) -> None:
    series = [candle("BTCUSDT", T0 + 60_000 * i, close=f"6511{i}.{i}0") for i in range(10)]
    newer = candle("BTCUSDT", T0 + 60_000 * 3, revision=1, close="1E-8")
    others = [candle("ETHUSDT", T0), candle("BTCUSDT", T0, label="5m", interval_ms=300_000),
              candle("BTCUSDT", T0, category="spot")]  # fmt: skip
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await ensure_tables(conn, TABLES)
        await prepare_session(conn, TABLES)
        await upsert_rows(conn, TABLES, Rows().extend([*series, newer, *others]))
        got = await read_range(
            conn, TABLES, category="linear", symbol="BTCUSDT", interval_label="1m",
            start_ms=T0 + 60_000 * 2, end_ms=T0 + 60_000 * 6,
        )  # fmt: skip
        page = await read_range(
            conn, TABLES, category="linear", symbol="BTCUSDT", interval_label="1m",
            start_ms=0, end_ms=T0 * 2, limit=3,
        )  # fmt: skip
    want = [*series[2:3], newer.replace(b"1E-8", b"0.00000001"), *series[4:7]]
    assert got == want  # byte for byte: field order, digits, flags
    assert [msgspec.json.decode(raw)["timestamp"] for raw in page] == [
        T0 + 60_000 * i for i in (7, 8, 9)
    ]


def test_the_docs_query_gives_the_last_200_one_minute_candles_oldest_first(
    pg_dsn: str,
) -> None:
    page = (ROOT / "docs" / "pipeline.md").read_text()
    section = page[page.index("### PostgreSQL (the `postgres` consumer)") :]
    query = section.split("```sql\n", 1)[1].split("```", 1)[0]
    raws = [candle("BTCUSDT", T0 + 60_000 * i) for i in range(300)]
    raws += [candle("BTCUSDT", T0, label="5m", interval_ms=300_000), candle("ETHUSDT", T0 * 2)]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(create_table_sql(TABLES))
        with conn.cursor().copy(
            "COPY candles (category, symbol, interval_label, open_time, interval_ms, open, high, "
            "low, close, volume, turnover, buy_volume, sell_volume, trade_count, revision, gap, "
            "source) FROM STDIN"
        ) as copy:
            for raw in raws:
                c = msgspec.json.decode(raw)
                moment = datetime.datetime.fromtimestamp(c["timestamp"] / 1000, datetime.UTC)
                copy.write_row([c["category"], c["symbol"], c["interval_label"], moment,
                                c["interval"], *(str(c[n]) for n in NUMBERS), c["trade_count"],
                                c["revision"], c["gap"], c["source"]])  # fmt: skip
        rows = conn.execute(query).fetchall()
    assert [int(r[0].timestamp() * 1000) for r in rows] == [
        T0 + 60_000 * i for i in range(100, 300)
    ]
