"""`postgres`: every closed candle into a PostgreSQL table, exactly once.

STREAMER_POSTGRES_DSN (a libpq URL) names the database, STREAMER_POSTGRES_TABLE the table
(created with its index when missing, see `publish/postgres/schema.py`). The consumer reads the
candle streams through its own reader (`publish/postgres/leases.py`: per-shard leases, positions
kept in the database) and writes each batch in one transaction with the positions it covers
(`publish/postgres/writer.py`), so `kill -9`, a database restart and several replicas leave the
table equal to the candle streams. The work is in `publish/postgres/sink.py`; this adapter keeps
psycopg an optional dependency (the `postgres` extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from publish.batch import CandleBatch
from publish.consumers.base import BaseConsumer

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from common.keys import Keys
    from publish.postgres.sink import Sink
    from publish.reader import StreamReader


class PostgresConsumer(BaseConsumer):
    def __init__(self, name: str = "postgres") -> None:
        super().__init__(name)
        self._sink: Sink | None = None

    def validate(self) -> None:
        if self.settings is None:
            raise ValueError("no settings given")
        if not self.settings.postgres_dsn:
            raise ValueError(
                "STREAMER_POSTGRES_DSN is empty; set a libpq URL, "
                "e.g. postgresql://user:password@127.0.0.1:5432/klines"
            )
        try:
            from publish.postgres.sink import Sink
        except ImportError as exc:
            raise ValueError(
                f"{exc}; install the driver: pip install 'bybit-klines-pipeline[postgres]'"
            ) from None
        self._sink = Sink(self.settings)

    async def setup(self) -> None:
        assert self._sink is not None
        await self._sink.setup()

    def stream_reader(
        self, client: aioredis.Redis, keys: Keys, shards: int, replica: str
    ) -> StreamReader:
        assert self._sink is not None
        return self._sink.reader(client, keys, shards)

    def healthy(self) -> bool:
        return self._sink is None or self._sink.outage.up

    async def consume(self, data: list[dict[str, Any]]) -> None:
        await self.consume_batch(CandleBatch([msgspec.json.encode(c) for c in data], {}))

    async def consume_batch(self, batch: CandleBatch) -> None:
        assert self._sink is not None
        await self._sink.write(batch)

    async def stop(self) -> None:
        await super().stop()
        if self._sink is not None:
            await self._sink.close()
