"""The one ordered write path into the trade streams.

Readers hand over entries without waiting (`put_*` never blocks and never touches Redis). The
writer drains them in order, appends a clock entry per ready shard when one is due, and writes
each shard's part of a batch with one fenced Lua call (measured: ~3x a pipeline). Because the
clock entry is taken after everything received before it, it means what the contract says:
"everything received before this time is in the stream". While Redis is down, the queue grows up
to `buffer_max`; past that the oldest entries are dropped, counted, and a gap entry is written once
Redis is back.

Writes are gathered: after one starts, the next waits up to `gather_ms` for more input to join
it (never past a clock grid point, and not at all under a backlog: a full batch waiting, or the
last write took longer than that). Bybit sends each trade message on its own, 0-1 ms after its
trades: thousands of messages a second at 5,000 trades/s. Written one by one they made as many
script calls, each waking every aggregator reading the stream, and at a waiter deadline those
wake-ups took the cores the deadline's candles needed (docs/benchmarks.md, 2026-12-06 18:00). A
trade reaches the stream up to `gather_ms` later; a clock entry never does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError

from common.backoff import backoff
from common.keys import Keys
from common.leases import FENCE_LUA
from common.lifecycle import sleep_or_stop
from common.rediserrors import REDIS_FAILED, ReplyCode, reply_code
from common.scripts import call_together
from common.wire import (
    ClockEntry,
    GapEntry,
    RepairEntry,
    SymbolsEntry,
    Trade,
    TradesEntry,
    entry_decoder,
    entry_encoder,
)
from ingest import metrics

log = logging.getLogger(__name__)

WRITE_LUA = (
    FENCE_LUA
    + """
local batch = ARGV[1] .. ':' .. ARGV[2]
if redis.call('GET', KEYS[3]) == batch then
  return 0
end
for i = 3, #ARGV do
  redis.call('XADD', KEYS[2], '*', 'data', ARGV[i])
end
redis.call('SET', KEYS[3], batch)
return #ARGV - 2
"""
)
"""KEYS = [lease, stream, last batch]; ARGV = [token, batch serial, entry, entry, ...].

A write whose reply was lost (Redis stopped mid-call) is retried with the same serial; the
script recognises it as already applied, so a retry never writes an entry twice."""

TRIM_EVERY_S = 10.0


@dataclass(slots=True)
class Item:
    """One stream entry waiting to be written, with what a gap needs if it is dropped."""

    shard: int
    payload: bytes
    symbol: str = ""
    trades: int = 0
    first_ms: int = 0
    last_ms: int = 0
    serial: int = 0  # set when taken into a batch; a retry keeps it


@dataclass(slots=True)
class _DropWindow:
    symbols: set[str] = field(default_factory=set)
    from_ms: int = 0
    to_ms: int = 0


LeaseLost = Callable[[int], Awaitable[bool]]
"""Asked when a shard's write is refused by the fence: True = drop, False = retry later."""
OnGapQueued = Callable[[int, list[str], int, int], None]
"""Told of every gap entry queued (shard, symbols, from, to): ingest.repair's request."""
OnDropped = Callable[[list[Item]], None]
"""Told of the entries dropped unwritten (a discard, a full buffer, a lost lease): the
duplicate filter forgets their trades, which a gap repair may then write."""


async def _always_drop(shard: int) -> bool:
    return True


def _no_repair(shard: int, symbols: list[str], from_ms: int, to_ms: int) -> None:
    return None


def _no_drop(items: list[Item]) -> None:
    return None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def encode_trades(symbol: str, trades: list[Trade], exchange_ms: int, received_ms: int) -> bytes:
    return entry_encoder.encode(TradesEntry(symbol, trades, exchange_ms, received_ms))


def encode_gap(symbols: list[str], from_ms: int, to_ms: int, reason: str) -> bytes:
    return entry_encoder.encode(GapEntry(sorted(symbols), from_ms, to_ms, reason))


class OpenWriter(Protocol):
    """Opens the writer with its hooks: the shards take one, and open their writer with their
    own methods (they both feed it and decide what becomes of what it cannot write)."""

    def __call__(
        self, *, lease_lost: LeaseLost, on_gap: OnGapQueued, on_dropped: OnDropped
    ) -> Writer: ...


