"""The duplicate filter across a restart, against a real redis-server (issue 14): the checkpoint's
`ids_from` moves on with stream time (seconds of trades to re-read, not the day of a `1d` grid),
and the filter a resume rebuilds is the one the process had."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from aggregate import checkpoint
from aggregate.service import core_config
from aggregate.shard import ShardAggregator
from common.keys import Keys
from common.settings import AggregateSettings
from common.wire import STREAM_FIELD, ClockEntry, Side, Trade, TradesEntry, entry_encoder
from tests.support import replies

pytestmark = pytest.mark.redis

DAY0 = 1_786_320_000_000  # 2026-08-10 00:00 UTC


async def _worker(client: aioredis.Redis, keys: Keys) -> ShardAggregator:
    settings = AggregateSettings(kline_intervals="1d,1w,1M")
    worker = ShardAggregator(
        client, keys, 0, core_config(settings), "linear", "me", 100, 10**6, 1000
    )
    await client.set(keys.lease("aggregate", 0), "me")
    await worker.load()
    return worker


def _trade(t: int, serial: int) -> bytes:
    trade = Trade(t, f"{100 + serial % 7}.5", "0.01", Side.BUY, f"id{serial}")
    return entry_encoder.encode(TradesEntry("BTCUSDT", [trade]))


def _id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq)


def test_a_resume_rebuilds_the_duplicate_filter_from_seconds_of_stream(redis_url: str) -> None:
    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url, socket_timeout=None)
        client.response_callbacks.pop("XREAD", None)
        keys = Keys("ids")
        ids: dict[int, str] = {}
        for serial in range(1, 1201):  # 120 s of stream, 10 trades a second
            t = DAY0 + serial * 100
            ids[serial] = replies.value(
                await client.xadd(keys.trades(0), {STREAM_FIELD: _trade(t, serial)})
            ).decode()
            if serial % 5 == 0:
                await client.xadd(
                    keys.trades(0), {STREAM_FIELD: entry_encoder.encode(ClockEntry(t))}
                )
        first = await _worker(client, keys)
        while await first.step(block_ms=None):
            await first.write()  # as a live process writes, at least every second
        await first.write(full=True)
        saved = checkpoint.decoder.decode(
            replies.value(await client.hget(keys.state(0), checkpoint.CHECKPOINT))
        )
        # Trades that came more than two filter generations (2 x 10.08 s) ago are not re-read.
        horizon_ms = first.core.ids_horizon_ms
        re_read = [s for s, entry_id in ids.items() if _id(entry_id) > _id(saved.ids_from)]
        assert 1200 - 10 * 2 * horizon_ms // 1000 <= min(re_read) <= 1200 - 10 * horizon_ms // 1000
        second = await _worker(client, keys)
        for symbol in ("BTCUSDT", None):
            assert second.core.remembered_ids(symbol) == first.core.remembered_ids(symbol) > 0
        # A copy from 6 s before the end still counts once after the restart.
        await client.xadd(keys.trades(0), {STREAM_FIELD: _trade(DAY0 + 1140 * 100, 1140)})
        await second.step(block_ms=None)
        assert second.core.state.counters.duplicates == 1
        await client.aclose()

    asyncio.run(scenario())
