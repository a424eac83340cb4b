"""`python -m publish`: candle streams of every shard → the enabled consumers.

Start order: consumers set up and started (a consumer that cannot start, e.g. a port in use, is
a start error: exit 2 with its message), then one reader and one consumer task per consumer.
SIGTERM: readers stop, each consumer handles what is queued and stores its position, then the
consumers stop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import redis.asyncio as aioredis

from common.backoff import backoff
from common.errors import ConfigError
from common.keys import Keys
from common.lifecycle import TaskSet, sleep_or_stop, until_stopped
from common.metrics import serve_metrics
from common.redisconn import connect
from common.rediserrors import REDIS_DOWN
from common.settings import PublishSettings
from common.wire import STREAM_FIELD
from publish.consumers.base import BaseConsumer
from publish.heartbeat import heartbeat_loop
from publish.reader import GroupReader, PositionReader, StreamReader, UpdatesReader
from publish.runner import ConsumerRunner

log = logging.getLogger(__name__)


def replica_name(settings: PublishSettings) -> str:
    return settings.publish_replica or socket.gethostname()


class PublishService:
    def __init__(self, settings: PublishSettings, consumers: list[BaseConsumer]) -> None:
        self.settings = settings
        self.consumers = consumers
        self.start_error: str | None = None
        self.ready = asyncio.Event()
        self.runners: list[ConsumerRunner] = []
        self._started: list[BaseConsumer] = []

    def _reader(self, consumer: BaseConsumer, client: aioredis.Redis) -> StreamReader:
        s = self.settings
        keys, replica = Keys(s.redis_prefix), replica_name(s)
        own = consumer.stream_reader(client, keys, s.shards, replica)
        if own is not None:
            return own
        if consumer.uses_group:
            group = s.publish_group
            if consumer.name != "redis":
                group = f"{group}:{consumer.name}"
            return GroupReader(
                client, keys, s.shards, group, replica, s.publish_claim_idle_ms, s.redis_cluster
            )
        return PositionReader(client, keys, s.shards, consumer.name, replica, s.redis_cluster)

    async def _start_consumers(self) -> bool:
        for consumer in self.consumers:
            try:
                await consumer.setup()
                await consumer.start()
            except (ConfigError, ValueError, OSError) as exc:
                self.start_error = f"consumer {consumer.name!r} cannot start: {exc}"
                return False
            self._started.append(consumer)
            log.info("consumer %s started", consumer.name)
        return True

    def _runners(self, client: aioredis.Redis) -> list[ConsumerRunner]:
        s = self.settings
        runners = [
            ConsumerRunner(
                c,
                self._reader(c, client),
                s.publish_batch,
                s.consumer_queue_max,
                max_failures=s.consumer_max_failures,
            )
            for c in self.consumers
        ]
        runners.extend(
            ConsumerRunner(
                c,
                UpdatesReader(client, Keys(s.redis_prefix), s.shards, s.redis_cluster),
                s.publish_batch,
                s.consumer_queue_max,
                updates=True,
                max_failures=s.consumer_max_failures,
            )
            for c in self.consumers
            if c.wants_updates()
        )
        return runners

    def health(self) -> tuple[bool, str]:
        """Healthy = started, no consumer stopped, each within STREAMER_CONSUMER_HEALTH_LAG_S."""
        if not self.ready.is_set():
            return False, "starting"
        bound_ms = self.settings.consumer_health_lag_s * 1000
        problems = [r.failed for r in self.runners if r.failed is not None]
        problems += [f"{c.name}: unhealthy" for c in self._started if not c.healthy()]
        problems += [
            f"{r.name}: {r.lag_ms() / 1000:.1f} s behind (bound {bound_ms / 1000:g} s)"
            for r in self.runners
            if r.failed is None and r.lag_ms() > bound_ms
        ]
        if problems:
            return False, "; ".join(problems)
        return True, "ok: " + ", ".join(f"{r.name} {r.lag_ms()} ms behind" for r in self.runners)

    async def _start_readers(self, stop: asyncio.Event) -> bool:
        """Find each reader's position; wait (with backoff) for a Redis that is not up yet."""
        delays = backoff(0.2, 5.0)
        for runner in self.runners:
            while True:
                try:
                    await runner.reader.start()
                    break
                except REDIS_DOWN as exc:
                    log.warning("Redis unavailable at start, retrying: %r", exc)
                    if stop.is_set():
                        return False
                    await sleep_or_stop(stop, next(delays))
        return True

    async def _prime(self, client: aioredis.Redis) -> None:
        """Hand consumers that ask for it the newest candles already in the streams."""
        keys = Keys(self.settings.redis_prefix)
        for consumer in self.consumers:
            if consumer.history_candles <= 0:
                continue
            raws: list[bytes] = []
            try:
                for shard in range(self.settings.shards):
                    entries: Any = await client.xrevrange(
                        keys.klines(shard), count=consumer.history_candles
                    )
                    raws.extend(f[STREAM_FIELD] for _, f in reversed(entries) if STREAM_FIELD in f)
            except REDIS_DOWN as exc:
                log.warning("%s: no history at start (Redis: %r)", consumer.name, exc)
                continue
            consumer.prime(raws)
            log.info("%s: primed with %d candles", consumer.name, len(raws))

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        client = connect(s)
        tasks = TaskSet()
        metrics_server = None
        try:
            if not await self._start_consumers():
                return
            self.runners = runners = self._runners(client)
            if not await self._start_readers(stop):
                return
            await self._prime(client)
            if s.metrics_port:
                metrics_server = await serve_metrics(s.metrics_host, s.metrics_port, self.health)
            consume_tasks = [
                tasks.spawn(runner.consume_loop(stop), f"consume-{runner.name}")
                for runner in runners
            ]
            for runner in runners:
                tasks.spawn(runner.read_loop(stop), f"read-{runner.name}")
                tasks.spawn(runner.monitor_loop(stop), f"monitor-{runner.name}")
            tasks.spawn(
                heartbeat_loop(client, Keys(s.redis_prefix), replica_name(s), runners, stop),
                "heartbeat",
            )
            self.ready.set()
            log.info(
                "publishing %d shards to %s as replica %s",
                s.shards,
                ", ".join(r.name for r in runners),
                replica_name(s),
            )
            await until_stopped(stop, tasks)
            await asyncio.gather(*consume_tasks)
        finally:
            await tasks.cancel_all()
            for consumer in reversed(self._started):
                try:
                    await consumer.stop()
                except Exception as exc:
                    log.warning("consumer %s failed to stop: %r", consumer.name, exc)
            if metrics_server is not None:
                metrics_server.close()
            await client.aclose()
