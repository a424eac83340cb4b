"""One shard's kline series: confirmed candles written in order, holes filled from REST.

Every series (symbol, interval) has a queue of events worked by one task at a time, so its
writes keep their order whatever happens around them:

- a live confirm newer than the next expected candle first fills the hole from REST, then is
  written; one that is not newer than the last written is a duplicate and dropped;
- a catch-up (at start, after a reconnect, and on a periodic sweep) fills the candles that have
  ended `settle_ms` ago and are still missing, so even a daily series heals without waiting for
  its next confirm.

A live confirm that arrives while its series is backfilling waits in the queue behind the fill.
A series with no written candle yet (a cold start) is not backfilled: it starts with its first
live confirm. A hole larger than `max_backfill` candles is cut to its newest part. A hole that
cannot be filled (REST failing after its retries, rows missing) is logged, counted, and the next
candle written in the series carries `gap: true`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import msgspec

from common.backoff import backoff
from common.errors import LeaseLostError, RetryableError
from common.intervals import Interval
from common.lifecycle import TaskSet
from common.logs import RateLimitedLog
from common.rediserrors import REDIS_DOWN
from common.wire import Candle
from ingest.klines import metrics
from ingest.klines.store import KlineStore, series_field

log = logging.getLogger(__name__)
_limited = RateLimitedLog(log)

SETTLE_MS = 5_000
"""A catch-up takes only candles that ended this long ago: Bybit confirms 0.1-1 s after the end,
and a live confirm still on its way should win over a REST row."""
MAX_BACKFILL = 1_000
"""At most this many candles per series per hole (one REST page); older ones are a gap."""
CATCH_UP_BACKOFF_MS = (5_000, 300_000)
"""After a catch-up that found nothing to write, the series' next one waits base * 2^misses
(capped), so series REST cannot fill do not cost a REST call every sweep."""


Fetch = Callable[[Interval, str, int, int], Awaitable[list[Candle]]]
"""(interval, symbol, first start ms, last start ms) -> ended candles, oldest first."""


@dataclass(frozen=True, slots=True)
class CatchUp:
    until_ms: int


Event = Candle | CatchUp


@dataclass(slots=True)
class _Series:
    symbol: str
    interval: Interval
    last_start: int | None
    gap_next: bool = False
    busy: bool = False
    events: deque[Event] = field(default_factory=deque)
    quiet_until_ms: int = 0
    misses: int = 0

    def __str__(self) -> str:
        return f"{self.symbol} {self.interval}"


class ShardKlines:
    """The series of one shard and the tasks that write them."""

    def __init__(
        self,
        store: KlineStore,
        fetch: Fetch,
        intervals: tuple[Interval, ...],
        *,
        settle_ms: int = SETTLE_MS,
        max_backfill: int = MAX_BACKFILL,
        keep_updates: bool = True,
    ) -> None:
        self._store = self.store = store
        self._fetch = fetch
        self._intervals = intervals
        self._settle_ms = settle_ms
        self._max_backfill = max_backfill
        self._keep_updates = keep_updates
        self._series: dict[tuple[str, str], _Series] = {}
        self._updates: dict[tuple[str, str], Candle] = {}
        self._last_starts: dict[str, int] = {}
        self.tasks = TaskSet()
        self.lost = False
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def load(self) -> None:
        """Read every series' last written candle from Redis (after a restart, or a handover)."""
        self._last_starts = await self._store.last_starts()
        for series in self._series.values():
            last = self._last_starts.get(series_field(series.symbol, series.interval.label))
            if last is not None and (series.last_start is None or last > series.last_start):
                series.last_start = last

    def add_symbols(self, symbols: Iterable[str]) -> None:
        for symbol in symbols:
            for interval in self._intervals:
                key = (symbol, interval.label)
                if key not in self._series:
                    last = self._last_starts.get(series_field(symbol, interval.label))
                    self._series[key] = _Series(symbol, interval, last)

    def remove_symbols(self, symbols: Iterable[str]) -> None:
        for symbol in symbols:
            for interval in self._intervals:
                self._series.pop((symbol, interval.label), None)

    def last_start(self, symbol: str, interval: Interval) -> int | None:
        series = self._series.get((symbol, interval.label))
        return None if series is None else series.last_start

    def on_candle(self, candle: Candle) -> None:
        """A candle from the WebSocket: a confirm is queued, a snapshot kept for the updates."""
        key = (candle.symbol, candle.interval_label)
        series = self._series.get(key)
        if series is None or self.lost:
            return
        if candle.closed:
            self._push(series, candle)
        elif self._keep_updates:
            self._updates[key] = candle

    def catch_up(self, now_ms: int, symbols: Iterable[str] | None = None) -> None:
        """Queue a catch-up on the series of `symbols` (all when None) that are idle."""
        until_ms = now_ms - self._settle_ms
        wanted = None if symbols is None else set(symbols)
        for series in self._series.values():
            if wanted is not None and series.symbol not in wanted:
                continue
            if series.last_start is None or series.events or until_ms < series.quiet_until_ms:
                continue
            if series.interval.next_open(series.interval.next_open(series.last_start)) > until_ms:
                continue  # nothing ended since the last written candle
            self._push(series, CatchUp(until_ms))

    def take_updates(self) -> list[Candle]:
        """The latest snapshot of each series changed since the last call (throttles updates)."""
        updates = list(self._updates.values())
        self._updates.clear()
        return updates

    @property
    def pending(self) -> int:
        return sum(len(s.events) for s in self._series.values())

    async def drained(self, timeout_s: float) -> bool:
        """Wait until every queued event is handled (shutdown, handover); False on timeout."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        return self._idle.is_set()

    def _push(self, series: _Series, event: Event) -> None:
        series.events.append(event)
        if not series.busy:
            series.busy = True
            self._busy += 1
            self._idle.clear()
            self.tasks.spawn(self._work(series), name=f"klines {series}")

    async def _work(self, series: _Series) -> None:
        try:
            while series.events and not self.lost:
                await self._handle(series, series.events[0])
                series.events.popleft()
        except LeaseLostError as exc:
            log.warning("%s: stop writing: %s", series, exc)
            self.lost = True
        finally:
            if self.lost:  # another process owns the shard now: what is queued is its work
                series.events.clear()
            series.busy = False
            self._busy -= 1
            if self._busy == 0:
                self._idle.set()

    async def _handle(self, series: _Series, event: Event) -> None:
        if isinstance(event, CatchUp):
            await self._catch_up(series, event.until_ms)
            return
        last = series.last_start
        if last is not None and event.timestamp <= last:
            metrics.DUPLICATES.inc()
            return
        if last is not None and event.timestamp > series.interval.next_open(last):
            await self._fill(series, series.interval.next_open(last), event.timestamp, tail=True)
        if series.gap_next:
            event = msgspec.structs.replace(event, gap=True)
        if await self._write(series, [event]):
            metrics.CONFIRMED.inc()

    async def _catch_up(self, series: _Series, until_ms: int) -> None:
        if series.last_start is None:
            return
        first = series.interval.next_open(series.last_start)
        # Candles ending by `until_ms` start before the open of the candle holding until_ms.
        before = series.interval.floor(until_ms)
        if first >= before:
            return
        await self._fill(series, first, before, tail=False)
        if series.last_start < first:
            series.misses += 1
            base_ms, cap_ms = CATCH_UP_BACKOFF_MS
            series.quiet_until_ms = until_ms + min(cap_ms, base_ms * 2**series.misses)
        else:
            series.misses, series.quiet_until_ms = 0, 0

    async def _fill(self, series: _Series, first: int, before: int, *, tail: bool) -> None:
        """Write the candles from `first` up to (not including) `before`, in order.

        `tail`: a later candle is about to be written, so rows missing at the end are a gap now
        (a catch-up leaves them for the next try instead).
        """
        interval = series.interval
        bounded = _newest_start(interval, first, before, self._max_backfill)
        if bounded != first:
            self._gap(series, f"hole of more than {self._max_backfill} candles from {first}")
            first = bounded
        try:
            candles = await self._fetch(interval, series.symbol, first, before - 1)
        except RetryableError as exc:
            metrics.REST_ERRORS.inc()
            if tail:
                self._gap(series, f"backfill failed: {exc}")
            else:
                _limited.warning(f"catchup {series}", "%s: catch-up failed: %s", series, exc)
            return
        expected, batch = first, []
        for row in candles:
            if row.timestamp < expected or row.timestamp >= before:
                continue
            if row.timestamp != expected:
                self._gap(series, f"REST rows missing from {expected} to {row.timestamp}")
            if series.gap_next:
                row = msgspec.structs.replace(row, gap=True)  # noqa: PLW2901
                series.gap_next = False
            batch.append(row)
            expected = interval.next_open(row.timestamp)
        written = await self._write(series, batch)
        metrics.BACKFILLED.inc(written)
        if written:
            log.info("%s: backfilled %d candles up to %d", series, written, expected)
        if tail and expected < before:
            self._gap(series, f"REST rows missing from {expected} to {before}")

    def _gap(self, series: _Series, why: str) -> None:
        metrics.GAPS.inc()
        series.gap_next = True
        log.warning("%s: gap: %s", series, why)

    async def _write(self, series: _Series, candles: list[Candle]) -> int:
        """Write with retries while Redis is away; returns how many were new."""
        if not candles:
            return 0
        delays = backoff(0.2, cap_s=5.0)
        while True:
            try:
                written = await self._store.write_confirmed(candles)
                break
            except REDIS_DOWN as exc:
                _limited.warning("redis", "klines write failed, retrying: %r", exc)
                await asyncio.sleep(next(delays))
        metrics.DUPLICATES.inc(written.count(False))
        series.last_start = max(series.last_start or 0, candles[-1].timestamp)
        if any(written):
            series.gap_next = False
        return sum(written)


def _newest_start(interval: Interval, first: int, before: int, most: int) -> int:
    """`first`, or the start of the newest `most` candles before `before` when that is later."""
    start = before
    for _ in range(most):
        start = interval.floor(start - 1)
        if start <= first:
            return first
    return start
