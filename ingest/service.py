"""`python -m ingest`: Bybit publicTrade → the shard trade streams.

Start-up order: the symbols are checked against Bybit before anything else (`resolve_symbols`,
called from `__main__`, so a typo exits 2 at once); then Redis is awaited (a process under
supervisord or compose should come up whenever Redis does, so this waits, logging each retry);
then shards are claimed and each owned shard's symbols subscribed over the pool.

Shutdown order matters for the fence: close the sockets, let the writer flush, and only then
release the leases (the writes are refused once the lease is gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common.backoff import backoff
from common.errors import BadMessageError, ConfigError, RetryableError
from common.keys import Keys
from common.leases import ShardClaimer
from common.lifecycle import TaskSet, until_stopped
from common.metrics import serve_metrics
from common.redisconn import connect
from common.settings import IngestSettings
from ingest.pool import Pool
from ingest.rest import fetch_instruments, fetch_instruments_sync
from ingest.shards import IngestShards
from ingest.standby import Standby
from ingest.symbols import refreshed_symbols, select_symbols
from ingest.writer import Writer

log = logging.getLogger(__name__)


def resolve_symbols(settings: IngestSettings) -> list[str]:
    """The symbols to serve. ConfigError: bad symbols; RetryableError: REST unreachable."""
    try:
        instruments = fetch_instruments_sync(
            settings.bybit_rest_url, settings.bybit_category, settings.bybit_rest_timeout_s
        )
    except BadMessageError as exc:
        raise ConfigError(f"STREAMER_BYBIT_REST_URL={settings.bybit_rest_url}: {exc}") from None
    return select_symbols(settings, instruments)


def redacted(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


async def wait_for_redis(redis: aioredis.Redis, url: str, stop: asyncio.Event) -> bool:
    """Block until Redis answers (True) or `stop` (False), logging each failed attempt."""
    for delay in backoff(base_s=0.2, cap_s=5.0):
        try:
            await redis.ping()
            return True
        except (RedisError, OSError) as exc:
            log.warning(
                "redis at %s unavailable (%s): retrying in %.1fs", redacted(url), exc, delay
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return False
    return False  # pragma: no cover - backoff never ends


async def write_meta(redis: aioredis.Redis, keys: Keys, settings: IngestSettings) -> None:
    await redis.hset(
        keys.meta(),
        mapping={
            "shards": settings.shards,
            "intervals": ",".join(i.label for i in settings.kline_intervals),
            "mode": "klines" if settings.klines_mode else "trades",
            "category": settings.bybit_category.value,
        },
    )


Serve = Callable[[IngestSettings, list[str], aioredis.Redis, Keys, asyncio.Event], Awaitable[None]]


async def run(
    settings: IngestSettings, symbols: list[str], stop: asyncio.Event, serve: Serve | None = None
) -> None:
    """Wait for Redis, describe the pipeline in `<p>:meta`, then serve (trades by default)."""
    keys = Keys(settings.redis_prefix)
    redis = connect(settings)
    try:
        if await wait_for_redis(redis, settings.redis_url, stop):
            await write_meta(redis, keys, settings)
            await (serve or _serve)(settings, symbols, redis, keys, stop)
    finally:
        await redis.aclose()


async def _keep_watching(shards: IngestShards, period_s: float, stop: asyncio.Event) -> None:
    """Stand by for the shards other replicas own (see ingest.standby)."""
    while not stop.is_set():
        await shards.watch_unowned()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), period_s)


async def _serve(
    settings: IngestSettings,
    symbols: list[str],
    redis: aioredis.Redis,
    keys: Keys,
    stop: asyncio.Event,
) -> None:
    tasks = TaskSet()
    writer = Writer(
        redis,
        keys,
        "",
        clock_interval_ms=settings.clock_interval_ms,
        buffer_max=settings.ingest_buffer_max,
        batch_max=settings.ingest_batch_max,
        retention_s=settings.trades_retention_s,
    )
    shards = IngestShards(redis, keys, settings.shards, writer, tasks, settings.shutdown_timeout_s)
    shards.symbols = sorted(symbols)
    claimer = ShardClaimer(
        redis,
        keys,
        "ingest",
        settings.shards,
        settings.fixed_shards(),
        settings.lease_ttl_ms,
        shards,
    )
    writer.token = claimer.token
    pool_stop, writer_stop, claim_stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
    pool = shards.pool = Pool(
        settings.ws_url,
        settings.bybit_category,
        settings.bybit_socket_pool_size,
        ping_interval_s=settings.bybit_ping_interval_s,
        dead_after_s=settings.bybit_dead_after_s,
        on_trades=shards.on_trades,
        on_gap=shards.on_gap,
        tasks=tasks,
        stop=pool_stop,
    )
    writer_task = tasks.spawn(writer.run(writer_stop), name="writer")
    claim_task = tasks.spawn(claimer.run(claim_stop), name="claimer")
    if settings.ingest_standby_s > 0 and settings.fixed_shards() is None:
        shards.standby = Standby(int(settings.ingest_standby_s * 1000))
        claimer.ready = shards.standby_ready
        claimer.prefer = shards.prefer
        claimer.warm = shards.warm
        shards.cold_claim_after_ms = 2 * settings.lease_ttl_ms
        tasks.spawn(_keep_watching(shards, claimer.period_s, stop), name="standby")
    if settings.bybit_symbols_refresh_s > 0:
        tasks.spawn(_refresh(settings, shards, stop), name="symbols-refresh")
    server = None
    if settings.metrics_port:
        server = await serve_metrics(
            settings.metrics_host,
            settings.metrics_port,
            lambda: writer.healthy and pool.connected,
        )
    log.info(
        "ingest started: %d symbols, %d shards (%s), pool of %d",
        len(symbols),
        settings.shards,
        settings.shard_ids or "leases",
        settings.bybit_socket_pool_size,
    )
    try:
        await until_stopped(stop, tasks)
    finally:
        pool_stop.set()
        await writer.drained(settings.shutdown_timeout_s / 2)
        writer_stop.set()
        claim_stop.set()
        await asyncio.wait({writer_task, claim_task}, timeout=settings.shutdown_timeout_s / 2)
        await tasks.cancel_all()
        if server is not None:
            server.close()


async def _refresh(settings: IngestSettings, shards: IngestShards, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.bybit_symbols_refresh_s)
        if stop.is_set():
            return
        try:
            instruments = await fetch_instruments(
                settings.bybit_rest_url, settings.bybit_category, settings.bybit_rest_timeout_s
            )
        except (RetryableError, BadMessageError) as exc:
            log.warning("symbol refresh failed, keeping the current list: %s", exc)
            continue
        await shards.set_symbols(refreshed_symbols(settings, instruments))
