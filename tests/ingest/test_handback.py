"""A graceful hand-back while one of this replica's connections is down reports that window.

Real parts: the simulator as the exchange (real WebSocket connections), a real redis-server, the
real pool, shards and writer. The exchange goes away (SIGSTOP, then killed) so the connections
cannot come back; the shard is handed back meanwhile: its stream must end with a `reconnect` gap
for the shard's symbols from before the outage to the hand-back, written under the lease.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from common.keys import Keys
from common.lifecycle import TaskSet
from common.sharding import shard_of
from common.wire import Category, GapEntry, TradesEntry, entry_decoder
from ingest.pool import Pool
from ingest.rest import fetch_instruments_sync
from ingest.shards import IngestShards
from ingest.writer import Writer
from tests.ingest.e2e_support import start_simulator
from tests.support import replies
from tests.support.waiting import async_wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

KEYS = Keys("t")
TOKEN = "ingest:handback"


async def test_a_hand_back_during_a_reconnect_reports_the_open_window(
    tmp_path: Path, redis_url: str
) -> None:
    sim = start_simulator(tmp_path, "--symbols", "6", "--rate", "200")
    client = aioredis.Redis.from_url(redis_url)
    tasks = TaskSet()
    pool_stop, writer_stop = asyncio.Event(), asyncio.Event()
    try:
        symbols = sorted(i.symbol for i in fetch_instruments_sync(sim.rest_url, Category.LINEAR, 5))
        shard = shard_of(symbols[0], 2)
        mine = [s for s in symbols if shard_of(s, 2) == shard]
        await client.set(KEYS.lease("ingest", shard), TOKEN)
        open_writer = partial(
            Writer, client, KEYS, TOKEN, clock_interval_ms=50, buffer_max=10_000, batch_max=100,
            retention_s=3600,
        )  # fmt: skip
        open_pool = partial(
            Pool, sim.ws_url, Category.LINEAR, 1, ping_interval_s=1.0, dead_after_s=3.0,
            tasks=tasks, stop=pool_stop,
        )  # fmt: skip
        shards = IngestShards(
            client, KEYS, 2, tasks, 5.0, open_writer=open_writer, open_pool=open_pool,
            symbols=symbols,
        )  # fmt: skip
        writer = shards.writer
        pool = shards.pool
        tasks.spawn(writer.run(writer_stop), name="writer")
        await shards.start_shard(shard)

        async def entries() -> list[object]:
            rows = replies.entries(await client.xrange(KEYS.trades(shard)))
            return [entry_decoder.decode(fields[b"data"]) for _, fields in rows]

        async def trades_written() -> bool:
            return any(isinstance(e, TradesEntry) for e in await entries())

        await async_wait_until(trades_written, 20, "the shard's first trades")
        assert pool.open_gaps(mine) == []
        sim.proc.kill9()  # the exchange is gone: the connection drops and cannot come back
        down_ms = int(time.time() * 1000)

        async def dropped() -> bool:
            return bool(pool.open_gaps(mine))

        await async_wait_until(dropped, 10, "the connection to drop")
        await shards.stop_shard(shard, graceful=True)
        handed_back_ms = int(time.time() * 1000)

        gaps = [e for e in await entries() if isinstance(e, GapEntry)]
        assert len(gaps) == 1, gaps
        gap = gaps[0]
        assert gap.reason == "reconnect"
        assert sorted(gap.symbols) == sorted(mine)
        assert gap.from_ms <= down_ms <= gap.to_ms <= handed_back_ms
        last_trade = max(
            t.time_ms for e in await entries() if isinstance(e, TradesEntry) for t in e.trades
        )
        assert gap.from_ms <= last_trade + 1000  # from the last frame received, not later
    finally:
        pool_stop.set()
        writer_stop.set()
        await tasks.cancel_all()
        sim.proc.stop()
        await client.aclose()
