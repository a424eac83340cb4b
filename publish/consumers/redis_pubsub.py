"""`redis`: PUBLISH JSON arrays of candles to STREAMER_REDIS_CHANNEL.

Replicas share the candle streams through the consumer group STREAMER_PUBLISH_GROUP, so each
candle is published once by one of them. A message holds up to STREAMER_WEBSOCKET_MAX_FRAME_CANDLES
candles, joined from their raw JSON (the aggregator's exact digits).

The candles never leave Redis on their way (`PublishingReader`): one script per read takes a
shard's entries for this replica from the group, publishes them and acknowledges them, in one
atomic step. Read into publish and sent back as the script's arguments, each boundary's candles
crossed the socket twice more and were parsed twice more, on the two cores the candles' other
readers (the WebSocket feed) needed then (docs/benchmarks.md, 2026-12-06 21:00).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from common.errors import RetryableError
from common.keys import Keys
from common.redisconn import connect
from common.rediserrors import REDIS_DOWN, ReplyCode, reply_code
from common.scripts import call_together
from common.wire import STREAM_FIELD
from publish.batch import CandleBatch, json_array
from publish.consumers.base import BaseConsumer
from publish.reader import CLUSTER_POLL_MS, StreamReader, create_groups, shard_of_key

READ_PUBLISH_ACK_LUA = """
-- KEYS[1]: a candle stream. ARGV: group, consumer, count, channel, candles per message, the
-- stream's data field. This consumer's pending entries first (delivered by the read that woke it
-- and not yet published: a crash came between; or claimed from a replica gone), then new ones,
-- up to count in all: PUBLISH their candles in JSON arrays, XACK them. Atomic, so each entry is
-- published and acknowledged together, once. Returns the ids handled, oldest first.
local group, consumer, count = ARGV[1], ARGV[2], tonumber(ARGV[3])
local channel, per, field = ARGV[4], tonumber(ARGV[5]), ARGV[6]
local ids, raws = {}, {}
local function take(from, n)
  local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', n,
                           'STREAMS', KEYS[1], from)
  if not reply then return end
  for _, entry in ipairs(reply[1][2]) do
    ids[#ids + 1] = entry[1]
    local fields = entry[2]
    if fields then  -- false: a pending entry trimmed away before it was published
      for i = 1, #fields, 2 do
        if fields[i] == field then raws[#raws + 1] = fields[i + 1] break end
      end
    end
  end
end
take('0', count)
if #ids < count then take('>', count - #ids) end
for first = 1, #raws, per do
  redis.call('PUBLISH', channel,
             '[' .. table.concat(raws, ',', first, math.min(first + per - 1, #raws)) .. ']')
end
for first = 1, #ids, 1000 do
  redis.call('XACK', KEYS[1], group, unpack(ids, first, math.min(first + 999, #ids)))
end
return ids
"""


class PublishingReader:
    """The `redis` consumer's reader: each read publishes and acknowledges what it takes, in
    Redis (READ_PUBLISH_ACK_LUA), and returns a batch that says which entries those were.

    It waits for new candles with a blocking XREADGROUP of one entry (it stays pending to this
    replica until the script publishes it, right after). Every claim period it takes over, ids
    only (XAUTOCLAIM JUSTID), the entries another replica left pending for
    STREAMER_PUBLISH_CLAIM_IDLE_MS; the next script publishes them before anything newer."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        shards: int,
        group: str,
        replica: str,
        channel: str,
        per_message: int,
        claim_idle_ms: int,
        cluster: bool = False,
    ) -> None:
        self._client = client
        self._group = group
        self._replica = replica
        self._channel = channel
        self._per_message = per_message
        self._claim_idle_ms = claim_idle_ms
        self._cluster = cluster or isinstance(client, RedisCluster)
        self._streams = [keys.klines(k) for k in range(shards)]
        self._shard_of_key = shard_of_key(self._streams)
        self._every = frozenset(range(shards))
        self._script: AsyncScript = client.register_script(READ_PUBLISH_ACK_LUA)
        self._next_claim_s = 0.0
        self._due = set(self._every)
        """The shards whose script may find more right away (at start: what is pending; after
        a claim: what was taken over; after a script that hit `count`: the rest). With none,
        the next read waits first: an empty round of scripts before every wait cost one more
        round trip per candle write."""

    async def start(self) -> None:
        await create_groups(self._client, self._streams, self._group)
        self._next_claim_s = time.monotonic()

    async def read(self, count: int, block_ms: int) -> CandleBatch | None:
        try:
            if time.monotonic() >= self._next_claim_s:
                self._next_claim_s = time.monotonic() + self._claim_idle_ms / 2000
                self._due |= await self._claim(count)
            batch = await self._publish(count, self._due) if self._due else None
            if batch is None:
                batch = await self._publish(count, await self._wait(block_ms))
        except BaseException as exc:
            # What the wait took may be pending to this replica unpublished: at the next read,
            # every shard's script runs first (each takes its pending entries before new ones).
            self._due = set(self._every)
            if not isinstance(exc, ResponseError) or reply_code(exc) is not ReplyCode.NOGROUP:
                raise
            # Redis came back without our groups (no persistence): start again at the tail.
            await create_groups(self._client, self._streams, self._group)
            return None
        return batch

    async def _publish(self, count: int, shards: set[int]) -> CandleBatch | None:
        """The script on each of `shards` (in shard order), together."""
        if not shards:
            return None
        order = sorted(shards)
        args: list[Any] = [
            self._group, self._replica, count, self._channel, self._per_message, STREAM_FIELD
        ]  # fmt: skip
        calls = [([self._streams[shard]], args) for shard in order]
        if self._cluster:
            outcomes: list[Any] = [await self._script(keys=k, args=a) for k, a in calls]
        else:
            outcomes = await call_together(self._client, self._script, calls)
        ids: dict[int, list[bytes]] = {}
        for shard, outcome in zip(order, outcomes, strict=True):
            if isinstance(outcome, Exception):
                raise outcome
            if outcome:
                ids[shard] = list(outcome)
        self._due = {shard for shard, handled in ids.items() if len(handled) >= count}
        if not ids:
            return None
        batch = CandleBatch([], ids, count=sum(map(len, ids.values())))
        batch.acknowledged = True
        return batch

    async def _wait(self, block_ms: int) -> set[int]:
        """Until a candle comes (it stays pending to this replica), or `block_ms`: the shards
        it came on. Only their scripts run then: at a boundary the shards' writes come one by
        one, and each wake ran a script on every shard, in the Redis the WebSocket feed was
        reading the same candles from (docs/benchmarks.md, 2026-12-07 09:15). A shard written
        after the wake is found by the next wait, at once."""
        if self._cluster:
            await asyncio.sleep(min(block_ms, CLUSTER_POLL_MS) / 1000)
            return set(self._every)
        streams: dict[Any, Any] = dict.fromkeys(self._streams, ">")
        reply: Any = await self._client.xreadgroup(
            self._group, self._replica, streams, count=1, block=block_ms
        )
        return {self._shard_of_key[key] for key, _ in reply or ()}

    async def _claim(self, count: int) -> set[int]:
        """The shards on which entries were taken over."""
        claimed = set()
        for shard, stream in enumerate(self._streams):
            reply = await self._client.xautoclaim(
                stream, self._group, self._replica, self._claim_idle_ms, "0-0",
                count=count, justid=True,
            )  # fmt: skip
            if reply:  # the ids taken over
                claimed.add(shard)
        return claimed

    async def done(self, batch: CandleBatch) -> None:
        pass  # published and acknowledged by the read


class RedisConsumer(BaseConsumer):
    uses_group = True

    def __init__(self, name: str = "redis") -> None:
        super().__init__(name)
        self._client: aioredis.Redis | None = None
        self._channel = ""
        self._per_message = 100

    def validate(self) -> None:
        if self.settings is None:
            raise ValueError("no settings given")
        if not self.settings.redis_url:
            raise ValueError("STREAMER_REDIS_URL is empty; set the Redis to publish to")
        if not self.settings.redis_channel.strip():
            raise ValueError("STREAMER_REDIS_CHANNEL is empty; name the pub/sub channel")
        self._channel = self.settings.redis_channel
        self._per_message = self.settings.websocket_max_frame_candles

    def stream_reader(
        self, client: aioredis.Redis, keys: Keys, shards: int, replica: str
    ) -> StreamReader | None:
        s = self.settings
        assert s is not None
        group = s.publish_group if self.name == "redis" else f"{s.publish_group}:{self.name}"
        return PublishingReader(
            client, keys, shards, group, replica, self._channel, self._per_message,
            s.publish_claim_idle_ms, s.redis_cluster,
        )  # fmt: skip

    async def setup(self) -> None:
        assert self.settings is not None
        self._client = connect(self.settings)

    async def consume(self, data: list[dict[str, Any]]) -> None:
        import msgspec

        await self.consume_batch(CandleBatch([msgspec.json.encode(c) for c in data], {}))

    async def consume_batch(self, batch: CandleBatch) -> None:
        """Candles from elsewhere (`consume`); those of its own reader are published already."""
        if not self._is_running or self._client is None or not batch.raws:
            return
        try:
            raws, step = batch.raws, self._per_message
            async with self._client.pipeline(transaction=False) as pipe:
                for start in range(0, len(raws), step):
                    pipe.publish(self._channel, json_array(raws[start : start + step]))
                await pipe.execute()
        except REDIS_DOWN as exc:
            raise RetryableError(f"publish to {self._channel!r} failed: {exc!r}") from exc

    async def stop(self) -> None:
        await super().stop()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