class Writer:
    """Without hooks (a writer no shards own): a write the fence refuses is dropped, and
    gaps and drops are told to nobody."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        token: str,
        *,
        clock_interval_ms: int,
        buffer_max: int,
        batch_max: int,
        retention_s: int,
        gather_ms: int = 0,
        clock: bool = True,
        lease_lost: LeaseLost = _always_drop,
        on_gap: OnGapQueued = _no_repair,
        on_dropped: OnDropped = _no_drop,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.token = token
        self._clock_interval_ms = clock_interval_ms
        self._buffer_max = buffer_max
        self._batch_max = batch_max
        self._retention_s = retention_s
        self._gather_ns = gather_ms * 1_000_000
        self._write_started_ns = 0
        self._clock = clock
        self._script = redis.register_script(WRITE_LUA)
        self._lease_lost = lease_lost
        self._on_gap = on_gap
        self._on_dropped = on_dropped
        self._queue: deque[Item] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._drops: dict[int, _DropWindow] = {}
        self.ready: set[int] = set()
        self._last_clock_ms = 0
        self._serial = 0
        self._purged: dict[int, int] = {}  # shard -> last serial taken before a discard
        self._last_trim = 0.0
        self.healthy = True
        self.written = 0

    # -- readers' side: never blocks -------------------------------------------------------------

    def discard(self, shard: int) -> int:
        """Drop every queued entry of `shard` (another replica wrote them); return how many."""
        dropped = [item for item in self._queue if item.shard == shard]
        self._queue = deque(item for item in self._queue if item.shard != shard)
        self._purged[shard] = self._serial  # and those of a batch being retried right now
        self._on_dropped(dropped)
        return len(dropped)

    def put(self, item: Item) -> None:
        self._queue.append(item)
        if len(self._queue) > self._buffer_max:
            self._drop_oldest()
        self._idle.clear()
        self._wake.set()

    def put_trades(
        self, shard: int, symbol: str, trades: list[Trade], exchange_ms: int, received_ms: int
    ) -> None:
        payload = entry_encoder.encode(TradesEntry(symbol, trades, exchange_ms, received_ms))
        queue = self._queue
        queue.append(
            Item(shard, payload, symbol, len(trades), trades[0].time_ms, trades[-1].time_ms)
        )
        if len(queue) > self._buffer_max:
            self._drop_oldest()
        self._idle.clear()
        if not self._wake.is_set():
            self._wake.set()

    def put_gap(
        self, shard: int, symbols: list[str], from_ms: int, to_ms: int, reason: str
    ) -> None:
        log.warning(
            "gap in shard %d: %d symbols, %d ms (%s)", shard, len(symbols), to_ms - from_ms, reason
        )
        metrics.GAPS.inc(1, reason)
        self.put(Item(shard, encode_gap(symbols, from_ms, to_ms, reason)))
        self._on_gap(shard, sorted(symbols), from_ms, to_ms)

    def put_repair(
        self, shard: int, symbols: list[str], from_ms: int, to_ms: int, complete: list[str]
    ) -> None:
        """After the trades a gap repair fetched back: which symbols' repair ended, and which
        of them the answer covered (ingest.repair)."""
        entry = RepairEntry(sorted(symbols), from_ms, to_ms, sorted(complete))
        self.put(Item(shard, entry_encoder.encode(entry)))

    def put_symbols(self, shard: int, symbols: list[str]) -> None:
        """Say which symbols the shard serves from here on (the aggregator ends the others)."""
        self.put(Item(shard, entry_encoder.encode(SymbolsEntry(sorted(symbols), now_ms()))))

    def _drop_oldest(self) -> None:
        item = self._queue.popleft()
        if item.symbol:
            metrics.DROPPED.inc(item.trades)
            self._on_dropped([item])
            symbols, first, last = [item.symbol], item.first_ms, item.last_ms
        else:
            entry = entry_decoder.decode(item.payload)
            if not isinstance(entry, GapEntry):
                return  # a clock entry: a later one says more; a symbols entry: see put_symbols
            # a gap entry: its window joins the one that replaces the dropped entries
            symbols, first, last = entry.symbols, entry.from_ms, entry.to_ms
        window = self._drops.setdefault(item.shard, _DropWindow(from_ms=first))
        window.symbols.update(symbols)
        window.from_ms = min(window.from_ms, first)
        window.to_ms = max(window.to_ms, last)

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def drained(self, timeout_s: float) -> bool:
        """Wait until everything queued so far is written (or the timeout passes)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        return self._idle.is_set()

    # -- the writer task --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Write until `stop`, then flush what is queued (bounded by the caller's timeout)."""
        while not stop.is_set():
            wait_s = self._wait_s(time.time_ns())
            if wait_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait_s)
                gather_s = self._gather_s(time.time_ns())
                if gather_s > 0:
                    await asyncio.sleep(gather_s)
            self._wake.clear()
            self._write_started_ns = time.time_ns()
            await self.flush_once(stop)
            await self._maybe_trim()
        while self._queue:
            if not await self.flush_once(None):
                break

    def _wait_s(self, now_ns: int) -> float:
        """How long to wait for input before the next flush: until the clock's next grid point
        (multiples of the interval; with a waiter latency that the interval divides, a clock
        entry lands right at each candle's closing time), or not at all when a grid point
        passed without its clock entry (a write was under way then): it goes out now, not a
        grid point later or behind the next input. Counted from the nanosecond: a wait counted
        from the whole millisecond woke up to a millisecond past the grid point (measured with
        uvloop: the clock entry 0.8 ms late at p50, 1.3 at p99; 0.35 and 0.9 counted so)."""
        interval_ns = self._clock_interval_ms * 1_000_000
        last_cell = self._last_clock_ms // self._clock_interval_ms
        if self._clock and self.ready and now_ns // interval_ns > last_cell:
            return 0.0
        return (interval_ns - now_ns % interval_ns) / 1e9

    def _gather_s(self, now_ns: int) -> float:
        """How long the input that woke the writer waits for more to join it: until `gather_ms`
        after the last write started, or the clock's next grid point if that comes first (its
        clock entry leaves with the gathered trades); 0 under a backlog (a full batch waits, or
        the last write took that long), on a quiet stream (it is that old already), and when a
        grid point's clock entry is due."""
        wait_ns = self._write_started_ns + self._gather_ns - now_ns
        if wait_ns <= 0 or len(self._queue) >= self._batch_max:
            return 0.0
        return min(wait_ns / 1e9, self._wait_s(now_ns))

    async def flush_once(self, stop: asyncio.Event | None) -> bool:
        """Take one batch (plus due clock entries) and write it, retrying until it is written."""
        batch = self._take_batch()
        if not batch:
            self._idle.set()
            return True
        delays = backoff(base_s=0.05, cap_s=2.0)
        while batch:
            try:
                batch = await self._write(batch)
                if not batch:
                    break
                # a shard whose lease is not back yet after a Redis outage: wait, keep the order
            except REDIS_FAILED as exc:
                metrics.REDIS_ERRORS.inc()
                if self.healthy:
                    log.warning("redis write failed, buffering (%d queued): %r", self.queued, exc)
                self.healthy = False
            if stop is None or stop.is_set():
                log.error("redis unavailable while stopping: %d entries lost", len(batch))
                return False
            await sleep_or_stop(stop, next(delays))
        if not self.healthy:
            log.info("redis writes resumed")
        self.healthy = True
        self._flush_drop_gaps()
        if not self._queue:
            self._idle.set()
        metrics.BUFFER.set(len(self._queue))
        return True

    def _take_batch(self) -> list[Item]:
        queue = self._queue
        if self._clock and self.ready:
            stamp = now_ms()
            if stamp // self._clock_interval_ms > self._last_clock_ms // self._clock_interval_ms:
                # Queued behind everything received so far, so it is written after all of it:
                # even under a backlog the clock entry means what it says.
                self._last_clock_ms = stamp
                clock = entry_encoder.encode(ClockEntry(stamp))
                queue.extend(Item(shard, clock) for shard in sorted(self.ready))
        take = min(len(queue), self._batch_max)
        batch = [queue.popleft() for _ in range(take)]
        for item in batch:
            self._serial += 1
            item.serial = self._serial
        return batch

    async def _write(self, batch: list[Item]) -> list[Item]:
        """Write each shard's part of the batch; return the items to try again.

        On a Redis error the items of the shards already written are taken out of `batch`, so a
        retry never writes an entry twice.
        """
        if self._purged:
            purged = self._purged
            kept = [i for i in batch if i.serial > purged.get(i.shard, -1)]
            if len(kept) != len(batch):
                self._on_dropped([i for i in batch if i.serial <= purged.get(i.shard, -1)])
            batch[:] = kept
        by_shard: dict[int, list[Item]] = {}
        for item in batch:
            by_shard.setdefault(item.shard, []).append(item)
        # Every shard's part at once (one round trip for all, not one each): the scripts run one
        # after the other in Redis anyway, each atomic, and a retry of any part after a lost reply
        # is recognised by its serial (WRITE_LUA), so the parts need no order among themselves
        # (and after a lost connection, all of them are simply tried again).
        parts = list(by_shard.items())
        outcomes = await self._write_parts(parts)
        later: list[Item] = []
        settled: set[int] = set()  # written, or dropped with a lost lease
        failed: BaseException | None = None
        for (shard, items), outcome in zip(parts, outcomes, strict=True):
            if outcome is None:
                settled.add(shard)
                self.written += len(items)
                metrics.WRITTEN.inc(len(items))
                metrics.MESSAGES.inc(sum(1 for item in items if item.trades))
                metrics.TRADES.inc(sum(item.trades for item in items))
            elif isinstance(outcome, ResponseError) and reply_code(outcome) is ReplyCode.LEASELOST:
                if not await self._lease_lost(shard):
                    later.extend(items)
                    continue
                settled.add(shard)
                lost = sum(i.trades for i in items)
                metrics.DROPPED.inc(lost)
                self._on_dropped(items)
                self.ready.discard(shard)
                log.warning("shard %d: lease lost, %d trades not written", shard, lost)
            elif failed is None:
                failed = outcome
        if failed is not None:
            if isinstance(failed, REDIS_FAILED):  # the rest is tried again, the same way
                batch[:] = [i for i in batch if i.shard not in settled]
            raise failed
        return later

    async def _write_parts(self, parts: list[tuple[int, list[Item]]]) -> list[BaseException | None]:
        """Each part's outcome: None (written) or the error its script gave. One pipeline on
        one connection for all parts: at 5,000 trades/s the four scripts as four concurrent
        calls cost ingest a fifth of its CPU (each a pooled connection, a send and a reply
        read). On a cluster the shards live on different nodes: one call each, concurrently."""
        if isinstance(self._redis, RedisCluster):
            return await asyncio.gather(
                *(self._write_part(shard, items) for shard, items in parts),
                return_exceptions=True,
            )
        replies = await call_together(self._redis, self._script, [self._part(*p) for p in parts])
        return [r if isinstance(r, BaseException) else None for r in replies]

    def _part(self, shard: int, items: list[Item]) -> tuple[list[str], list[str | int | bytes]]:
        """WRITE_LUA's keys and arguments."""
        keys = self._keys
        shard_keys = [keys.lease("ingest", shard), keys.trades(shard), keys.ingest_batch(shard)]
        return shard_keys, [self.token, items[-1].serial, *(i.payload for i in items)]

    async def _write_part(self, shard: int, items: list[Item]) -> None:
        keys, args = self._part(shard, items)
        await self._script(keys=keys, args=args)

    def _flush_drop_gaps(self) -> None:
        if not self._drops:
            return
        drops, self._drops = self._drops, {}
        for shard, window in sorted(drops.items(), reverse=True):
            symbols = sorted(window.symbols)
            log.error(
                "buffer overflowed while redis was down: shard %d lost trades of %d symbols "
                "between %d and %d",
                shard,
                len(symbols),
                window.from_ms,
                window.to_ms,
            )
            metrics.GAPS.inc(1, "buffer-overflow")
            # First in line and outside the bound: it explains what is missing before the rest.
            payload = encode_gap(symbols, window.from_ms, window.to_ms, "buffer-overflow")
            self._queue.appendleft(Item(shard, payload))
            self._on_gap(shard, symbols, window.from_ms, window.to_ms)
        self._idle.clear()
        self._wake.set()

    async def _maybe_trim(self) -> None:
        now = time.monotonic()
        if now - self._last_trim < TRIM_EVERY_S:
            return
        self._last_trim = now
        min_id = f"{now_ms() - self._retention_s * 1000}-0"
        try:
            for shard in sorted(self.ready):
                await self._redis.xtrim(self._keys.trades(shard), minid=min_id, approximate=True)
        except RedisError as exc:
            log.warning("trim failed: %r", exc)
