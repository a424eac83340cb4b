"""`python -m ingest`: Bybit publicTrade → the shard trade streams.

What trades mode brings to the start-up both modes share (`ingest.startup`): the shards feed
one ordered writer (`ingest.writer`), which flushes before the leases are released; gap repair
and the hot standby when they are on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial

import redis.asyncio as aioredis

from common.errors import BadMessageError, ConfigError
from common.keys import Keys
from common.leases import Claiming, renew_period_s
from common.lifecycle import sleep_or_stop
from common.settings import IngestSettings
from ingest import metrics, startup
from ingest.bybit.recent import Recent
from ingest.dedup import Deduper
from ingest.pool import OpenPool
from ingest.repair import OpenRepairer, Repairer, stream_ids
from ingest.rest import fetch_instruments_sync, fetch_recent_sync
from ingest.shards import IngestShards
from ingest.standby import Standby
from ingest.startup import Drained, Loop, Mode, Started
from ingest.symbols import select_symbols
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


async def run(settings: IngestSettings, symbols: list[str], stop: asyncio.Event) -> None:
    await startup.run(settings, symbols, stop, _trades)


def _repairer(settings: IngestSettings, redis: aioredis.Redis, keys: Keys) -> OpenRepairer:
    """Gap repair over Bybit's recent-trade (ingest.repair), for the shards to open over their
    writer, duplicate filter and state."""

    async def fetch(symbol: str) -> Recent:
        return await asyncio.to_thread(
            fetch_recent_sync, settings.bybit_rest_url, settings.bybit_category, symbol,
            settings.bybit_rest_timeout_s,
        )  # fmt: skip

    async def read_ids(shard: int, since_ms: int, symbols: set[str]) -> dict[str, set[str]]:
        return await stream_ids(redis, keys.trades(shard), since_ms, symbols)

    def open_repairer(
        writer: Writer, dedup: Deduper, *, owns: Callable[[int], bool], rank: Callable[[str], int]
    ) -> Repairer:
        return Repairer(
            fetch, writer, dedup, read_ids, owns=owns, rank=rank,
            rate_per_s=settings.repair_requests_per_s, give_up_s=settings.repair_give_up_s,
        )  # fmt: skip

    return open_repairer


async def _keep_watching(shards: IngestShards, period_s: float, stop: asyncio.Event) -> None:
    """Stand by for the shards other replicas own (see ingest.standby)."""
    while not stop.is_set():
        await shards.watch_unowned()
        await sleep_or_stop(stop, period_s)


def _trades(started: Started, open_pool: OpenPool) -> Mode:
    """Trades mode: the shards feed the one ordered writer, with gap repair and hot standby
    when they are on."""
    settings, tasks = started.settings, started.tasks
    open_writer = partial(
        Writer,
        started.redis,
        started.keys,
        started.token,
        clock_interval_ms=settings.clock_interval_ms,
        buffer_max=settings.ingest_buffer_max,
        batch_max=settings.ingest_batch_max,
        retention_s=settings.trades_retention_s,
        gather_ms=settings.ingest_gather_ms,
    )
    repair = settings.repair_enabled
    standby = settings.ingest_standby_s > 0 and settings.fixed_shards() is None
    shards = IngestShards(
        started.redis,
        started.keys,
        settings.shards,
        tasks,
        settings.shutdown_timeout_s,
        open_writer=open_writer,
        open_pool=open_pool,
        open_repairer=_repairer(settings, started.redis, started.keys) if repair else None,
        repair_lookback_ms=int(2 * settings.repair_give_up_s * 1000) if repair else 0,
        symbols=started.symbols,
        standby=Standby(int(settings.ingest_standby_s * 1000)) if standby else None,
        cold_claim_after_ms=2 * settings.lease_ttl_ms,
    )
    writer = shards.writer
    if shards.repairer is not None:
        tasks.spawn(shards.repairer.run(started.stop), name="repair")
    writer_stop = asyncio.Event()
    writer_task = tasks.spawn(writer.run(writer_stop), name="writer")
    pool = shards.pool
    metrics.TRADE_LAG.set_function(
        lambda: max((c.lag_ms for c in pool.connections), default=0) / 1000
    )

    def log_started() -> None:
        log.info(
            "ingest started: %d symbols, %d shards (%s), pool of %d",
            len(started.symbols),
            settings.shards,
            settings.shard_ids or "leases",
            settings.bybit_socket_pool_size,
        )

    async def drain() -> Drained:
        await writer.drained(settings.shutdown_timeout_s / 2)
        return Drained(settings.shutdown_timeout_s / 2, frozenset({writer_task}), writer_stop.set)

    loops: dict[str, Loop] = {}
    claiming = Claiming()
    if standby:
        period_s = renew_period_s(settings.lease_ttl_ms)
        loops["standby"] = lambda stop: _keep_watching(shards, period_s, stop)
        claiming = Claiming(shards.standby_ready, shards.prefer, shards.warm)
    return Mode(
        shards, lambda: writer.healthy and pool.connected, log_started, drain, loops, claiming
    )
