"""One consumer's pipeline: a reader task fills a bounded queue, a consumer task empties it.

Each consumer has its own reader, position and queue, so a consumer that is slow or failing
only falls behind in the stream (visible as `publish_consumer_lag_seconds` and a log line); it never
holds up the others. A batch's position is stored (or acknowledged) only after it was handled:
a consumer that raises gets the same batch again (capped backoff), and after
STREAMER_CONSUMER_MAX_FAILURES failures in a row it is stopped, its position kept, loudly (an
error log line, `publish_consumer_stopped` = 1, /health red) instead of skipping candles.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from common.backoff import backoff
from common.errors import RetryableError
from common.lifecycle import sleep_or_stop
from common.logs import RateLimitedLog
from common.metrics import REGISTRY
from common.rediserrors import REDIS_DOWN
from publish.batch import CandleBatch, id_ms
from publish.consumers.base import BaseConsumer
from publish.reader import StreamReader

log = logging.getLogger(__name__)
limited = RateLimitedLog(log)

LAG_WARNING_MS = 10_000
BLOCK_MS = 250
SHUTDOWN_COMMIT_ATTEMPTS = 10

CANDLES = REGISTRY.counter("publish_candles_total", "Candles handed to a consumer", ("consumer",))
ERRORS = REGISTRY.counter(
    "publish_consume_errors_total", "Batches a consumer failed to handle", ("consumer",)
)
LAG = REGISTRY.gauge(
    "publish_consumer_lag_seconds",
    "Age of the oldest candle a consumer has read but not handled yet (0 when caught up)",
    ("consumer",),
)
QUEUED = REGISTRY.gauge(
    "publish_consumer_queue_batches", "Batches read but not yet handled", ("consumer",)
)
STOPPED = REGISTRY.gauge(
    "publish_consumer_stopped",
    "1 when a consumer was stopped after failing the same batch too often (position kept)",
    ("consumer",),
)
RETRY_BASE_S, RETRY_CAP_S = 0.5, 30.0


class ConsumerRunner:
    def __init__(
        self,
        consumer: BaseConsumer,
        reader: StreamReader,
        batch: int,
        queue_max: int,
        *,
        updates: bool = False,
        max_failures: int = 10,
    ) -> None:
        self.consumer = consumer
        self.name = f"{consumer.name}-updates" if updates else consumer.name
        self._handle_batch = consumer.consume_updates if updates else consumer.consume_batch
        self.reader = reader
        self._batch = batch
        self._queue: asyncio.Queue[CandleBatch | None] = asyncio.Queue(
            maxsize=max(1, queue_max // batch)
        )
        self._unhandled_ms: deque[int] = deque()  # per queued batch: its oldest entry's time
        self._max_failures = max_failures
        self.failed: str | None = None  # why the consumer was stopped; None while it runs
        STOPPED.set(0, self.name)

    def lag_ms(self) -> int:
        """How old the oldest candle read but not yet handled is (0 when caught up)."""
        if not self._unhandled_ms:
            return 0
        return max(0, int(time.time() * 1000) - self._unhandled_ms[0])

    async def monitor_loop(self, stop: asyncio.Event) -> None:
        """Publish the lag every second, so a stalled consumer's lag keeps growing in view."""
        while not stop.is_set():
            lag_ms = self.lag_ms()
            LAG.set(lag_ms / 1000, self.name)
            QUEUED.set(self._queue.qsize(), self.name)
            if lag_ms > LAG_WARNING_MS:
                limited.warning(f"lag-{self.name}", "%s is %d ms behind", self.name, lag_ms)
            await sleep_or_stop(stop, 1.0)

    async def read_loop(self, stop: asyncio.Event) -> None:
        """Read until `stop`, then tell the consumer task to finish what is queued."""
        try:
            await self._read_until(stop)
        finally:
            close = getattr(self.reader, "close", None)  # a reader's reads left in flight
            if close is not None:
                close()
        await self._queue.put(None)

    async def _read_until(self, stop: asyncio.Event) -> None:
        delays = backoff(0.1, 5.0)
        while not stop.is_set() and self.failed is None:
            try:
                batch = await self.reader.read(self._batch, BLOCK_MS)
            except REDIS_DOWN as exc:
                limited.warning(f"read-{self.name}", "%s: Redis unavailable: %r", self.name, exc)
                await sleep_or_stop(stop, next(delays))
                continue
            delays = backoff(0.1, 5.0)
            if batch is None:
                continue
            self._unhandled_ms.append(min(id_ms(ids[0]) for ids in batch.ids.values() if ids))
            if self._queue.full():
                limited.warning(
                    f"full-{self.name}", "%s falls behind: its queue is full", self.name
                )
            await self._queue.put(batch)
            QUEUED.set(self._queue.qsize(), self.name)

    async def consume_loop(self, stop: asyncio.Event) -> None:
        # Once a batch is left unhandled (stopping, or the consumer stopped), no later batch may
        # be handed over: its position would move past the one left. The rest is read again
        # from the kept position after a restart.
        # A handled batch's position is stored while the next batch is handled (one store at a
        # time, in order, each after its batch was handled): the next candles do not wait for
        # Redis to store the last position, behind whatever Redis runs then (at a boundary: the
        # aggregator's writes of the other shards).
        halted = False
        storing: asyncio.Future[None] | None = None
        try:
            while (batch := await self._queue.get()) is not None:
                QUEUED.set(self._queue.qsize(), self.name)
                if halted:
                    continue
                if await self._handle(batch, stop):
                    if storing is not None:
                        await storing
                    storing = asyncio.ensure_future(self._store(batch, stop))
                else:
                    halted = True
        except asyncio.CancelledError:
            if storing is not None:
                storing.cancel()
            raise
        if storing is not None:
            await storing

    async def _store(self, batch: CandleBatch, stop: asyncio.Event) -> None:
        await self._commit(batch, stop)
        self._unhandled_ms.popleft()

    async def _handle(self, batch: CandleBatch, stop: asyncio.Event) -> bool:
        """Hand the batch over, again and again while it fails; False if it was not handled
        (stopping, or the consumer was stopped) and must be read again after a restart."""
        delays = backoff(RETRY_BASE_S, RETRY_CAP_S)
        failures = 0
        while True:
            try:
                await self._handle_batch(batch)
                break
            except RetryableError as exc:
                if stop.is_set():
                    log.warning("%s: batch left for the next start: %s", self.name, exc)
                    return False
                limited.warning(f"retry-{self.name}", "%s: retrying: %s", self.name, exc)
            except Exception as exc:
                # A user's consumer that raises never stops the others, and never loses a batch.
                ERRORS.inc(1, self.name)
                failures += 1
                if failures >= self._max_failures:
                    self._give_up(failures, exc)
                    return False
                limited.warning(
                    f"err-{self.name}",
                    "%s failed a batch (%d of %d tries): %r",
                    self.name, failures, self._max_failures, exc,
                )  # fmt: skip
                if stop.is_set():
                    return False
            await sleep_or_stop(stop, next(delays))
        CANDLES.inc(len(batch), self.name)
        return True

    def _give_up(self, failures: int, exc: BaseException) -> None:
        self.failed = f"{self.name}: stopped after {failures} failures in a row: {exc!r}"
        STOPPED.set(1, self.name)
        log.error(
            "%s; its position is kept (the batch is read again after a restart); "
            "the other consumers go on",
            self.failed,
        )

    async def _commit(self, batch: CandleBatch, stop: asyncio.Event) -> None:
        """Store the position (or acknowledge). After a Redis restart the first attempts may
        meet stale pooled connections, so even when stopping it tries a few more times: an
        unsaved position means the batch is handled again after a restart."""
        delays = backoff(0.1, 5.0)
        attempts_left_at_stop = SHUTDOWN_COMMIT_ATTEMPTS
        while True:
            try:
                await self.reader.done(batch)
                return
            except REDIS_DOWN as exc:
                if stop.is_set():
                    attempts_left_at_stop -= 1
                    if attempts_left_at_stop <= 0:
                        log.warning("%s: position not saved at shutdown: %r", self.name, exc)
                        return
                    await asyncio.sleep(0.1)
                    continue
                limited.warning(
                    f"commit-{self.name}", "%s: cannot save position: %r", self.name, exc
                )
                await sleep_or_stop(stop, next(delays))
