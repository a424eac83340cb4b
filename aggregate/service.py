"""`python -m aggregate`: the shard workers, their leases, metrics, and the drain on stop."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import redis.asyncio as aioredis

from aggregate import checkpoint
from aggregate.candles import CoreConfig
from aggregate.shard import OnWritten, ShardAggregator
from aggregate.state import CoreCandle
from aggregate.together import DeadlineWrites
from common.intervals import Interval
from common.keys import Keys
from common.leases import ShardClaimer, new_token
from common.lifecycle import TaskSet, until_stopped
from common.metrics import CANDLE_DELAY, serve_metrics
from common.redisconn import connect
from common.settings import AggregateSettings, KlineEmpty, KlineOpen

log = logging.getLogger(__name__)


def core_config(settings: AggregateSettings) -> CoreConfig:
    waiter = settings.aggregator_waiter_mode_enabled
    return CoreConfig(
        intervals=settings.kline_intervals,
        waiter_latency_ms=settings.aggregator_waiter_latency_ms if waiter else 0,
        revision_window_ms=int(settings.kline_revision_window_s * 1000),
        repair_window_ms=int(settings.kline_repair_window_s * 1000),
        open_at_previous_close=settings.kline_open is KlineOpen.PREVIOUS_CLOSE,
        emit_empty=settings.kline_empty is KlineEmpty.EMIT,
        updates_ms=settings.kline_updates_ms,
    )


def delay_observer(intervals: tuple[Interval, ...]) -> OnWritten:
    """The `on_written` of `ShardAggregator` that feeds `streamer_candle_delay_seconds`:
    wall-clock write time minus the candle's end, for first emissions (a revision is late on
    purpose). Counted per candle end first (a boundary's candles share one): it runs between a
    boundary's shards."""
    labels = [interval.label for interval in intervals]

    def written(candles: list[CoreCandle], wall_ms: float, _stream_ms: int) -> None:
        ends = Counter((c.interval, c.open_ms) for c in candles if c.revision == 0)
        delays: dict[int, dict[float, int]] = {}
        for (index, open_ms), count in ends.items():
            end_ms = intervals[index].next_open(open_ms)
            delays.setdefault(index, {})[(wall_ms - end_ms) / 1000] = count
        for index, counts in delays.items():
            CANDLE_DELAY.observe_counts(counts, labels[index])

    return written


class AggregateShards:
    """The `ShardWorkers` of aggregate: one `ShardAggregator` task per owned shard."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        settings: AggregateSettings,
        tasks: TaskSet,
        token: str,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._settings = settings
        self._config = core_config(settings)
        self._observe_delays = delay_observer(settings.kline_intervals)
        self._tasks = tasks
        self.token = token  # this process's lease token: the fence of every write it makes
        self._running: dict[int, tuple[asyncio.Task[None], asyncio.Event]] = {}
        self._together = (
            None  # a cluster's shards live on different nodes: each sends its own
            if settings.redis_cluster
            else DeadlineWrites(redis, redis.register_script(checkpoint.WRITE_LUA))
        )

    async def start_shard(self, shard: int) -> None:
        settings = self._settings
        worker = ShardAggregator(
            self._redis,
            self._keys,
            shard,
            self._config,
            settings.bybit_category.value,
            self.token,
            settings.aggregator_batch,
            settings.klines_maxlen,
            settings.updates_maxlen,
            settings.history_candles,
            shards=settings.shards,
            on_written=self._observe_delays,
            together=self._together,
        )
        stop = asyncio.Event()
        task = self._tasks.spawn(worker.run(stop), name=f"aggregate-shard-{shard}")
        self._running[shard] = (task, stop)

    async def stop_shard(self, shard: int, *, graceful: bool) -> None:
        running = self._running.pop(shard, None)
        if running is None:
            return
        task, stop = running
        stop.set()
        if graceful:
            await asyncio.wait({task}, timeout=self._settings.shutdown_timeout_s / 2)
        if not task.done():
            task.cancel()
            await asyncio.wait({task})

    @property
    def healthy(self) -> bool:
        return all(not task.done() for task, _ in self._running.values())


async def run(settings: AggregateSettings, stop: asyncio.Event) -> None:
    keys = Keys(settings.redis_prefix)
    redis = connect(settings, resend=False)  # a write is never sent twice (common.redisconn)
    redis.response_callbacks.pop("XREAD", None)  # raw replies: see aggregate.shard
    tasks = TaskSet()
    token = new_token("aggregate")
    shards = AggregateShards(redis, keys, settings, tasks, token)
    claimer = ShardClaimer(
        redis,
        keys,
        "aggregate",
        settings.shards,
        settings.fixed_shards(),
        settings.lease_ttl_ms,
        shards,
        token=token,
    )
    claim_stop = asyncio.Event()
    claim_task = tasks.spawn(claimer.run(claim_stop), name="claimer")
    server = None
    if settings.metrics_port:
        server = await serve_metrics(
            settings.metrics_host, settings.metrics_port, lambda: shards.healthy
        )
    labels = ",".join(interval.label for interval in settings.kline_intervals)
    log.info(
        "aggregate started: intervals %s, %d shards (%s)",
        labels,
        settings.shards,
        settings.shard_ids or "leases",
    )
    try:
        await until_stopped(stop, tasks)
    finally:
        claim_stop.set()  # the claimer stops every shard gracefully, then releases the leases
        await asyncio.wait({claim_task}, timeout=settings.shutdown_timeout_s)
        await tasks.cancel_all()
        if server is not None:
            server.close()
        await redis.aclose()
