"""The start-up both ingest modes share (trades: `ingest.service`, klines: `ingest.klines.service`).

Start-up order: the symbols are checked against Bybit before anything else (`resolve_symbols`,
called from `__main__`, so a typo exits 2 at once); then Redis is awaited (a process under
supervisord or compose should come up whenever Redis does, so this waits, logging each retry);
then the mode is built, its shards claimed and each owned shard's symbols subscribed over the pool.

Shutdown order matters for the fence: close the sockets, let the mode drain (trades: the writer
flushes), then let the claimer stop each shard (its last entries, such as the gaps of connections
still down, written by the writer, which still runs) and only then release the leases (the writes
are refused once the lease is gone); the writer stops after that.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.asyncio as aioredis

from common.backoff import backoff
from common.errors import BadMessageError, RetryableError
from common.keys import Keys
from common.leases import Claiming, ShardClaimer, ShardWorkers, new_token
from common.lifecycle import TaskSet, sleep_or_stop, until_stopped
from common.metrics import serve_metrics
from common.redisconn import connect
from common.rediserrors import REDIS_FAILED
from common.settings import IngestSettings
from ingest import backfill
from ingest.connection import OnFrame, OnGap, OnTrades, TopicsOf
from ingest.pool import OpenPool, Pool
from ingest.rest import fetch_instruments
from ingest.symbols import refreshed_symbols

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Started:
    """What a mode is built from, once Redis answers and `<p>:meta` is written."""

    settings: IngestSettings
    symbols: list[str]
    redis: aioredis.Redis
    keys: Keys
    stop: asyncio.Event
    tasks: TaskSet
    token: str  # this process's lease token: the fence of every write it makes


class Shards(ShardWorkers, Protocol):
    """A mode's shards: started and stopped by the leases, told of symbol list changes."""

    async def set_symbols(self, symbols: list[str]) -> None: ...


def _nothing() -> None:
    pass


@dataclass(frozen=True, slots=True)
class Drained:
    """What the lease release waits for, and for how long at most: the claimer (which stops
    each shard, then releases the leases), then `released` is called, then `tasks`."""

    timeout_s: float
    tasks: frozenset[asyncio.Task[Any]] = frozenset()
    released: Callable[[], None] = _nothing
    """Trades: the writer stops here, not before: a shard's hand-back writes the gaps of its
    connections still down, up to the hand-back, and waits for the writer to write them."""


Loop = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class Mode:
    """One mode's part of the start-up: its shards (which open the pool with their own frame
    hooks) and the hooks the shared skeleton calls."""

    shards: Shards
    healthy: Callable[[], bool]
    """/health: 200 while this is true."""
    log_started: Callable[[], None]
    drain: Callable[[], Awaitable[Drained]]
    """Called once the sockets are closed, before the leases are released."""
    loops: Mapping[str, Loop] = field(default_factory=dict)
    """Run beside the shards (started after the claimer) until the stop event is set."""
    claiming: Claiming = field(default_factory=Claiming)


Build = Callable[[Started, OpenPool], Mode]


def redacted(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


async def wait_for_redis(redis: aioredis.Redis, url: str, stop: asyncio.Event) -> bool:
    """Block until Redis answers (True) or `stop` (False), logging each failed attempt."""
    for delay in backoff(base_s=0.2, cap_s=5.0):
        try:
            await redis.ping()
            return True
        except REDIS_FAILED as exc:
            log.warning(
                "redis at %s unavailable (%s): retrying in %.1fs", redacted(url), exc, delay
            )
        if await sleep_or_stop(stop, delay):
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


async def run(
    settings: IngestSettings, symbols: list[str], stop: asyncio.Event, build: Build
) -> None:
    """Wait for Redis, describe the pipeline in `<p>:meta`, then serve the mode `build` makes,
    with the history backfill beside it when STREAMER_HISTORY_BACKFILL is set."""
    keys = Keys(settings.redis_prefix)
    redis = connect(settings)
    try:
        if await wait_for_redis(redis, settings.redis_url, stop):
            await write_meta(redis, keys, settings)
            started = Started(settings, symbols, redis, keys, stop, TaskSet(), new_token("ingest"))
            await backfill.alongside(_serve(started, build), settings, symbols, redis, keys, stop)
    finally:
        await redis.aclose()


async def _serve(started: Started, build: Build) -> None:
    settings, tasks = started.settings, started.tasks
    pool_stop, claim_stop = asyncio.Event(), asyncio.Event()

    def open_pool(
        *,
        on_trades: OnTrades,
        on_gap: OnGap,
        topics_of: TopicsOf | None = None,
        on_frame: OnFrame | None = None,
    ) -> Pool:
        return Pool(
            settings.ws_url,
            settings.bybit_category,
            settings.bybit_socket_pool_size,
            ping_interval_s=settings.bybit_ping_interval_s,
            dead_after_s=settings.bybit_dead_after_s,
            on_trades=on_trades,
            on_gap=on_gap,
            tasks=tasks,
            stop=pool_stop,
            topics_of=topics_of,
            on_frame=on_frame,
        )

    mode = build(started, open_pool)
    claimer = ShardClaimer(
        started.redis,
        started.keys,
        "ingest",
        settings.shards,
        settings.fixed_shards(),
        settings.lease_ttl_ms,
        mode.shards,
        token=started.token,
        claiming=mode.claiming,
    )
    claim_task = tasks.spawn(claimer.run(claim_stop), name="claimer")
    for name, loop in mode.loops.items():
        tasks.spawn(loop(started.stop), name=name)
    if settings.bybit_symbols_refresh_s > 0:
        tasks.spawn(_refresh(settings, mode.shards, started.stop), name="symbols-refresh")
    server = None
    if settings.metrics_port:
        server = await serve_metrics(settings.metrics_host, settings.metrics_port, mode.healthy)
    mode.log_started()
    try:
        await until_stopped(started.stop, tasks)
    finally:
        pool_stop.set()
        drained = await mode.drain()
        claim_stop.set()
        until_s = time.monotonic() + drained.timeout_s
        await asyncio.wait({claim_task}, timeout=drained.timeout_s)
        drained.released()
        if drained.tasks:
            await asyncio.wait(drained.tasks, timeout=max(0.0, until_s - time.monotonic()))
        await tasks.cancel_all()
        if server is not None:
            server.close()


async def _refresh(settings: IngestSettings, shards: Shards, stop: asyncio.Event) -> None:
    while not await sleep_or_stop(stop, settings.bybit_symbols_refresh_s):
        try:
            instruments = await fetch_instruments(
                settings.bybit_rest_url, settings.bybit_category, settings.bybit_rest_timeout_s
            )
        except (RetryableError, BadMessageError) as exc:
            log.warning("symbol refresh failed, keeping the current list: %s", exc)
            continue
        await shards.set_symbols(refreshed_symbols(settings, instruments))
