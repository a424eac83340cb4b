"""`redis`: PUBLISH JSON arrays of candles to STREAMER_REDIS_CHANNEL.

Replicas share the candle streams through the consumer group STREAMER_PUBLISH_GROUP, so each
candle is published once by one of them. A message holds up to STREAMER_WEBSOCKET_MAX_FRAME_CANDLES
candles, joined from their raw JSON (the aggregator's exact digits).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.errors import RetryableError
from common.redisconn import connect
from publish.batch import CandleBatch, json_array
from publish.consumers.base import BaseConsumer


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

    async def setup(self) -> None:
        assert self.settings is not None
        self._client = connect(self.settings)

    async def consume(self, data: list[dict[str, Any]]) -> None:
        import msgspec

        await self.consume_batch(CandleBatch([msgspec.json.encode(c) for c in data], {}))

    async def consume_batch(self, batch: CandleBatch) -> None:
        if not self._is_running or self._client is None or not batch.raws:
            return
        raws, step = batch.raws, self._per_message
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for start in range(0, len(raws), step):
                    pipe.publish(self._channel, json_array(raws[start : start + step]))
                await pipe.execute()
        except (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError) as exc:
            raise RetryableError(f"publish to {self._channel!r} failed: {exc!r}") from exc

    async def stop(self) -> None:
        await super().stop()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
