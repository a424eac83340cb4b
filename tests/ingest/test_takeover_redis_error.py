"""A takeover whose reads of the shard's stream fail lets the lease go and takes the shard later.

Found by reading the takeover: `read_tail` answered a failed read with "a new stream", so the new
owner wrote no unowned gap and its duplicate filter knew none of the trades written (the dead
owner's last trades, which Bybit may send this replica too, were written twice); and a failure
later in `start_shard` (the standby's seeding) left the shard in the claimer's hands, its lease
renewed every period and its trades written by nobody, with no gap, until a restart. Real parts:
a real redis-server whose ACL denies the replica the read (NOPERM: Redis refusing, as it does
while loading or out of memory), the real claimer, shards, standby and writer; the exchange is
the one stand-in (tests.ingest.test_takeover_order.Exchange).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError

from common.leases import Claiming, ShardClaimer
from common.lifecycle import TaskSet
from common.wire import GapEntry, Side, Trade, TradesEntry, entry_decoder
from ingest.bybit.messages import TradeMessage
from ingest.shards import IngestShards
from ingest.standby import Standby
from ingest.writer import Writer, now_ms
from tests.ingest.test_takeover_order import KEYS, SYMBOL, Exchange, shards_over
from tests.support import replies
from tests.support.waiting import async_wait_until

LEASE = KEYS.lease("ingest", 0)
USER, PASSWORD = "takeover", "takeover-pw"


async def _acl(admin: aioredis.Redis, *args: str) -> None:
    await admin.execute_command("ACL", *args)  # type: ignore[no-untyped-call]


def _message(time_ms: int, *trade_ids: str) -> TradeMessage:
    trades = [Trade(time_ms, "65000.1", "0.001", Side.BUY, trade_id) for trade_id in trade_ids]
    return TradeMessage(SYMBOL, time_ms, trades)


async def _dead_owner_wrote(admin: aioredis.Redis, dead_ms: int, *trade_ids: str) -> None:
    """A previous owner wrote these trades of `dead_ms`, received 5 ms later, then died (its
    lease gone)."""
    await admin.set(LEASE, "ingest:dead")
    writer = Writer(admin, KEYS, "ingest:dead", clock_interval_ms=50, buffer_max=100,
                    batch_max=100, retention_s=3600)  # fmt: skip
    message = _message(dead_ms, *trade_ids)
    writer.put_trades(0, SYMBOL, message.trades, message.exchange_ms, dead_ms + 5)
    stop = asyncio.Event()
    stop.set()
    await writer.flush_once(stop)
    await admin.delete(LEASE)


async def _entries(admin: aioredis.Redis) -> list[Any]:
    rows = replies.entries(await admin.xrange(KEYS.trades(0)))
    return [entry_decoder.decode(fields[b"data"]) for _, fields in rows]


def _trade_ids(entries: list[Any]) -> list[str]:
    return [t.trade_id for e in entries if isinstance(e, TradesEntry) for t in e.trades]


async def _replica(
    redis_url: str, tasks: TaskSet, stop: asyncio.Event, standby: Standby | None
) -> tuple[aioredis.Redis, IngestShards, ShardClaimer]:
    """A replica connected as USER: its shards (one shard, writer running until `stop`) and
    its claimer (leases, with the standby's claiming rules when it has one)."""
    client = aioredis.Redis.from_url(redis_url, username=USER, password=PASSWORD)
    token = "ingest:taker"
    shards = shards_over(
        client, tasks, stop, token, Exchange(), standby, cold_claim_after_ms=60_000
    )
    claiming = Claiming(shards.standby_ready, shards.prefer, shards.warm) if standby else Claiming()
    claimer = ShardClaimer(
        client, KEYS, "ingest", 1, None, 3000, shards, token=token, claiming=claiming
    )
    return client, shards, claimer


async def _refused_then_taken(
    admin: aioredis.Redis, shards: IngestShards, claimer: ShardClaimer, denied: str
) -> list[Any]:
    """The claim while `denied` is refused: nothing claimed, nothing written; then allowed:
    the entries the stream holds once the shard is served."""
    before = await _entries(admin)
    with pytest.raises(NoPermissionError):
        await claimer.step()
    assert claimer.owned == {}
    assert await admin.get(LEASE) is None  # let go at once, not renewed for nobody
    assert shards.owned == set() and shards.writer.ready == set()
    assert await _entries(admin) == before
    await _acl(admin, "SETUSER", USER, f"+{denied}")
    await claimer.step()
    assert set(claimer.owned) == {0}
    assert await admin.get(LEASE) == claimer.token.encode()

    async def served() -> bool:
        return 0 in shards.writer.ready

    await async_wait_until(served, 10, "the shard served")
    return await _entries(admin)


@pytest.mark.parametrize("standby", [False, True], ids=["cold", "warm"])
async def test_a_takeover_whose_stream_read_fails_lets_the_lease_go_and_loses_nothing(
    redis_url: str, standby: bool
) -> None:
    admin = aioredis.Redis.from_url(redis_url)
    # cold: the tail's read (read_tail) refused; warm: the standby's seeding read (XRANGE)
    denied = "xrange" if standby else "xrevrange"
    await _acl(admin, "SETUSER", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all", f"-{denied}")
    tasks, stop = TaskSet(), asyncio.Event()
    dead_ms = now_ms() - 2000  # the previous owner's last trades
    try:
        keeper = Standby(window_ms=10_000) if standby else None
        client, shards, claimer = await _replica(redis_url, tasks, stop, keeper)
        if keeper is not None:
            await shards._watch(0)  # on standby for shard 0, acked at once

            async def watched() -> bool:
                return 0 in keeper.watched()

            await async_wait_until(watched, 5, "standby coverage")
            keeper.watch(0, dead_ms - 3000)  # watching for a while already
            # What the dead owner wrote and what it had not yet: both reached the standby.
            shards.on_trades(_message(dead_ms, "t1", "t2"), dead_ms + 6)
            shards.on_trades(_message(dead_ms + 30, "t3"), dead_ms + 36)
        await _dead_owner_wrote(admin, dead_ms, "t1", "t2")
        entries = await _refused_then_taken(admin, shards, claimer, denied)
        if keeper is None:
            # Bybit sends this replica the dead owner's last message again, and a new one.
            shards.on_trades(_message(dead_ms, "t1", "t2"), dead_ms + 40)
            shards.on_trades(_message(dead_ms + 30, "t3"), dead_ms + 41)

        async def all_written() -> bool:
            return "t3" in _trade_ids(await _entries(admin))

        await async_wait_until(all_written, 10, "t3 written")
        entries = await _entries(admin)
        assert _trade_ids(entries) == ["t1", "t2", "t3"]  # none lost, none twice
        gaps = [e for e in entries if isinstance(e, GapEntry)]
        if keeper is None:
            # Cold: the unowned window starts at the dead owner's last entry (received at
            # dead_ms + 5, its trade 5 ms older), where a new stream would have had none.
            assert [(g.reason, g.from_ms) for g in gaps] == [("unowned", dead_ms)]
        else:
            assert gaps == []  # warm: the standby held all of it
        await client.aclose()
    finally:
        stop.set()
        await tasks.cancel_all()
        await _acl(admin, "DELUSER", USER)
        await admin.aclose()
