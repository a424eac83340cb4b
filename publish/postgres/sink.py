"""The postgres consumer's work: check the table, hand out the reader, write each batch.

A batch is written in one transaction with the positions it covers (`writer.py`). A part that is
not written (the database is away, or the stored position moved on) is handed back to the reader
(`leases.py`), which reads that shard again from the stored position: nothing is skipped and
nothing counted twice. While PostgreSQL is away the reader reads nothing on, the health is red
and one line a minute says so (`outage.py`); the first batch that commits turns it green again.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import psycopg

from common.metrics import REGISTRY
from publish.batch import CandleBatch
from publish.postgres.leases import LeasedBatch, ShardLeases, connect
from publish.postgres.outage import Outage
from publish.postgres.rows import Rows
from publish.postgres.schema import Tables, ensure_tables
from publish.postgres.writer import Connection, Part, prepare_session, upsert_rows, write_parts

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from common.keys import Keys
    from common.settings import PublishSettings

log = logging.getLogger("publish.consumers.postgres")

WRITTEN = REGISTRY.counter(
    "publish_postgres_candles_total", "Candles committed to PostgreSQL (rows and positions)"
)
STALE = REGISTRY.counter(
    "publish_postgres_stale_parts_total",
    "Stream parts not written because the stored position had moved (read again instead)",
)
RETRY_AFTER_FAILURE_S = 1.0
DOWN = (psycopg.Error, OSError)


class Sink:
    def __init__(self, settings: PublishSettings) -> None:
        self.settings = settings
        self.tables = Tables.parse(settings.postgres_table)
        self.outage = Outage()
        self._conn: Connection | None = None
        self._leases: ShardLeases | None = None
        self._retry_at = 0.0
        self._opened_after = 0  # outage.failures when the connection was opened

    async def setup(self) -> None:
        """Create or check the table now if the database answers, so that a table that does not
        fit stops the start with one line (ConfigError); a database that is down is waited for."""
        try:
            storage = await ensure_tables(await self._connection(), self.tables)
        except DOWN as exc:
            self.outage.failed(exc)
            await self._close()
            return
        log.info("table %s ready (%s)", self.tables.text, storage)
        self.outage.ok()

    def reader(self, client: aioredis.Redis, keys: Keys, shards: int) -> ShardLeases:
        s = self.settings
        self._leases = ShardLeases(
            client, keys, shards, self.tables, s.postgres_dsn,
            batch=s.postgres_batch, connect_timeout_s=s.postgres_connect_timeout_s,
            outage=self.outage, cluster=s.redis_cluster,
        )  # fmt: skip
        self._leases.ensured = self.outage.up
        return self._leases

    async def write(self, batch: CandleBatch) -> None:
        if isinstance(batch, LeasedBatch):
            parts = self._parts(batch)
            if parts:
                await self._write(parts, Rows())
        elif batch.raws:  # candles from elsewhere (a user's call): rows, no position
            await self._write([], Rows().extend(batch.raws))

    def _parts(self, batch: LeasedBatch) -> list[Part]:
        """The batch's parts still worth writing: read in their shard's current epoch."""
        assert self._leases is not None
        epoch_of = self._leases.epoch_of
        return [part for shard, (epoch, part) in batch.parts.items() if epoch_of(shard) == epoch]

    async def _write(self, parts: list[Part], loose: Rows) -> None:
        if not self.outage.up and time.monotonic() < self._retry_at:
            self._read_again(parts)
            return
        try:
            conn = await self._connection()
            if parts:
                stale = await write_parts(conn, self.tables, parts)
            else:
                stale = []
                await upsert_rows(conn, self.tables, loose)
        except DOWN as exc:
            self.outage.failed(exc)
            self._retry_at = time.monotonic() + RETRY_AFTER_FAILURE_S
            await self._close()
            self._read_again(parts)
            return
        self.outage.ok()
        if stale:
            STALE.inc(len(stale))
            log.info(
                "%s moved on elsewhere: reading again from the stored position",
                ", ".join(part.stream for part in stale),
            )
            self._read_again(stale)
        if parts:
            WRITTEN.inc(sum(part.count for part in parts if all(part is not s for s in stale)))
        else:
            WRITTEN.inc(len(loose))

    def _read_again(self, parts: list[Part]) -> None:
        if self._leases is not None and parts:
            self._leases.invalidate([self._leases.shard_of(part.stream) for part in parts])

    async def _connection(self) -> Connection:
        """The write connection; a new one after any failure seen since it was opened (a
        database restart ends every session, and a dead one is only found out when used)."""
        if self._conn is not None and self._opened_after != self.outage.failures:
            await self._close()
        if self._conn is None or self._conn.closed:
            self._opened_after = self.outage.failures
            s = self.settings
            self._conn = await connect(s.postgres_dsn, s.postgres_connect_timeout_s)
            await prepare_session(self._conn, self.tables)
        return self._conn

    async def _close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    async def close(self) -> None:
        await self._close()
        if self._leases is not None:
            await self._leases.close()
