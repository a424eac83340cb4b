"""`python -m ingest` with STREAMER_KLINES_MODE=true: Bybit's confirmed klines → candle streams.

The trade-mode machinery is reused as it is: the symbols are checked against instruments-info
in `__main__`, the connection pool (pings, dead detection, reconnects with backoff, chunked and
acked subscriptions) subscribes `kline.{code}.{symbol}` instead of `publicTrade.{symbol}`, and
shards are owned through the same leases. What differs is what happens per shard
(`ingest.klines.series.ShardKlines`): confirmed candles are written exactly once, in order per
series, with holes filled from REST at start, after every reconnect and on a periodic sweep.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

import redis.asyncio as aioredis

from common.backoff import backoff
from common.errors import BadMessageError, LeaseLostError
from common.keys import Keys
from common.lifecycle import TaskSet, sleep_or_stop
from common.logs import RateLimitedLog
from common.rediserrors import REDIS_FAILED
from common.settings import IngestSettings
from common.sharding import shard_of
from ingest import startup
from ingest.klines import metrics
from ingest.klines.frames import decode_frame, item_candle, parse_topic, topic
from ingest.klines.rest import KlineRest
from ingest.klines.series import Fetch, ShardKlines
from ingest.klines.store import KlineStore
from ingest.pool import OpenPool
from ingest.startup import Drained, Mode, Started

log = logging.getLogger(__name__)
_limited = RateLimitedLog(log)

SWEEP_S = 5.0
"""How often every series is checked for candles that ended but were never confirmed to us."""
SUBSCRIBE_TIMEOUT_S = 30.0
_UPDATES_FAILED: tuple[type[Exception], ...] = (*REDIS_FAILED, LeaseLostError)


class ExchangeClock:
    """The exchange's time: the newest push `ts` seen, plus the local time elapsed since.

    Catch-ups decide what has ended by this clock, not by the local one, so a skewed host clock
    (or a simulator on a shifted clock) never makes ingest ask for candles that are still open.
    Before the first push it says 0: nothing is known to have ended, the sweep comes back later.
    """

    def __init__(self) -> None:
        self._ts_ms = 0
        self._seen_s = 0.0

    def saw(self, ts_ms: int) -> None:
        if ts_ms > self._ts_ms:
            self._ts_ms = ts_ms
            self._seen_s = time.monotonic()

    def now_ms(self) -> int:
        if not self._ts_ms:
            return 0
        return self._ts_ms + int((time.monotonic() - self._seen_s) * 1000)


class KlinesShards:
    """The `ShardWorkers` of klines mode, and the frame and reconnect hooks of the pool."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        settings: IngestSettings,
        fetch: Fetch,
        tasks: TaskSet,
        *,
        open_pool: OpenPool,
        token: str,
        symbols: Iterable[str] = (),
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._settings = settings
        self._fetch = fetch
        self._tasks = tasks
        self.token = token
        self.symbols = sorted(symbols)
        self.shards: dict[int, ShardKlines] = {}
        self._shard_of: dict[str, int] = {}
        self._watchers: dict[int, asyncio.Task[None]] = {}
        self.clock = ExchangeClock()
        self.pool = open_pool(
            on_trades=lambda message, received_ms: None,
            on_gap=self.on_reconnected,
            topics_of=self.topics_of,
            on_frame=self.on_frame,
        )

    def topics_of(self, symbol: str) -> list[str]:
        return [topic(interval, symbol) for interval in self._settings.kline_intervals]

    def _symbols_of(self, shard: int) -> list[str]:
        return [s for s in self.symbols if shard_of(s, self._settings.shards) == shard]

    # -- ShardWorkers ------------------------------------------------------------------------------

    async def start_shard(self, shard: int) -> None:
        settings = self._settings
        store = KlineStore(
            self._redis,
            self._keys,
            shard,
            self.token,
            settings.klines_maxlen,
            settings.updates_maxlen,
            settings.history_candles,
        )
        klines = ShardKlines(
            store,
            self._fetch,
            settings.kline_intervals,
            keep_updates=settings.kline_updates_ms > 0,
        )
        self.shards[shard] = klines
        # A dying series task takes the process down (the TaskSet re-raises it).
        self._watchers[shard] = self._tasks.spawn(
            klines.tasks.wait_failed(), name=f"klines-shard-{shard}"
        )
        self._tasks.spawn(self._open_shard(shard, klines), name=f"open-shard-{shard}")

    async def _open_shard(self, shard: int, klines: ShardKlines) -> None:
        """Load every series' last written candle (e.g. after kill -9), then subscribe.

        Off the lease loop, with retries: a Redis hiccup here must not leave an owned shard idle.
        """
        delays = backoff(base_s=0.2, cap_s=5.0)
        while True:
            try:
                await klines.load()
                break
            except REDIS_FAILED as exc:
                log.warning("shard %d: cannot read the last candles yet: %r", shard, exc)
                await asyncio.sleep(next(delays))
        if self.shards.get(shard) is not klines:
            return  # lost or handed back meanwhile
        symbols = self._symbols_of(shard)
        klines.add_symbols(symbols)
        for symbol in symbols:
            self._shard_of[symbol] = shard
        await self.pool.add(symbols)
        if not await self.pool.wait_subscribed(symbols, SUBSCRIBE_TIMEOUT_S):
            log.warning(
                "shard %d: subscriptions not acked within %.0fs", shard, SUBSCRIBE_TIMEOUT_S
            )
        if self.shards.get(shard) is klines:
            # Live confirms are flowing now: fill what ended while nobody served this shard.
            klines.catch_up(self.clock.now_ms())
            log.info("shard %d: serving klines of %d symbols", shard, len(symbols))

    async def stop_shard(self, shard: int, *, graceful: bool) -> None:
        klines = self.shards.pop(shard, None)
        symbols = self._symbols_of(shard)
        for symbol in symbols:
            self._shard_of.pop(symbol, None)
        await self.pool.remove(symbols)
        watcher = self._watchers.pop(shard, None)
        if watcher is not None:
            watcher.cancel()
        if klines is None:
            return
        if graceful:
            await klines.drained(self._settings.shutdown_timeout_s / 2)
        await klines.tasks.cancel_all()

    # -- pool hooks (per frame) --------------------------------------------------------------------

    def on_frame(self, raw: bytes, received_ms: int) -> bool:
        """Take kline pushes (True); op replies and anything else go on to the pool's parser."""
        if b'"kline.' not in raw or b'"op"' in raw:
            return False
        try:
            frame = decode_frame(raw)
            self.clock.saw(frame.ts)
            interval, symbol = parse_topic(frame.topic)
            shard = self._shard_of.get(symbol)
            klines = None if shard is None else self.shards.get(shard)
            if klines is None:
                return True  # in flight after an unsubscribe, or a shard just lost
            category = self._settings.bybit_category
            # Linear sends the confirm of N and the first snapshot of N+1 together: in order.
            for candle in [item_candle(symbol, interval, i, category) for i in frame.data]:
                klines.on_candle(candle)
        except BadMessageError as exc:
            metrics.MALFORMED.inc()
            _limited.warning("malformed", "malformed kline frame: %s: %.200r", exc, raw)
        return True

    def on_reconnected(self, symbols: list[str], from_ms: int, to_ms: int) -> None:
        """A connection is back and resubscribed: catch its series up from REST."""
        by_shard: dict[int, list[str]] = {}
        for symbol in symbols:
            shard = self._shard_of.get(symbol)
            if shard is not None:
                by_shard.setdefault(shard, []).append(symbol)
        for shard, mine in sorted(by_shard.items()):
            log.info(
                "shard %d: %d symbols were away %d ms: catching up",
                shard,
                len(mine),
                to_ms - from_ms,
            )
            self.shards[shard].catch_up(self.clock.now_ms(), mine)

    # -- periodic work -----------------------------------------------------------------------------

    async def sweep(self, stop: asyncio.Event) -> None:
        """Heal series whose confirm never came (e.g. it was sent just before a resubscribe)."""
        while not await sleep_or_stop(stop, SWEEP_S):
            for klines in list(self.shards.values()):
                klines.catch_up(self.clock.now_ms())

    async def flush_updates(self, stop: asyncio.Event) -> None:
        """Write each changed series' latest snapshot once per STREAMER_KLINE_UPDATES_MS."""
        period_s = self._settings.kline_updates_ms / 1000
        while not await sleep_or_stop(stop, period_s):
            for klines in list(self.shards.values()):
                batch = klines.take_updates()
                if batch and not klines.lost:
                    try:
                        await klines.store.write_updates(batch)
                        metrics.UPDATES.inc(len(batch))
                    except _UPDATES_FAILED as exc:  # best effort
                        _limited.warning("updates", "writing updates failed: %r", exc)

    @property
    def pending(self) -> int:
        return sum(k.pending for k in self.shards.values())

    @property
    def owned(self) -> set[int]:
        return set(self.shards)

    async def set_symbols(self, symbols: list[str]) -> None:
        """Follow a refreshed symbol list (new listings subscribed, delistings dropped)."""
        old, new = set(self.symbols), set(symbols)
        self.symbols = sorted(new)
        added = sorted(s for s in new - old if shard_of(s, self._settings.shards) in self.shards)
        removed = sorted(old - new)
        for symbol in removed:
            shard = self._shard_of.pop(symbol, None)
            if shard is not None and shard in self.shards:
                self.shards[shard].remove_symbols([symbol])
        for symbol in added:
            shard = shard_of(symbol, self._settings.shards)
            self._shard_of[symbol] = shard
            self.shards[shard].add_symbols([symbol])
        await self.pool.remove(removed)
        await self.pool.add(added)


