"""The postgres consumer's stream reader: which shards this replica writes, and from where.

A replica writes a shard while it holds that shard's PostgreSQL advisory lock (session level,
on a connection of its own). PostgreSQL drops the lock the moment that session ends, so a replica
killed with -9 hands its shards over at once: another one takes them at its next poll (every
second). Each time a shard is taken (or must be re-read) its position is loaded from the
positions table, the one place it lives, and the shard gets a new epoch: batches read before
carry the old epoch and are dropped unwritten, since the writer's compare-and-set would refuse
them anyway. The lock only spares double work; exactness comes from that compare-and-set.

Why not the Redis consumer group the `redis` consumer uses: its acknowledgement lives in Redis
and cannot join the PostgreSQL transaction, and a group splits one shard's candles between
replicas, so revisions of one candle could be written out of order by two writers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import psycopg
import redis.asyncio as aioredis
from psycopg import sql

from common.backoff import backoff
from common.keys import Keys
from common.wire import STREAM_FIELD
from common.wire import entry_id as _id  # the module names its ids entry_id
from publish.batch import CandleBatch
from publish.postgres.outage import Outage
from publish.postgres.schema import Tables, ensure_tables
from publish.postgres.writer import Connection, Part
from publish.reader import _read_streams, _to_batch

log = logging.getLogger("publish.consumers.postgres")

POLL_S = 1.0
START = "0-0"  # a stream never written before is copied from its first entry


class LeasedBatch(CandleBatch):
    """A batch as the writer takes it: per shard, the epoch it was read in and its part (COPY
    lines already built here, in the reading task, so that this work overlaps the previous
    batch's transaction instead of following it)."""

    __slots__ = ("parts",)

    def __init__(self, batch: CandleBatch, parts: dict[int, tuple[int, Part]]) -> None:
        super().__init__(batch.raws, batch.ids, batch.raws_by_shard)
        self.parts = parts


async def connect(dsn: str, timeout_s: float) -> Connection:
    return await psycopg.AsyncConnection.connect(
        dsn,
        autocommit=True,
        connect_timeout=max(2, round(timeout_s)),
        application_name="streamer-publish",
    )


class ShardLeases:
    """A `publish.reader.StreamReader` over the shards whose lease this replica holds."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        shards: int,
        tables: Tables,
        dsn: str,
        *,
        batch: int,
        connect_timeout_s: float,
        outage: Outage,
        cluster: bool = False,
    ) -> None:
        self._client = client
        self._raw = None if cluster else _raw_replies(client)
        self._streams = [keys.klines(k) for k in range(shards)]
        self._shard_of_key = {s.encode(): k for k, s in enumerate(self._streams)}
        self._tables = tables
        self._dsn = dsn
        self._batch = batch
        self._timeout_s = connect_timeout_s
        self._outage = outage
        self._cluster = cluster
        self._conn: Connection | None = None
        self._held: set[int] = set()  # advisory locks held on self._conn
        self._epochs: dict[int, int] = {}  # held shards with a loaded position: their epoch
        self._next: dict[str, str] = {}  # stream -> read after this id (loaded shards only)
        self._reload: set[int] = set()
        self._epoch = 0
        self._next_poll_s = 0.0
        self._delays = backoff(0.5, 10.0)
        self.ensured = False  # the table was checked (at setup, or at the first connection)

    def epoch_of(self, shard: int) -> int | None:
        return self._epochs.get(shard)

    def stream(self, shard: int) -> str:
        return self._streams[shard]

    def shard_of(self, stream: str) -> int:
        return self._shard_of_key[stream.encode()]

    def invalidate(self, shards: list[int]) -> None:
        """Stop reading these shards; reload their stored position at the next poll."""
        for shard in shards:
            self._epochs.pop(shard, None)
            self._next.pop(self._streams[shard], None)
            if shard in self._held:
                self._reload.add(shard)
        self._next_poll_s = 0.0

    async def start(self) -> None:
        """Nothing to do before the first read: PostgreSQL may well be down at start."""

    async def done(self, batch: CandleBatch) -> None:
        """The position was committed with the rows."""

    async def read(self, count: int, block_ms: int) -> CandleBatch | None:
        if time.monotonic() >= self._next_poll_s:
            await self._poll()
        if not self._next:
            await asyncio.sleep(block_ms / 1000)
            return None
        if self._raw is not None:
            streams: dict[Any, Any] = dict(self._next)
            reply = await self._raw.xread(streams, count=self._batch, block=block_ms)
            batch = _as_sent_to_batch(reply, self._shard_of_key)
        else:  # a cluster's shards live on different nodes: one read per stream
            reply = await _read_streams(
                self._client.xread, dict(self._next), self._batch, block_ms, self._cluster
            )
            batch = _to_batch(reply, self._shard_of_key)
        if batch is None:
            return None
        parts: dict[int, tuple[int, Part]] = {}
        for shard, last in batch.last_ids().items():
            stream, epoch = self._streams[shard], self._epochs.get(shard)
            if epoch is None or stream not in self._next:
                continue  # invalidated while this read was under way
            raws = batch.raws_by_shard.get(shard, [])
            parts[shard] = (epoch, Part(stream, self._next[stream], last.decode(), raws))
            self._next[stream] = last.decode()
        return LeasedBatch(batch, parts)

    async def _poll(self) -> None:
        """Take free shards, reload the ones asked for, notice a lost session."""
        try:
            if self._conn is None or self._conn.closed:
                await self._reconnect()
            assert self._conn is not None
            await self._take_free()
            fresh = sorted(self._reload & self._held)
            if fresh:
                await self._load(fresh)
            self._reload.difference_update(fresh)
        except (psycopg.Error, OSError) as exc:
            self._outage.failed(exc)
            await self._drop_session()
            self._next_poll_s = time.monotonic() + next(self._delays)
            return
        self._outage.ok()
        self._delays = backoff(0.5, 10.0)
        self._next_poll_s = time.monotonic() + POLL_S

    async def _reconnect(self) -> None:
        await self._drop_session()
        self._conn = await connect(self._dsn, self._timeout_s)
        if not self.ensured:
            storage = await ensure_tables(self._conn, self._tables)  # ConfigError: fatal
            log.info("table %s ready (%s)", self._tables.text, storage)
            self.ensured = True

    async def _drop_session(self) -> None:
        """Forget every lease: they ended with the session (or end now, as it closes)."""
        if self._held:
            log.info("postgres: leases on shards %s ended", sorted(self._held))
        self._held.clear()
        self._reload.clear()
        self.invalidate(list(self._epochs))
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    async def _take_free(self) -> None:
        assert self._conn is not None
        free = [k for k in range(len(self._streams)) if k not in self._held]
        if not free:
            await self._conn.execute("SELECT 1")
            return
        cur = await self._conn.execute(
            "SELECT s, pg_try_advisory_lock(hashtextextended(%s || s, 0)) "
            "FROM unnest(%s::text[]) AS s",
            [f"{self._tables.text}:", [self._streams[k] for k in free]],
        )
        shard_of = {stream: k for k, stream in enumerate(self._streams)}
        taken = sorted(shard_of[str(stream)] for stream, got in await cur.fetchall() if got)
        if taken:
            log.info("postgres: writing shards %s", taken)
            self._held.update(taken)
            self._reload.update(taken)

    async def _load(self, shards: list[int]) -> None:
        assert self._conn is not None
        streams = [self._streams[k] for k in shards]
        positions = self._tables.positions
        await self._conn.execute(
            sql.SQL(
                "INSERT INTO {} (stream, entry_id) SELECT s, %s FROM unnest(%s::text[]) AS s "
                "ON CONFLICT (stream) DO NOTHING"
            ).format(positions),
            [START, streams],
        )
        cur = await self._conn.execute(
            sql.SQL("SELECT stream, entry_id FROM {} WHERE stream = ANY(%s)").format(positions),
            [streams],
        )
        stored = {str(stream): str(entry_id) for stream, entry_id in await cur.fetchall()}
        for stream in streams:
            await self._warn_if_trimmed(stream, stored[stream])
        for shard, stream in zip(shards, streams, strict=True):
            self._epoch += 1
            self._epochs[shard] = self._epoch
            self._next[stream] = stored[stream]

    async def _warn_if_trimmed(self, stream: str, position: str) -> None:
        first: Any = await self._client.xrange(stream, count=1)
        if first and position != START and _id(first[0][0]) > _id(position):
            log.warning(
                "%s: candles after %s were trimmed before they reached PostgreSQL; resuming at "
                "%s (raise STREAMER_KLINES_MAXLEN to keep more)",
                stream, position, first[0][0].decode(),
            )  # fmt: skip

    async def close(self) -> None:
        await self._drop_session()


def _raw_replies(client: aioredis.Redis) -> aioredis.Redis:
    """A client on the same connections whose XREAD replies stay as Redis sent them. redis-py
    otherwise turns every entry into a dict, which cost 1.6 of this consumer's ~8 µs of CPU
    per candle (measured with the bench's candles): a third of what it spends besides the rows."""
    raw = aioredis.Redis(connection_pool=client.connection_pool)
    raw.set_response_callback("XREAD", _as_sent)
    return raw


def _as_sent(response: Any, **options: Any) -> Any:
    return response


def _as_sent_to_batch(reply: Any, shard_of_key: dict[bytes, int]) -> CandleBatch | None:
    """XREAD's reply as sent: `{stream: [[id, [field, value, ...]], ...]}` (RESP3) or
    `[[stream, entries]]` (RESP2); None when it holds no entry."""
    if not reply:
        return None
    raws: list[bytes] = []
    ids: dict[int, list[bytes]] = {}
    by_shard: dict[int, list[bytes]] = {}
    for key, entries in reply.items() if isinstance(reply, dict) else reply:
        shard = shard_of_key[key]
        ids[shard] = [entry_id for entry_id, _ in entries]
        if all(len(fields) == 2 and fields[0] == STREAM_FIELD for _, fields in entries):
            data = [fields[1] for _, fields in entries]  # the one field every entry has
        else:
            fields_of = (dict(zip(f[::2], f[1::2], strict=True)) for _, f in entries if f)
            data = [d for fields in fields_of if (d := fields.get(STREAM_FIELD)) is not None]
        by_shard[shard] = data
        raws += data
    return CandleBatch(raws, ids, by_shard) if any(ids.values()) else None
