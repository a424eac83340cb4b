"""`redis`: PUBLISH JSON arrays of candles to STREAMER_REDIS_CHANNEL.

Replicas share the candle streams through the consumer group STREAMER_PUBLISH_GROUP, so each
candle is published once by one of them. A message holds up to STREAMER_WEBSOCKET_MAX_FRAME_CANDLES
candles, joined from their raw JSON (the aggregator's exact digits).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from common.errors import RetryableError
from common.redisconn import connect
from common.rediserrors import REDIS_DOWN
from common.scripts import Call, call_together
from publish.batch import CandleBatch, json_array
from publish.consumers.base import BaseConsumer

PUBLISH_AND_ACK_LUA = """
-- KEYS[1]: a candle stream. ARGV: channel, group, n, n messages, then the entry ids they hold.
-- Acknowledge first: if another attempt already did (a retry), publish nothing again.
local n = tonumber(ARGV[3])
local ids = {}
for i = 4 + n, #ARGV do ids[#ids + 1] = ARGV[i] end
if redis.call('XACK', KEYS[1], ARGV[2], unpack(ids)) == 0 then return 0 end
for i = 4, 3 + n do redis.call('PUBLISH', ARGV[1], ARGV[i]) end
return n
"""


class RedisConsumer(BaseConsumer):
    uses_group = True

    def __init__(self, name: str = "redis") -> None:
        super().__init__(name)
        self._client: aioredis.Redis | None = None
        self._channel = ""
        self._per_message = 100
        self._script: AsyncScript | None = None

    def validate(self) -> None:
        if self.settings is None:
            raise ValueError("no settings given")
        if not self.settings.redis_url:
            raise ValueError("STREAMER_REDIS_URL is empty; set the Redis to publish to")
        if not self.settings.redis_channel.strip():
            raise ValueError("STREAMER_REDIS_CHANNEL is empty; name the pub/sub channel")
        self._channel = self.settings.redis_channel
        self._per_message = self.settings.websocket_max_frame_candles

    async def setup(self) -> None:
        assert self.settings is not None
        self._client = connect(self.settings)

    async def consume(self, data: list[dict[str, Any]]) -> None:
        import msgspec

        await self.consume_batch(CandleBatch([msgspec.json.encode(c) for c in data], {}))

    async def consume_batch(self, batch: CandleBatch) -> None:
        if not self._is_running or self._client is None or not batch.raws:
            return
        try:
            if batch.group is not None:
                await self._publish_and_ack(batch, batch.group)
                return
            raws, step = batch.raws, self._per_message
            async with self._client.pipeline(transaction=False) as pipe:
                for start in range(0, len(raws), step):
                    pipe.publish(self._channel, json_array(raws[start : start + step]))
                await pipe.execute()
        except REDIS_DOWN as exc:
            raise RetryableError(f"publish to {self._channel!r} failed: {exc!r}") from exc

    async def _publish_and_ack(self, batch: CandleBatch, group: str) -> None:
        """Per shard, PUBLISH and XACK in one script: a crash repeats or loses nothing. The
        shards' scripts go to Redis in one pipeline: at a boundary a batch holds the candles of
        several shards, and one round trip instead of one per shard leaves the CPU and Redis to
        the candles' other readers sooner. On a Redis Cluster (the shards on different nodes):
        one call each."""
        assert self._client is not None
        if self._script is None:
            self._script = self._client.register_script(PUBLISH_AND_ACK_LUA)
        step = self._per_message
        calls: list[Call] = []
        for shard, ids in batch.ids.items():
            raws = batch.raws_by_shard.get(shard, [])
            messages = [json_array(raws[i : i + step]) for i in range(0, len(raws), step)]
            if ids:
                calls.append(
                    ([batch.streams[shard]], [self._channel, group, len(messages), *messages, *ids])
                )
        if isinstance(self._client, RedisCluster):
            for keys, args in calls:
                await self._script(keys=keys, args=args)
        else:
            for outcome in await call_together(self._client, self._script, calls):
                if isinstance(outcome, Exception):
                    raise outcome
        batch.acknowledged = True

    async def stop(self) -> None:
        await super().stop()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
