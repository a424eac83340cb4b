"""The candle table and the consumer's positions table: created when missing, checked when not.

One row per (category, symbol, interval_label, open_time); the primary key on those columns is
both the upsert's conflict target and the index that serves "one series, a time range" (its
leading columns are the series, its last the time). Text columns use the "C" collation: symbols
are ASCII, and byte comparison makes the key cheaper to maintain than a locale's rules.
With the TimescaleDB extension the table becomes a hypertable on `open_time`.

`<table>_positions` holds, per candle stream, the last entry id whose candles are in the table;
it is updated in the same transaction as the rows (`writer.py`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import psycopg
from psycopg import sql

from common.errors import ConfigError

log = logging.getLogger(__name__)

KEY = ("category", "symbol", "interval_label", "open_time")
NUMBERS = ("open", "high", "low", "close", "volume", "turnover", "buy_volume", "sell_volume")
# column -> the types it may have (format_type's spelling), the first being what we create.
COLUMNS: dict[str, tuple[str, ...]] = {
    "category": ("text",),
    "symbol": ("text",),
    "interval_label": ("text",),
    "open_time": ("timestamp with time zone",),
    "interval_ms": ("bigint",),
    **{name: ("numeric",) for name in NUMBERS},
    "trade_count": ("bigint",),
    "revision": ("integer", "bigint"),
    "gap": ("boolean",),
    "source": ("text",),
}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,52}$")


@dataclass(frozen=True)
class Tables:
    """The candle table (`schema.name` or `name`), its positions table, and its staging table."""

    schema: str | None
    name: str

    @classmethod
    def parse(cls, text: str) -> Tables:
        parts = text.split(".")
        if len(parts) > 2 or not all(_NAME.match(part) for part in parts):
            raise ConfigError(
                f"STREAMER_POSTGRES_TABLE: {text!r} is not a table name; allowed: 'name' or "
                "'schema.name', each a letter or '_' then up to 52 letters, digits or '_'"
            )
        return cls(parts[0], parts[1]) if len(parts) == 2 else cls(None, parts[0])

    def _ident(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.schema, name) if self.schema else sql.Identifier(name)

    @property
    def text(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name

    @property
    def candles(self) -> sql.Identifier:
        return self._ident(self.name)

    @property
    def positions(self) -> sql.Identifier:
        return self._ident(f"{self.name}_positions")

    @property
    def staging(self) -> sql.Identifier:
        """A temporary table of the session (COPY lands here, the upsert reads it)."""
        return sql.Identifier(f"{self.name}_incoming")


def create_table_sql(tables: Tables) -> sql.Composed:
    columns = [
        sql.SQL("{} {}{} NOT NULL").format(
            sql.Identifier(name),
            sql.SQL(types[0]),
            sql.SQL(' COLLATE "C"' if types[0] == "text" else ""),
        )
        for name, types in COLUMNS.items()
    ]
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))").format(
        tables.candles, sql.SQL(", ").join(columns), sql.SQL(", ").join(map(sql.Identifier, KEY))
    )


def create_positions_sql(tables: Tables) -> sql.Composed:
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} (stream text PRIMARY KEY, entry_id text NOT NULL, "
        "updated_at timestamptz NOT NULL DEFAULT now())"
    ).format(tables.positions)


def create_staging_sql(tables: Tables) -> sql.Composed:
    columns = [
        sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(types[0]))
        for name, types in COLUMNS.items()
    ]
    return sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS").format(
        tables.staging, sql.SQL(", ").join(columns)
    )


async def ensure_tables(conn: psycopg.AsyncConnection[tuple[object, ...]], tables: Tables) -> str:
    """Create what is missing (one replica at a time), refuse a table that does not fit.

    Returns how the table is stored ("TimescaleDB hypertable" or "plain table"), for the log.
    Raises ConfigError with one line naming every column that does not fit.
    """
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"ddl:{tables.text}"]
        )
        exists = await (await conn.execute("SELECT to_regclass(%s)", [tables.text])).fetchone()
        if exists is None or exists[0] is None:
            await conn.execute(create_table_sql(tables))
            if await _timescale(conn):
                await conn.execute(
                    "SELECT create_hypertable(%s, 'open_time', if_not_exists => TRUE)",
                    [tables.text],
                )
        problems = await _misfits(conn, tables)
        if problems:
            raise ConfigError(
                f"STREAMER_POSTGRES_TABLE: table {tables.text} does not fit: " + "; ".join(problems)
            )
        await conn.execute(create_positions_sql(tables))
        return await _storage(conn, tables)


async def _timescale(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> bool:
    """True when TimescaleDB is there or can be added (it must be preloaded by the server)."""
    cur = await conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
    if await cur.fetchone():
        return True
    cur = await conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
    if not await cur.fetchone():
        return False
    try:
        async with conn.transaction():
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.Error as exc:
        log.info("TimescaleDB is available but could not be enabled (%s): plain table", exc)
        return False
    return True


async def _storage(conn: psycopg.AsyncConnection[tuple[object, ...]], tables: Tables) -> str:
    cur = await conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
    if await cur.fetchone():
        cur = await conn.execute(
            "SELECT 1 FROM timescaledb_information.hypertables "
            "WHERE format('%%I.%%I', hypertable_schema, hypertable_name)::regclass = %s::regclass",
            [tables.text],
        )
        if await cur.fetchone():
            return "TimescaleDB hypertable"
    return "plain table"


async def _misfits(conn: psycopg.AsyncConnection[tuple[object, ...]], tables: Tables) -> list[str]:
    """What stops the upsert from working on this table, each said once."""
    cur = await conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod), attnotnull, atthasdef "
        "FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        [tables.text],
    )
    found = {str(name): (str(kind), bool(not_null), bool(default)) for name, kind, not_null, default
             in await cur.fetchall()}  # fmt: skip
    problems = [f"missing column {name} ({types[0]})" for name, types in COLUMNS.items()
                if name not in found]  # fmt: skip
    problems += [
        f"column {name} is {found[name][0]} (want {' or '.join(types)})"
        for name, types in COLUMNS.items()
        if name in found and found[name][0] not in types
    ]
    problems += [
        f"column {name} is NOT NULL without a default (this consumer does not write it)"
        for name, (_, not_null, default) in found.items()
        if name not in COLUMNS and not_null and not default
    ]
    if not problems and not await _has_key(conn, tables):
        problems.append(f"no unique index on ({', '.join(KEY)})")
    return problems


async def _has_key(conn: psycopg.AsyncConnection[tuple[object, ...]], tables: Tables) -> bool:
    cur = await conn.execute(
        "SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_index i "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = %s::regclass AND i.indisunique AND i.indpred IS NULL "
        "GROUP BY i.indexrelid",
        [tables.text],
    )
    wanted = sorted(KEY)
    return any(row[0] == wanted for row in await cur.fetchall())