def warn_ignored_settings(settings: IngestSettings) -> None:
    if "aggregator_waiter_mode_enabled" in settings.model_fields_set and (
        settings.aggregator_waiter_mode_enabled
    ):
        log.warning(
            "STREAMER_AGGREGATOR_WAITER_MODE_ENABLED is ignored in klines mode: "
            "Bybit confirms its candles itself, there is nothing to wait for"
        )


async def run(settings: IngestSettings, symbols: list[str], stop: asyncio.Event) -> None:
    warn_ignored_settings(settings)
    await startup.run(settings, symbols, stop, _klines)


def _klines(started: Started, open_pool: OpenPool) -> Mode:
    """Klines mode: Bybit's confirmed candles, each series healed from REST (`ShardKlines`)."""
    settings = started.settings
    rest = KlineRest(
        settings.bybit_rest_url, settings.bybit_category, settings.bybit_rest_timeout_s
    )
    shards = KlinesShards(
        started.redis,
        started.keys,
        settings,
        rest.fetch,
        started.tasks,
        open_pool=open_pool,
        token=started.token,
        symbols=started.symbols,
    )
    loops = {"klines-sweep": shards.sweep}
    if settings.kline_updates_ms > 0:
        loops["klines-updates"] = shards.flush_updates

    def log_started() -> None:
        log.info(
            "ingest started in klines mode: %d symbols × %s, %d shards (%s), pool of %d",
            len(started.symbols),
            ",".join(i.label for i in settings.kline_intervals),
            settings.shards,
            settings.shard_ids or "leases",
            settings.bybit_socket_pool_size,
        )

    async def drain() -> Drained:
        # Nothing to flush first: stop_shard(graceful) lets every series queue drain.
        return Drained(settings.shutdown_timeout_s)

    return Mode(
        shards, lambda: shards.pool.connected and bool(shards.shards), log_started, drain, loops
    )
