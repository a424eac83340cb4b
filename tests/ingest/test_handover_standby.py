"""A replica that handed a shard over gracefully takes it back warm, however soon the next
owner dies.

Found by the compose test: a rebalance handed three shards to a new replica, which was killed
140 ms later, before it had written past the hand-back by PREFER_SLACK_MS. The replica that
handed them over held everything (what it received before the hand-back it had written itself,
the rest was in its standby buffer), but its coverage counted from the hand-back only: it waited
to claim the shards cold, 23 s later, with an unowned gap that Bybit's recent trades did not fill.
Until the next owner has written, though, the shard is not taken back: the first version of the
fix did, right after each rebalance's hand-over, and the fault suite's repairs never ended.
Real parts: a real redis-server, the real shards, standby and writer; the exchange is the stand-in
of test_takeover_order.
"""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from common.lifecycle import TaskSet
from common.wire import GapEntry, TradesEntry, entry_decoder, entry_encoder
from tests.ingest.test_takeover_order import KEYS, SYMBOL, Exchange, message, standby_shards
from tests.support import replies
from tests.support.waiting import async_wait_until

TOKEN = "ingest:handover"


class Connections(Exchange):
    """The stand-in pool, with every connection up (no open reconnect window to report)."""

    def open_gaps(self, symbols: list[str]) -> list[tuple[list[str], int]]:
        return []


async def test_a_shard_handed_over_is_taken_back_warm_when_its_next_owner_dies_at_once(
    redis_url: str,
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    tasks, stop = TaskSet(), asyncio.Event()
    try:
        shards = await standby_shards(
            client, tasks, stop, TOKEN, Connections(), cold_claim_after_ms=60_000
        )
        await shards.start_shard(0)
        now = time.time_ns() // 1_000_000
        shards.on_trades(message(now - 5, "mine"), now)
        await async_wait_until(lambda: _has(client, "mine"), 10, "our own trade written")

        await shards.stop_shard(0, graceful=True)  # the hand-over: the lease goes to the next owner
        await client.delete(KEYS.lease("ingest", 0))
        handed_ms = time.time_ns() // 1_000_000
        shards.on_trades(message(handed_ms, "after"), handed_ms + 2)  # on standby now
        # Nobody wrote since: the shard is on its way to the replica it was handed to, and we
        # do not take it back (a rebalance would hand it over and take it back every step).
        assert not await shards.warm(0)
        theirs = TradesEntry(SYMBOL, [message(handed_ms + 1, "theirs").trades[0]], 0, handed_ms + 3)
        await client.xadd(KEYS.trades(0), {"data": entry_encoder.encode(theirs)})
        # ... and the next owner dies right after its first write; its lease has expired

        assert await shards.warm(0)
        assert await shards.prefer(0)
        await client.set(KEYS.lease("ingest", 0), TOKEN)
        await shards.start_shard(0)  # taken back from the standby buffer
        await async_wait_until(lambda: _has(client, "after"), 10, "the buffered trade written")
        entries = await _entries(client)
        ids = [t.trade_id for e in entries if isinstance(e, TradesEntry) for t in e.trades]
        assert ids == ["mine", "theirs", "after"]
        assert [e for e in entries if isinstance(e, GapEntry)] == []  # nothing unowned
    finally:
        stop.set()
        await tasks.cancel_all()
        await client.aclose()


async def _entries(client: aioredis.Redis) -> list[object]:
    rows = replies.entries(await client.xrange(KEYS.trades(0)))
    return [entry_decoder.decode(fields[b"data"]) for _, fields in rows]


async def _has(client: aioredis.Redis, trade_id: str) -> bool:
    entries = await _entries(client)
    return any(
        t.trade_id == trade_id for e in entries if isinstance(e, TradesEntry) for t in e.trades
    )
