"""Rows and positions in one transaction, on a real PostgreSQL: the highest revision wins, a
repeated or late candle changes nothing, a part read after a stale position is refused."""

from __future__ import annotations

import psycopg
import pytest

from publish.postgres.rows import Rows
from publish.postgres.schema import Tables, ensure_tables
from publish.postgres.writer import Part, prepare_session, upsert_rows, write_parts
from tests.publish.postgres.helpers import candle, expected_rows, table_rows

pytestmark = pytest.mark.postgres
TABLES = Tables(None, "candles")
S0, S1 = "streamer:{0}:klines", "streamer:{1}:klines"


async def _session(dsn: str) -> psycopg.AsyncConnection[tuple[object, ...]]:
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    await ensure_tables(conn, TABLES)
    await prepare_session(conn, TABLES)
    await conn.execute(
        "INSERT INTO candles_positions (stream, entry_id) VALUES (%s, '0-0'), (%s, '0-0')",
        [S0, S1],
    )
    return conn


def _positions(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT stream, entry_id FROM candles_positions").fetchall())


async def test_rows_and_positions_commit_together_and_the_highest_revision_wins(
    pg_dsn: str,
) -> None:
    conn = await _session(pg_dsn)
    first = [candle("BTCUSDT", 60_000 * i, close=f"{i}.5") for i in range(1, 6)]
    second = [
        candle("BTCUSDT", 60_000, revision=2, close="9.25"),
        candle("BTCUSDT", 60_000, revision=1, close="8"),  # older, same batch: loses
        candle("ETHUSDT", 60_000, gap=True),
    ]
    late = [candle("BTCUSDT", 60_000, revision=1, close="7")]  # older, later batch: ignored
    stale = await write_parts(conn, TABLES, [Part(S0, "0-0", "5-0", first)])
    assert stale == []
    stale = await write_parts(
        conn, TABLES,
        [Part(S0, "5-0", "7-0", second[:2]),
         Part(S1, "0-0", "3-0", second[2:])],
    )  # fmt: skip
    assert stale == []
    assert await write_parts(conn, TABLES, [Part(S0, "7-0", "8-0", late)]) == []
    assert table_rows(pg_dsn) == expected_rows(first + second + late)
    assert table_rows(pg_dsn)[("linear", "BTCUSDT", "1m", 60_000)][4] == "9.25"
    assert _positions(pg_dsn) == {S0: "8-0", S1: "3-0"}
    await conn.close()


async def test_a_part_read_after_a_stale_position_is_refused_and_writes_nothing(
    pg_dsn: str,
) -> None:
    conn = await _session(pg_dsn)
    kept = [candle("BTCUSDT", 60_000)]
    await write_parts(conn, TABLES, [Part(S0, "0-0", "4-0", kept)])
    again = Part(S0, "0-0", "4-0", [candle("BTCUSDT", 60_000, revision=3)])
    other = Part(S1, "0-0", "2-0", [candle("XRPUSDT", 60_000)])
    stale = await write_parts(conn, TABLES, [again, other])
    assert stale == [again]
    assert table_rows(pg_dsn) == expected_rows([*kept, candle("XRPUSDT", 60_000)])
    assert _positions(pg_dsn) == {S0: "4-0", S1: "2-0"}
    await conn.close()


async def test_rows_without_a_position_are_upserted_idempotently(pg_dsn: str) -> None:
    conn = await _session(pg_dsn)
    raws = [candle("BTCUSDT", 60_000 * i, revision=i % 3) for i in range(50)]
    for _ in range(2):
        await upsert_rows(conn, TABLES, Rows().extend(raws))
    assert table_rows(pg_dsn) == expected_rows(raws)
    assert _positions(pg_dsn) == {S0: "0-0", S1: "0-0"}
    await conn.close()


async def test_revisions_beside_their_candle_and_a_row_written_twice(pg_dsn: str) -> None:
    """Revision-0 candles are copied straight in, revisions upserted in the same transaction:
    a candle and two revisions of it in one part end at the highest; a revision whose candle
    the table never got is a new row. A part meeting a row already there goes through the
    upsert whole, its new rows included."""
    conn = await _session(pg_dsn)
    batch = [
        candle("BTCUSDT", 60_000),
        candle("BTCUSDT", 60_000, revision=2, close="2.5"),
        candle("BTCUSDT", 120_000),
        candle("BTCUSDT", 60_000, revision=1, close="1.5"),  # late: loses to revision 2
        candle("ETHUSDT", 60_000, revision=1, close="3.5"),
    ]
    assert await write_parts(conn, TABLES, [Part(S0, "0-0", "5-0", batch)]) == []
    again = [candle("BTCUSDT", 120_000), candle("BTCUSDT", 180_000, close="4.5")]
    assert await write_parts(conn, TABLES, [Part(S0, "5-0", "7-0", again)]) == []
    rows = table_rows(pg_dsn)
    assert rows == expected_rows(batch + again) and len(rows) == 4
    assert rows[("linear", "BTCUSDT", "1m", 60_000)][4] == "2.5"
    assert _positions(pg_dsn) == {S0: "7-0", S1: "0-0"}
    await conn.close()
