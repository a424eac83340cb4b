"""Reading the candle streams of every shard, for one consumer, with a remembered position.

Two ways, chosen by the consumer:

- `PositionReader` (console, websocket, users' consumers): plain XREAD from the position stored
  at `<p>:{k}:pos:<consumer>:<replica>`, which is saved after each handled batch, one blocking
  read per shard's stream. With no stored position it starts at the live tail (and stores that at
  once, so a restart misses nothing).
- `GroupReader` (redis): XREADGROUP in the group STREAMER_PUBLISH_GROUP as consumer `<replica>`,
  XACK after publishing, so several replicas publish each candle once. At start it first re-reads
  its own unacknowledged entries (a restart of the same replica), and every claim period it takes
  over (XAUTOCLAIM) entries another replica left unacknowledged for STREAMER_PUBLISH_CLAIM_IDLE_MS.

Positions live in Redis, so with persistence (AOF) a Redis restart loses neither positions nor
the group's acknowledgements: reading resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from common.keys import Keys
from common.rediserrors import ReplyCode, reply_code
from common.wire import STREAM_FIELD, entry_id
from publish.batch import CandleBatch

log = logging.getLogger(__name__)

_START = b"0-0"
CLUSTER_POLL_MS = 20


class StreamReader(Protocol):
    async def start(self) -> None: ...

    async def read(self, count: int, block_ms: int) -> CandleBatch | None: ...

    async def done(self, batch: CandleBatch) -> None: ...


def shard_of_key(streams: list[str]) -> dict[bytes, int]:
    """Each stream's shard, by the key a reply names it with."""
    return {stream.encode(): shard for shard, stream in enumerate(streams)}


def _to_batch(reply: Any, shard_by_key: dict[bytes, int]) -> CandleBatch | None:
    raws: list[bytes] = []
    ids: dict[int, list[bytes]] = {}
    by_shard: dict[int, list[bytes]] = {}
    for key, entries in reply:
        shard = shard_by_key[key]
        shard_ids = ids.setdefault(shard, [])
        shard_raws = by_shard.setdefault(shard, [])
        for raw_id, fields in entries:
            if fields is None:  # a pending entry deleted (trimmed) before it was delivered
                continue
            data = fields.get(STREAM_FIELD)
            shard_ids.append(raw_id)
            if data is not None:
                raws.append(data)
                shard_raws.append(data)
    if not any(ids.values()):
        return None
    return CandleBatch(raws, ids, by_shard)


async def _read_streams(
    read: Callable[..., Awaitable[Any]],
    streams: dict[Any, Any],
    count: int,
    block_ms: int,
    cluster: bool,
) -> Any:
    """One blocking multi-stream read; on a Redis Cluster, whose shards live in different slots,
    one non-blocking read per stream and a short pause when none had anything."""
    if not cluster:
        return await read(streams, count=count, block=block_ms)
    reply: list[Any] = []
    for stream, position in streams.items():
        reply.extend(await read({stream: position}, count=count))
    if not reply:
        await asyncio.sleep(min(block_ms, CLUSTER_POLL_MS) / 1000)
    return reply


async def create_groups(client: aioredis.Redis, streams: list[str], group: str) -> None:
    """The consumer group on each stream (and the stream), unless there already."""
    for stream in streams:
        try:
            await client.xgroup_create(stream, group, id="$", mkstream=True)
        except ResponseError as exc:
            if reply_code(exc) is not ReplyCode.BUSYGROUP:
                raise


class PositionReader:
    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        shards: int,
        consumer: str,
        replica: str,
        cluster: bool = False,
    ) -> None:
        self._client = client
        self._cluster = cluster
        self._streams = [keys.klines(k) for k in range(shards)]
        self._shard_of_key = shard_of_key(self._streams)
        self._pos_keys = [keys.publish_position(f"{consumer}:{replica}", k) for k in range(shards)]
        self._next: dict[Any, Any] = {}
        self._waits: dict[Any, asyncio.Future[Any]] = {}

    async def start(self) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for key in self._pos_keys:
                pipe.get(key)
            stored = await pipe.execute()
        fresh: dict[Any, Any] = {}
        for shard, (stream, position) in enumerate(zip(self._streams, stored, strict=True)):
            if position is None:
                last = await self._client.xrevrange(stream, count=1)
                fresh[self._pos_keys[shard]] = last[0][0] if last else _START
            else:
                await self._check_trimmed(stream, position)
            self._next[stream] = position or fresh[self._pos_keys[shard]]
        await self._save(fresh)

    async def _check_trimmed(self, stream: str, position: bytes) -> None:
        """Say so when the stream was trimmed past our position while we were away."""
        first: Any = await self._client.xrange(stream, count=1)
        if first and entry_id(first[0][0]) > entry_id(position) and position != _START:
            log.warning(
                "%s: candles after %s were trimmed before this consumer read them; "
                "resuming at %s (raise STREAMER_KLINES_MAXLEN to keep more)",
                stream, position.decode(), first[0][0].decode(),
            )  # fmt: skip

    async def _save(self, positions: dict[Any, Any]) -> None:
        if positions:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, position in positions.items():
                    pipe.set(key, position)
                await pipe.execute()

    async def read(self, count: int, block_ms: int) -> CandleBatch | None:
        if self._cluster:
            reply = await _read_streams(self._client.xread, self._next, count, block_ms, True)
        else:
            reply = await self._read_each(count, block_ms)
        batch = _to_batch(reply, self._shard_of_key)
        if batch is not None:
            for shard, last in batch.last_ids().items():
                self._next[self._streams[shard]] = last
        return batch

    async def _read_each(self, count: int, block_ms: int) -> list[Any]:
        """A blocking XREAD per stream, each on a connection of its own and left in flight from
        one read to the next; what those that came back hold (an error of one raised, its
        stream read again from the same position next time). Redis 7.0 answers a blocked read
        of several streams with the one stream that woke it: at a waiter deadline, whose four
        shard writes land within a millisecond, the other three shards waited for a second
        read, queued in Redis behind what it ran meanwhile (1.6 ms at the median, measured:
        docs/benchmarks.md, 2026-12-07 12:20). Each stream's read returns as its shard is
        written."""
        waits = self._waits
        for stream, after in self._next.items():
            if stream not in waits:
                waits[stream] = asyncio.ensure_future(
                    self._client.xread({stream: after}, count=count, block=block_ms)
                )
        await asyncio.wait(waits.values(), return_when=asyncio.FIRST_COMPLETED)
        reply: list[Any] = []
        failed: BaseException | None = None
        for stream, task in list(waits.items()):
            if task.done():
                del waits[stream]
                if task.exception() is None:
                    reply.extend(task.result() or ())
                elif failed is None:
                    failed = task.exception()
        if failed is not None:
            raise failed  # the replies taken with it are read again: positions stay
        return reply

    def close(self) -> None:
        """Cancel the reads in flight (the consumer stops reading)."""
        for task in self._waits.values():
            task.cancel()
        self._waits.clear()

    async def done(self, batch: CandleBatch) -> None:
        await self._save({self._pos_keys[shard]: last for shard, last in batch.last_ids().items()})


