"""A hot takeover writes the standby's buffer before any message that arrives during the takeover.

Found by the fault suite's ledger check: right after start-up a replica took a shard over from its
standby, and a symbol's live trades went into the stream ahead of its older buffered ones. The
aggregator trusts a symbol's trades to come in time order, so it started that symbol at the later
trade (its first candle is partial, never written) and dropped the earlier one: a candle missing
and a trade lost with no gap. Real parts: a real redis-server, the real shards, standby and writer;
the one stand-in is the exchange, whose message arrives while the takeover reads the stream.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

import redis.asyncio as aioredis

from common.keys import Keys
from common.lifecycle import TaskSet
from common.wire import ClockEntry, GapEntry, Side, Trade, TradesEntry, entry_decoder
from ingest.bybit.messages import TradeMessage
from ingest.shards import IngestShards
from ingest.standby import Standby
from ingest.writer import Writer
from tests.support import replies
from tests.support.waiting import async_wait_until

KEYS = Keys("t")
TOKEN = "ingest:takeover"
SYMBOL = "BTCUSDT"
START_MS = 1_786_310_000_000


class Exchange:
    """Stands in for the pool: subscriptions are acked at once."""

    async def add(self, symbols: list[str]) -> None:
        pass

    async def remove(self, symbols: list[str]) -> None:
        pass

    async def wait_subscribed(self, symbols: list[str], timeout_s: float) -> bool:
        return True


def message(time_ms: int, trade_id: str) -> TradeMessage:
    return TradeMessage(SYMBOL, time_ms, [Trade(time_ms, "65000.1", "0.001", Side.BUY, trade_id)])


async def standby_shards(
    client: aioredis.Redis,
    tasks: TaskSet,
    stop: asyncio.Event,
    token: str,
    exchange: Exchange,
    **options: Any,
) -> IngestShards:
    """One shard's real shards, standby (10 s) and writer (running until `stop`) over
    `exchange`; the lease of shard 0 is `token`'s."""
    await client.set(KEYS.lease("ingest", 0), token)
    return shards_over(client, tasks, stop, token, exchange, Standby(window_ms=10_000), **options)


def shards_over(
    client: aioredis.Redis,
    tasks: TaskSet,
    stop: asyncio.Event,
    token: str,
    exchange: Exchange,
    standby: Standby | None,
    **options: Any,
) -> IngestShards:
    """One shard's real shards and writer (running until `stop`) over `exchange`, writing
    as `token`."""
    open_writer = partial(
        Writer, client, KEYS, token, clock_interval_ms=50, buffer_max=10_000, batch_max=100,
        retention_s=3600,
    )  # fmt: skip
    shards = IngestShards(
        client, KEYS, 1, tasks, 5.0, open_writer=open_writer,
        open_pool=lambda **hooks: exchange,  # type: ignore[arg-type]  # a fake pool
        symbols=[SYMBOL], standby=standby, **options,
    )  # fmt: skip
    tasks.spawn(shards.writer.run(stop), name="writer")
    return shards


async def test_buffered_trades_go_before_those_arriving_during_the_takeover(
    redis_url: str,
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    tasks, stop = TaskSet(), asyncio.Event()
    try:
        shards = await standby_shards(client, tasks, stop, TOKEN, Exchange())
        standby = shards.standby
        assert standby is not None
        await shards._watch(0)  # on standby for shard 0

        async def watched() -> bool:
            return 0 in standby.watched()

        await async_wait_until(watched, 5, "standby coverage")
        shards.on_trades(message(START_MS, "older"), START_MS + 5)  # buffered on standby

        real_xrange = client.xrange
        arrived: list[bool] = []

        async def xrange_with_a_live_message(*args: Any, **kwargs: Any) -> Any:
            if not arrived:  # Bybit's next message arrives while the takeover reads the stream
                arrived.append(True)
                shards.on_trades(message(START_MS + 20, "newer"), START_MS + 25)
            return await real_xrange(*args, **kwargs)

        client.xrange = xrange_with_a_live_message  # type: ignore[method-assign]  # a spy
        await shards.start_shard(0)  # the takeover from standby
        client.xrange = real_xrange  # type: ignore[method-assign]  # the spy removed
        assert arrived

        async def written() -> list[str]:
            rows = replies.entries(await client.xrange(KEYS.trades(0)))
            entries = [entry_decoder.decode(fields[b"data"]) for _, fields in rows]
            return [t.trade_id for e in entries if isinstance(e, TradesEntry) for t in e.trades]

        await async_wait_until(lambda: _two(written), 10, "both trades written")
        assert await written() == ["older", "newer"]
    finally:
        stop.set()
        await tasks.cancel_all()
        await client.aclose()


async def _two(written: Any) -> bool:
    return len(await written()) == 2


class SlowExchange(Exchange):
    """Acks subscriptions only once `acked` is set."""

    def __init__(self) -> None:
        self.acked = asyncio.Event()

    async def wait_subscribed(self, symbols: list[str], timeout_s: float) -> bool:
        await asyncio.wait_for(self.acked.wait(), timeout_s)
        return True


async def test_a_new_stream_taken_before_its_standby_is_acked_claims_nothing_until_then(
    redis_url: str,
) -> None:
    """Two replicas started together: one takes a shard whose stream is new while its standby
    subscriptions are still unacked (the other replica, subscribed earlier, got the trades sent
    meanwhile). Found by the hot-standby kill test: the shard was served "from standby" at once,
    its clock entries said everything was in the stream while trades sent before the acks were
    in no stream and under no gap. What it received is written; the clock waits for the acks,
    as a cold start's does."""
    client = aioredis.Redis.from_url(redis_url)
    tasks, stop = TaskSet(), asyncio.Event()
    exchange = SlowExchange()
    try:
        shards = await standby_shards(client, tasks, stop, TOKEN, exchange)
        await shards._watch(0)  # subscribing, not acked
        shards.on_trades(message(START_MS, "early"), START_MS + 5)  # one ack came: buffered
        await shards.start_shard(0)  # the stream is new: nothing to take over from

        async def entries() -> list[object]:
            rows = replies.entries(await client.xrange(KEYS.trades(0)))
            return [entry_decoder.decode(fields[b"data"]) for _, fields in rows]

        async def early_written() -> bool:
            return any(isinstance(e, TradesEntry) for e in await entries())

        await async_wait_until(early_written, 10, "the buffered trade written")
        assert 0 not in shards.writer.ready
        assert not [e for e in await entries() if isinstance(e, ClockEntry)]
        exchange.acked.set()

        async def clocked() -> bool:
            return any(isinstance(e, ClockEntry) for e in await entries())

        await async_wait_until(clocked, 10, "clock entries once the subscriptions are acked")
        got = await entries()
        trades = [t.trade_id for e in got if isinstance(e, TradesEntry) for t in e.trades]
        assert trades == ["early"]
        assert not [e for e in got if isinstance(e, GapEntry)]  # a new stream: no unowned time
    finally:
        stop.set()
        await tasks.cancel_all()
        await client.aclose()
