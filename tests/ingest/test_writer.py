"""The writer against a real redis-server: order, fencing, clock entries, buffering, gaps."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from common.keys import Keys
from common.wire import ClockEntry, GapEntry, Side, Trade, TradesEntry, entry_decoder
from ingest.shards import read_tail
from ingest.writer import Item, Writer
from tests.support import replies
from tests.support.redisproc import RedisProcess
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.redis

KEYS = Keys("t")
TOKEN = "ingest:test"


def _trades(n: int, start: int = 0, time_ms: int = 1000) -> list[Trade]:
    return [Trade(time_ms + i, "1.5", "2", Side.SELL, f"id{start + i}") for i in range(n)]


def _trade(time_ms: int, trade_id: str) -> Trade:
    return Trade(time_ms, "1.5", "2", Side.SELL, trade_id)


async def _entries(client: aioredis.Redis, shard: int) -> list[object]:
    rows = replies.entries(await client.xrange(KEYS.trades(shard)))
    return [entry_decoder.decode(fields[b"data"]) for _, fields in rows]


def _writer(
    client: aioredis.Redis,
    *,
    clock_interval_ms: int = 5,
    buffer_max: int = 1000,
    batch_max: int = 100,
    retention_s: int = 3600,
    gather_ms: int = 0,
    **hooks: Any,  # on_gap, on_dropped: the writer's defaults when not given
) -> Writer:
    return Writer(
        client,
        KEYS,
        TOKEN,
        clock_interval_ms=clock_interval_ms,
        buffer_max=buffer_max,
        batch_max=batch_max,
        retention_s=retention_s,
        gather_ms=gather_ms,
        **hooks,
    )


async def test_entries_in_order_then_a_clock_entry(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    await client.set(KEYS.lease("ingest", 0), TOKEN)
    writer = _writer(client)
    writer.ready.add(0)
    for i in range(250):
        writer.put_trades(0, "BTCUSDT", _trades(1, i, 1000 + i), 2000 + i, 3000 + i)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    assert await writer.drained(5)
    stop.set()
    await task
    entries = await _entries(client, 0)
    trades = [e for e in entries if isinstance(e, TradesEntry)]
    assert [e.trades[0].trade_id for e in trades] == [f"id{i}" for i in range(250)]
    assert trades[0] == TradesEntry("BTCUSDT", _trades(1, 0, 1000), 2000, 3000)
    # the first clock entry comes after every trade that was queued before it
    first_clock = next(i for i, e in enumerate(entries) if isinstance(e, ClockEntry))
    assert first_clock == 250
    await client.aclose()


async def test_a_stale_owner_writes_nothing(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    await client.set(KEYS.lease("ingest", 1), "someone-else")
    dropped: list[Item] = []
    # the duplicate filter forgets them (ingest.shards)
    writer = _writer(client, on_dropped=dropped.extend)
    writer.ready.add(1)
    writer.put_trades(1, "ETHUSDT", _trades(3), 1, 1)
    stop = asyncio.Event()
    stop.set()
    await writer.flush_once(stop)
    assert await client.exists(KEYS.trades(1)) == 0
    assert 1 not in writer.ready
    assert [(i.shard, i.symbol, i.trades) for i in dropped if i.trades] == [(1, "ETHUSDT", 3)]
    # a discard (the shard was served by another replica) drops what is queued, said so too
    dropped.clear()
    writer.put_trades(2, "SOLUSDT", _trades(2, 10), 1, 1)
    writer.put_trades(0, "BTCUSDT", _trades(1, 20), 1, 1)
    assert writer.discard(2) == 1
    assert [(i.shard, i.symbol) for i in dropped] == [(2, "SOLUSDT")]
    await client.aclose()


async def test_redis_down_buffers_drops_oldest_and_writes_a_gap(own_redis: RedisProcess) -> None:
    client = aioredis.Redis.from_url(own_redis.url, socket_connect_timeout=0.5)
    await client.set(KEYS.lease("ingest", 0), TOKEN)
    repairs: list[tuple[int, list[str], int, int]] = []
    dropped: list[Item] = []
    writer = _writer(
        client,
        buffer_max=100,
        batch_max=10,
        on_gap=lambda *gap: repairs.append(gap),  # what ingest.repair is asked
        on_dropped=dropped.extend,
    )
    writer.ready.add(0)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    writer.put_trades(0, "AUSDT", _trades(1, 0, 100), 0, 0)
    assert await writer.drained(5)
    port = own_redis.port
    own_redis.kill()
    # 300 messages while Redis is down: readers never block; the oldest ~200 are dropped
    for i in range(1, 301):
        writer.put_trades(0, "AUSDT" if i % 2 else "BUSDT", _trades(1, i, 100 + i), 0, 0)
        await asyncio.sleep(0)
    await async_wait_until(lambda: _false_async(writer.healthy), 5, "writer to notice")
    assert writer.queued <= 100
    restarted = RedisProcess(own_redis.workdir, port=port).start()
    try:
        await client.set(KEYS.lease("ingest", 0), TOKEN)
        await async_wait_until(lambda: _true_async(writer.healthy), 15, "writes to resume")
        assert await writer.drained(10)
        stop.set()
        await task
        entries = await _entries(client, 0)
        trades = [e for e in entries if isinstance(e, TradesEntry)]
        gaps = [e for e in entries if isinstance(e, GapEntry)]
        ids = [int(e.trades[0].trade_id[2:]) for e in trades]
        assert ids == sorted(ids)
        assert ids[-1] == 300  # the newest survive
        missing = set(range(1, 301)) - set(ids)
        assert len(missing) >= 190
        assert len(gaps) == 1
        gap = gaps[0]
        assert gap.symbols == ["AUSDT", "BUSDT"]
        assert gap.reason == "buffer-overflow"
        assert gap.from_ms <= 100 + min(missing) and gap.to_ms >= 100 + max(missing)
        assert repairs == [(0, gap.symbols, gap.from_ms, gap.to_ms)]  # the repair is asked
        dropped_ids = {int(i.payload.split(b'"id')[1].split(b'"')[0]) for i in dropped}
        assert dropped_ids == missing  # and the duplicate filter told to forget them
    finally:
        await client.aclose()
        restarted.stop()


async def _false_async(value: bool) -> bool:
    return not value


async def _true_async(value: bool) -> bool:
    return value


async def test_read_tail_finds_last_time_and_ids(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    await client.set(KEYS.lease("ingest", 0), TOKEN)
    writer = _writer(client)
    writer.put_trades(0, "AUSDT", _trades(2, 0), 5, 700)
    writer.put_gap(0, ["AUSDT"], 10, 900, "reconnect")
    writer.put_trades(0, "BUSDT", _trades(1, 7), 5, 800)
    stop = asyncio.Event()
    stop.set()
    await writer.flush_once(stop)
    last_ms, ids = await read_tail(client, KEYS.trades(0))
    assert last_ms == 900
    assert ids == {"AUSDT": ["id0", "id1"], "BUSDT": ["id7"]}
    assert await read_tail(client, KEYS.trades(3)) == (0, {})
    await client.aclose()


async def test_read_tail_gap_starts_before_the_oldest_recent_trade_delay(redis_url: str) -> None:
    """The gap start goes back by the longest recent delay, not the newest entry's: a message
    received after the newest written one can hold an older trade (one exchange batch spans
    ms), and kill -9 loses it; it must fall inside the gap."""
    client = aioredis.Redis.from_url(redis_url)
    await client.set(KEYS.lease("ingest", 0), TOKEN)
    writer = _writer(client)
    writer.put_trades(0, "AUSDT", [_trade(100_000 - 5_000, "old")], 5, 100_000)  # too old
    writer.put_trades(0, "AUSDT", [_trade(106_960, "a")], 5, 107_000)  # delay 40
    writer.put_trades(0, "BUSDT", [_trade(108_000, "b"), _trade(108_003, "c")], 5, 108_010)
    stop = asyncio.Event()
    stop.set()
    await writer.flush_once(stop)
    last_ms, ids = await read_tail(client, KEYS.trades(0))
    # newest received 108_010; the delays within 2 s of it: 10 (b's message) and 40
    assert last_ms == 108_010 - 40
    assert ids == {"AUSDT": ["old", "a"], "BUSDT": ["b", "c"]}
    await client.aclose()


async def test_trim_by_age_removes_old_entries(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    stream = KEYS.trades(0)
    for i in range(1, 501):  # entries from 1970: far older than any retention
        await client.xadd(stream, {b"data": b"{}"}, id=f"{i}-0")
    await client.xadd(stream, {b"data": b"{}"})  # now
    writer = _writer(client, retention_s=60)
    writer.ready.add(0)
    await writer._maybe_trim()
    left = await client.xlen(stream)
    assert left < 200  # approximate trim: whole nodes go, the new entry stays
    assert replies.entries(await client.xrevrange(stream, count=1))[0][0] != b"500-0"
    await client.aclose()


async def test_clock_entries_keep_coming_under_a_backlog_and_never_run_ahead(
    redis_url: str,
) -> None:
    from ingest.writer import now_ms

    client = aioredis.Redis.from_url(redis_url)
    await client.set(KEYS.lease("ingest", 0), TOKEN)
    writer = _writer(client, clock_interval_ms=1, batch_max=50, buffer_max=100_000)
    writer.ready.add(0)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    for i in range(200):  # a producer that is always ahead of the writer
        for j in range(40):
            writer.put_trades(0, "AUSDT", _trades(1, i * 40 + j), 0, now_ms())
        await asyncio.sleep(0)
    assert await writer.drained(20)
    stop.set()
    await task
    entries = await _entries(client, 0)
    clocks = [i for i, e in enumerate(entries) if isinstance(e, ClockEntry)]
    trades_at = [i for i, e in enumerate(entries) if isinstance(e, TradesEntry)]
    assert len(trades_at) == 8000
    assert clocks and clocks[0] < trades_at[-1]  # not only once the backlog is gone
    # "everything received before the clock time is already in the stream": no trades entry
    # after a clock entry was received before its time
    clock_ms = 0
    for entry in entries:
        if isinstance(entry, ClockEntry):
            assert entry.time_ms >= clock_ms
            clock_ms = entry.time_ms
        elif isinstance(entry, TradesEntry):
            assert entry.received_ms >= clock_ms
    await client.aclose()


async def test_a_write_retried_after_a_lost_reply_is_applied_once(redis_url: str) -> None:
    """Redis may run the script and then drop the connection before replying (a restart):
    the writer retries the same batch, and the script sees it was already applied."""
    client = aioredis.Redis.from_url(redis_url)
    await client.set(KEYS.lease("ingest", 2), TOKEN)
    writer = _writer(client, clock_interval_ms=60_000)
    writer.ready.add(2)
    writer.put_trades(2, "BTCUSDT", _trades(3), 1, 1)
    writer.put_trades(2, "BTCUSDT", _trades(2, 3), 1, 1)
    batch = writer._take_batch()
    trades_batch = [item for item in batch if item.trades]
    assert await writer._write(trades_batch) == []
    assert await writer._write(trades_batch) == []  # the retry of a write whose reply was lost
    entries = await _entries(client, 2)
    ids = [t.trade_id for e in entries if isinstance(e, TradesEntry) for t in e.trades]
    assert ids == ["id0", "id1", "id2", "id3", "id4"]
    writer.put_trades(2, "BTCUSDT", _trades(1, 5), 1, 1)  # the next batch goes through
    assert await writer._write([i for i in writer._take_batch() if i.trades]) == []
    assert len(await _entries(client, 2)) == 3
    await client.aclose()


async def test_every_shards_part_of_a_batch_is_sent_at_once(redis_url: str) -> None:
    """One round trip for all shards, not one after the other (each shard's clock entry
    reaches Redis without waiting for the other shards' parts): the four parts go out in one
    pipeline, on one connection (four concurrent calls took four pooled connections, and a
    fifth of ingest's CPU at 5,000 trades/s)."""
    client = aioredis.Redis.from_url(redis_url, client_name="writer")
    probe = aioredis.Redis.from_url(redis_url)
    for shard in range(4):
        await probe.set(KEYS.lease("ingest", shard), TOKEN)
    writer = _writer(client)
    for shard in range(4):
        writer.put_trades(shard, "BTCUSDT", _trades(3, 10 * shard), 2000, 3000)
    sends = 0
    execute = client.pipeline

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal sends
        sends += 1
        return execute(*args, **kwargs)

    client.pipeline = counted  # type: ignore[method-assign]
    assert await writer.flush_once(None)
    assert sends == 1
    listed = await probe.client_list()
    assert len([c for c in listed if c["name"] == "writer"]) == 1, listed
    for shard in range(4):  # each part written, once
        assert [e.trades[0].trade_id for e in await _entries(probe, shard)
                if isinstance(e, TradesEntry)] == [f"id{10 * shard}"]  # fmt: skip
    await client.aclose()
    await probe.aclose()


async def test_a_write_after_redis_lost_its_scripts_loads_the_script_and_is_applied_once(
    redis_url: str,
) -> None:
    """A Redis restarted without persistence has no scripts: every part of the pipelined
    write is refused with NOSCRIPT (none ran); the writer loads the script and sends them
    again, and each shard's trades are in its stream once."""
    client = aioredis.Redis.from_url(redis_url)
    for shard in range(2):
        await client.set(KEYS.lease("ingest", shard), TOKEN)
    writer = _writer(client, clock_interval_ms=60_000)
    await client.script_flush()
    for shard in range(2):
        writer.put_trades(shard, "ETHUSDT", _trades(2, 100 * shard), 1, 1)
    assert await writer._write([i for i in writer._take_batch() if i.trades]) == []
    for shard in range(2):
        ids = [t.trade_id for e in await _entries(client, shard)
               if isinstance(e, TradesEntry) for t in e.trades]  # fmt: skip
        assert ids == [f"id{100 * shard}", f"id{100 * shard + 1}"]
    await client.aclose()


async def test_a_grid_point_passed_during_a_write_gets_its_clock_entry_at_once(
    redis_url: str,
) -> None:
    """The writer waits for input until the clock's next grid point; when a grid point passed
    while it was writing (no clock entry in the new grid cell yet), it does not wait at all:
    that clock entry goes out at once. It waited a whole grid interval (19 ms of 20 here), or
    until the next input arrived: clock entries 7-9 ms late in a fifth of the grid cells under
    a load that arrives 5 ms off the grid."""
    client = aioredis.Redis.from_url(redis_url)
    writer = _writer(client, clock_interval_ms=20)
    writer.ready.add(0)
    writer._last_clock_ms = 1_000_003  # the clock entry of the cell [1_000_000, 1_000_020)
    # same cell: until the grid point, to the nanosecond
    assert writer._wait_s(1_000_012_700_000) == pytest.approx(0.0073)
    assert writer._wait_s(1_000_021_000_000) == 0.0  # the grid point passed during a write
    writer.ready.clear()  # no shard to write a clock entry to: wait for the grid as ever
    assert writer._wait_s(1_000_021_000_000) == pytest.approx(0.019)
    await client.aclose()


async def test_messages_arriving_one_by_one_are_gathered_into_fewer_writes(
    redis_url: str,
) -> None:
    """Bybit sends each trade message on its own, 0-1 ms after its trades. With `gather_ms` a
    write waits up to that long after the last one started for more messages to join it, so
    60 messages 1 ms apart take about a third as many script calls; written as they came, they
    took one each (63 measured, with the clock entries). Every trade is still written, in order."""
    client = aioredis.Redis.from_url(redis_url)
    await client.set(KEYS.lease("ingest", 0), TOKEN)
    writer = _writer(client, clock_interval_ms=20, gather_ms=3)
    writer.ready.add(0)
    calls_before = await _script_calls(client)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(60):
        writer.put_trades(0, "BTCUSDT", _trades(1, i, 1000 + i), 2000 + i, 3000 + i)
        await asyncio.sleep(0.001)  # the pace of the messages, not a wait for the writer
    elapsed_ms = (loop.time() - started) * 1000
    assert await writer.drained(5)
    stop.set()
    await task
    calls = await _script_calls(client) - calls_before
    # one write per 3 ms, plus one at each clock grid point (20 ms) and the first
    assert calls <= elapsed_ms / 3 + elapsed_ms / 20 + 2, (calls, elapsed_ms)
    ids = [t.trade_id for e in await _entries(client, 0) if isinstance(e, TradesEntry)
           for t in e.trades]  # fmt: skip
    assert ids == [f"id{i}" for i in range(60)]
    await client.aclose()


async def _script_calls(client: aioredis.Redis) -> int:
    stats: Any = await client.info("commandstats")
    return sum(stats.get(name, {}).get("calls", 0) for name in ("cmdstat_evalsha", "cmdstat_eval"))


async def test_a_write_gathers_input_until_its_time_or_the_next_grid_point(
    redis_url: str,
) -> None:
    """How long input that woke the writer waits for more: until `gather_ms` after the last
    write started, cut at the clock's next grid point (its clock entry leaves with the
    gathered trades); not at all under a backlog (a full batch waiting, or that write is older
    already), on a quiet stream, or when a grid point's clock entry is due."""
    client = aioredis.Redis.from_url(redis_url)
    writer = _writer(client, clock_interval_ms=20, gather_ms=3)
    writer.ready.add(0)
    writer._last_clock_ms = 1_000_003
    writer._write_started_ns = 1_000_005_000_000
    assert writer._gather_s(1_000_006_200_000) == pytest.approx(0.0018)
    for i in range(100):  # a full batch (batch_max) waits: a backlog, written at once
        writer.put_trades(0, "BTCUSDT", _trades(1, i, 1000 + i), 2000 + i, 3000 + i)
    assert writer._gather_s(1_000_006_200_000) == 0.0
    writer._queue.clear()
    assert writer._gather_s(1_000_008_500_000) == 0.0  # the last write is 3.5 ms old
    writer._write_started_ns = 1_000_018_000_000
    assert writer._gather_s(1_000_018_500_000) == pytest.approx(0.0015)  # the grid point
    writer._write_started_ns = 1_000_020_500_000  # the grid point passed, no clock entry yet
    assert writer._gather_s(1_000_021_000_000) == 0.0
    assert _writer(client, clock_interval_ms=20)._gather_s(1_000_006_200_000) == 0.0  # off
    await client.aclose()
