"""A consumer's pipeline (publish.runner) against a real redis-server: positions are stored in
order, each after its batch was handled, and the next batch does not wait for the store."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from common.keys import Keys
from common.wire import STREAM_FIELD
from publish.batch import CandleBatch
from publish.consumers.base import BaseConsumer
from publish.reader import PositionReader
from publish.runner import ConsumerRunner

pytestmark = pytest.mark.redis

PAUSE_MS = 1500


class Pausing(BaseConsumer):
    """Records when each batch was handled; the first one pauses Redis' writes, so that the
    runner's store of its position waits for PAUSE_MS."""

    def __init__(self, client: aioredis.Redis) -> None:
        super().__init__("pausing")
        self._client = client
        self.handled: list[tuple[float, list[bytes]]] = []
        self.both = asyncio.Event()

    async def consume_batch(self, batch: CandleBatch) -> None:
        if not self.handled:
            await self._client.client_pause(PAUSE_MS, all=False)  # writes only
        self.handled.append((time.monotonic(), list(batch.raws)))
        if len(self.handled) == 2:
            self.both.set()


def test_the_next_batch_is_handled_while_the_last_position_is_stored(redis_url: str) -> None:
    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        keys = Keys("runner")
        reader = PositionReader(client, keys, 1, "pausing", "r1")
        await reader.start()  # at the tail: the two candles below come after it
        ids = [await client.xadd(keys.klines(0), {STREAM_FIELD: b'{"n":%d}' % n}) for n in (1, 2)]
        consumer = Pausing(client)
        await consumer.start()
        runner = ConsumerRunner(consumer, reader, batch=1, queue_max=10)
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(runner.read_loop(stop)),
            asyncio.create_task(runner.consume_loop(stop)),
        ]
        await asyncio.wait_for(consumer.both.wait(), 10)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert [raws for _, raws in consumer.handled] == [[b'{"n":1}'], [b'{"n":2}']]
        (first, _), (second, _) = consumer.handled
        # The second batch was handled while Redis held the first one's position back.
        assert second - first < PAUSE_MS / 1000 / 2, f"{(second - first) * 1000:.0f} ms apart"
        stored = await client.get(keys.publish_position("pausing:r1", 0))
        assert stored == ids[1]  # both stored, in order: the second one last
        await client.aclose()

    asyncio.run(scenario())
