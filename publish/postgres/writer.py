"""One transaction per batch: the rows, and the stream positions they cover.

Exactly once, by two rules checked inside the transaction:
- a stream's part of the batch is written only if the stored position is the one the part was
  read after (compare-and-set under `FOR UPDATE`): a part read by a writer that lost the shard,
  or read twice, is refused instead of being counted twice or moving the position back;
- a row changes only for a higher revision (`ON CONFLICT ... DO UPDATE ... WHERE
  excluded.revision > t.revision`), so an older revision arriving late never replaces a newer one
  and a repeated candle writes nothing.
Rows go in with COPY. Candles at revision 0 are new rows, almost always: they are copied straight
into the table, as their COPY lines were built (`Part.text`), which costs the server about what a
raw COPY does. Revisions (rare: a late trade's) replace a row: they go through a session-temporary
staging table and one INSERT ... SELECT ... ON CONFLICT, in the same transaction. When the
straight COPY meets a row already there or twice (a batch read again after a crash, a candle
written twice after a cold start) the transaction is rolled back and the whole batch, one row per
key at its highest revision (`Rows`), goes through the staging table and the upsert (see
docs/postgres.md, "Throughput").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from publish.postgres.rows import Rows, copy_lines
from publish.postgres.schema import COLUMNS, KEY, Tables, create_staging_sql

Connection = psycopg.AsyncConnection[tuple[object, ...]]


@dataclass
class Part:
    """The candles of one stream in a batch: read after `after`, up to and including `last`.
    Its COPY lines are built when it is made (in the reading task, so that the work overlaps
    the previous batch's transaction)."""

    stream: str
    after: str
    last: str
    raws: list[bytes]
    text: bytes = field(init=False, repr=False)  # COPY lines of the revision-0 candles
    revised: list[bytes] = field(init=False, repr=False)  # candles at a higher revision
    count: int = field(init=False)  # closed candles among `raws`

    def __post_init__(self) -> None:
        self.text, self.revised, self.count = copy_lines(self.raws)

    def rows(self) -> Rows:
        """One row per key, at its highest revision (for the upsert)."""
        return Rows().extend(self.raws)


def upsert_sql(tables: Tables) -> sql.Composed:
    updated = [name for name in COLUMNS if name not in KEY]
    return sql.SQL(
        "INSERT INTO {table} AS t ({columns}) SELECT {source} FROM {staging} "
        "ON CONFLICT ({key}) DO UPDATE SET {sets} WHERE excluded.revision > t.revision"
    ).format(
        table=tables.candles,
        columns=sql.SQL(", ").join(map(sql.Identifier, COLUMNS)),
        source=sql.SQL(", ").join(map(sql.Identifier, COLUMNS)),
        staging=tables.staging,
        key=sql.SQL(", ").join(map(sql.Identifier, KEY)),
        sets=sql.SQL(", ").join(
            sql.SQL("{0} = excluded.{0}").format(sql.Identifier(name)) for name in updated
        ),
    )


async def prepare_session(conn: Connection, tables: Tables) -> None:
    """The staging table of this session (temporary: gone with the connection)."""
    await conn.execute(create_staging_sql(tables))


async def copy_and_upsert(conn: Connection, tables: Tables, rows: Rows) -> int:
    """Inside the caller's transaction: stage the rows, upsert them, empty the staging table.
    Returns how many rows were written (new, or at a higher revision than the table held)."""
    if not len(rows):
        return 0
    copy_sql = sql.SQL("COPY {} FROM STDIN").format(tables.staging)
    async with conn.cursor().copy(copy_sql) as copy:
        await copy.write(rows.copy_text())
    cur = await conn.execute(upsert_sql(tables))
    return max(cur.rowcount, 0)


async def upsert_rows(conn: Connection, tables: Tables, rows: Rows) -> int:
    """Rows in their own transaction, no position (backfill, and candles read by others).
    Returns how many rows were written (`copy_and_upsert`)."""
    async with conn.transaction():
        return await copy_and_upsert(conn, tables, rows)


class _Moved(Exception):
    """Some positions had moved: roll the transaction back (its rows included)."""

    def __init__(self, moved: set[str]) -> None:
        self.moved = moved


def _positions_sql(tables: Tables, upsert: bool) -> sql.Composed:
    """One statement: move each stream's position from `after` to `last` (compare-and-set: a
    row locked by a concurrent writer is re-checked once that one commits), and upsert the staged
    rows if asked; the answer names the streams moved. One statement, one round trip."""
    rows = sql.SQL(", upserted AS ({})").format(upsert_sql(tables)) if upsert else sql.SQL("")
    return sql.SQL(
        "WITH moved AS (UPDATE {positions} AS p SET entry_id = v.last, updated_at = now() "
        "FROM unnest(%s::text[], %s::text[], %s::text[]) AS v(stream, after, last) "
        "WHERE p.stream = v.stream AND p.entry_id = v.after RETURNING p.stream){rows} "
        "SELECT coalesce(array_agg(stream), '{{}}') FROM moved"
    ).format(positions=tables.positions, rows=rows)


async def write_parts(conn: Connection, tables: Tables, parts: list[Part]) -> list[Part]:
    """Write the parts whose stream is still at `after`; return the others (not written)."""
    stale: list[Part] = []
    straight = True
    while parts:
        try:
            await _write_all(conn, tables, parts, straight)
            return stale
        except psycopg.errors.UniqueViolation:
            straight = False  # some rows are there already, or twice: through the upsert
        except _Moved as exc:
            stale += [part for part in parts if part.stream not in exc.moved]
            parts = [part for part in parts if part.stream in exc.moved]
    return stale


async def _write_all(conn: Connection, tables: Tables, parts: list[Part], straight: bool) -> None:
    """All the parts in one transaction, or none of them (raises _Moved or UniqueViolation)."""
    staged = Rows()
    if straight:
        text = b"".join(part.text for part in parts)
        for part in parts:
            staged.extend(part.revised)
    else:
        text = b""
        for part in parts:
            staged.merge(part.rows())
    async with conn.transaction():
        for target, lines in ((tables.candles, text), (tables.staging, staged.copy_text())):
            if lines:
                copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(
                    target, sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
                )
                async with conn.cursor().copy(copy_sql) as copy:
                    await copy.write(lines)
        cur = await conn.execute(
            _positions_sql(tables, upsert=bool(len(staged))),
            [[p.stream for p in parts], [p.after for p in parts], [p.last for p in parts]],
        )
        found = await cur.fetchone()
        moved = set(found[0]) if found else set()  # type: ignore[call-overload]
        if len(moved) != len(parts):
            raise _Moved(moved)