class UpdatesReader(PositionReader):
    """The in-progress candles: always from the live tail, no stored position (they are
    superseded within seconds, so replaying old ones after a restart helps nobody)."""

    def __init__(self, client: aioredis.Redis, keys: Keys, shards: int, cluster: bool) -> None:
        super().__init__(client, keys, shards, "updates", "-", cluster)
        self._streams = [keys.updates(k) for k in range(shards)]
        self._shard_of_key = shard_of_key(self._streams)

    async def start(self) -> None:
        for stream in self._streams:
            last = await self._client.xrevrange(stream, count=1)
            self._next[stream] = last[0][0] if last else _START

    async def done(self, batch: CandleBatch) -> None:
        pass


class GroupReader:
    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        shards: int,
        group: str,
        replica: str,
        claim_idle_ms: int,
        cluster: bool = False,
    ) -> None:
        self._client = client
        self._cluster = cluster
        self._group = group
        self._replica = replica
        self._claim_idle_ms = claim_idle_ms
        self._streams = [keys.klines(k) for k in range(shards)]
        self._shard_of_key = shard_of_key(self._streams)
        self._own_pending: dict[Any, Any] = {}
        self._in_flight: set[bytes] = set()
        self._next_claim_s = 0.0
        self._live: dict[Any, Any] = dict.fromkeys(self._streams, ">")

    async def start(self) -> None:
        await self._create_groups()
        self._own_pending = dict.fromkeys(self._streams, _START)
        self._next_claim_s = time.monotonic()

    async def _create_groups(self) -> None:
        await create_groups(self._client, self._streams, self._group)

    async def read(self, count: int, block_ms: int) -> CandleBatch | None:
        try:
            if self._own_pending:
                batch = await self._read_own_pending(count)
                if batch is not None:
                    return batch
            if time.monotonic() >= self._next_claim_s:
                self._next_claim_s = time.monotonic() + self._claim_idle_ms / 2000
                claimed = await self._claim(count)
                if claimed is not None:
                    return claimed
            read = partial(self._client.xreadgroup, self._group, self._replica)
            reply = await _read_streams(read, self._live, count, block_ms, self._cluster)
        except ResponseError as exc:
            if reply_code(exc) is not ReplyCode.NOGROUP:
                raise
            # Redis came back without our groups (no persistence): start again at the tail.
            await self._create_groups()
            return None
        return self._track(_to_batch(reply, self._shard_of_key))

    async def _read_own_pending(self, count: int) -> CandleBatch | None:
        """Entries delivered to this replica before a restart and never acknowledged."""
        reply: list[Any] = []
        for stream, after in self._own_pending.items():
            reply.extend(
                await self._client.xreadgroup(
                    self._group, self._replica, {stream: after}, count=count
                )
            )
        batch = _to_batch(reply, self._shard_of_key)
        finished = set(self._own_pending)
        if batch is not None:
            for shard, last in batch.last_ids().items():
                self._own_pending[self._streams[shard]] = last
                finished.discard(self._streams[shard])
        for stream in finished:
            del self._own_pending[stream]
        return self._track(batch)

    async def _claim(self, count: int) -> CandleBatch | None:
        """Take over entries that another (dead) replica left unacknowledged."""
        reply: list[Any] = []
        for stream in self._streams:
            _cursor, entries, *_ = await self._client.xautoclaim(
                stream, self._group, self._replica, self._claim_idle_ms, _START, count=count
            )
            fresh = [(i, f) for i, f in entries if i not in self._in_flight]
            if fresh:
                reply.append((stream.encode(), fresh))
        return self._track(_to_batch(reply, self._shard_of_key))

    def _track(self, batch: CandleBatch | None) -> CandleBatch | None:
        if batch is not None:
            batch.group = self._group
            batch.streams = self._streams
            for ids in batch.ids.values():
                self._in_flight.update(ids)
        return batch

    async def done(self, batch: CandleBatch) -> None:
        if not batch.acknowledged:  # (the `redis` consumer acknowledges with its output)
            async with self._client.pipeline(transaction=False) as pipe:
                for shard, ids in batch.ids.items():
                    if ids:
                        pipe.xack(self._streams[shard], self._group, *ids)
                await pipe.execute()
        for ids in batch.ids.values():
            self._in_flight.difference_update(ids)
