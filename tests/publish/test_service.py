"""The service in-process on a real Redis: positions, groups, and consumers that fail or stall."""

from __future__ import annotations

import asyncio
import contextlib
from functools import partial
from typing import Any

import msgspec
import pytest
import redis

from common.keys import Keys
from common.metrics import REGISTRY
from common.redisconn import connect
from publish.batch import CandleBatch
from publish.consumers.base import BaseConsumer
from publish.reader import GroupReader, PositionReader
from publish.service import PublishService
from tests.publish.helpers import PREFIX, series, ws_settings, xadd_candles
from tests.support import replies
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.redis


class Recorder(BaseConsumer):
    def __init__(self, name: str = "recorder") -> None:
        super().__init__(name)
        self.got: list[dict[str, Any]] = []

    async def consume(self, data: list[dict[str, Any]]) -> None:
        self.got.extend(data)


class Failing(BaseConsumer):
    async def consume(self, data: list[dict[str, Any]]) -> None:
        raise RuntimeError("user bug")


class Stalled(BaseConsumer):
    def __init__(self, name: str = "stalled") -> None:
        super().__init__(name)
        self.release = asyncio.Event()

    async def consume(self, data: list[dict[str, Any]]) -> None:
        await self.release.wait()


async def _true(value: bool) -> bool:
    return value


async def test_failing_and_stalled_consumers_do_not_hold_up_the_others(redis_url: str) -> None:
    settings = ws_settings(1, redis_url=redis_url, shards=2, publish_batch=10)
    good, failing, stalled = Recorder(), Failing("failing"), Stalled()
    for consumer in (good, failing, stalled):
        consumer.settings = settings
    service = PublishService(settings, [good, failing, stalled])
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    sync = redis.Redis.from_url(redis_url)
    await async_wait_until(
        lambda: _true(len(sync.keys("t:*:pos:*")) == 6),
        what="positions stored at the tail",
    )  # fmt: skip
    raws = series(100)
    xadd_candles(sync, raws)
    await async_wait_until(lambda: _true(len(good.got) == 100), what="all candles")
    # Dicts as the original interface gave them: numbers as floats.
    assert sorted(good.got, key=repr) == sorted(map(msgspec.json.decode, raws), key=repr)
    await async_wait_until(
        lambda: _true(REGISTRY.counter("publish_consume_errors_total", "").get("failing") >= 1),
        what="errors counted",
    )
    # The stalled consumer's candles wait in its own queue, visible as a metric.
    await async_wait_until(
        lambda: _true(REGISTRY.gauge("publish_consumer_queue_batches", "").get("stalled") >= 1),
        what="the stalled consumer's queue",
    )
    (stalled_runner,) = [r for r in service.runners if r.name == "stalled"]
    assert stalled_runner.lag_ms() >= 0 and stalled_runner._unhandled_ms
    stalled.release.set()
    stop.set()
    await asyncio.wait_for(task, 10)
    assert service.start_error is None
    sync.close()


# cluster=True: the per-stream reads a Redis Cluster needs, checked here on one plain server.
@pytest.mark.parametrize("cluster", [False, True])
async def test_position_reader_starts_at_the_tail_and_resumes(
    redis_url: str, cluster: bool
) -> None:
    settings = ws_settings(1, redis_url=redis_url, shards=2)
    client = connect(settings)
    sync = redis.Redis.from_url(redis_url)
    xadd_candles(sync, series(10))  # before the first start: not read
    reader = PositionReader(client, Keys(PREFIX), 2, "x", "r1", cluster)
    await reader.start()
    assert await reader.read(100, 10) is None
    fresh = series(20, start_ms=1_786_400_000_000)
    xadd_candles(sync, fresh)
    batch = await reader.read(15, 10)
    assert batch is not None and len(batch) <= 30
    await reader.done(batch)
    # A new reader (a restart) continues after what was handled, not from the tail.
    again = PositionReader(client, Keys(PREFIX), 2, "x", "r1", cluster)
    await again.start()
    rest: list[bytes] = []
    while (more := await again.read(100, 10)) is not None:
        rest.extend(more.raws)
    assert sorted(batch.raws + rest) == sorted(fresh)
    await client.aclose()
    sync.close()


async def test_a_blocked_read_returns_every_shard_one_write_reached(redis_url: str) -> None:
    """A waiter deadline's writes reach the shards' streams within a millisecond. Redis 7.0
    answers a blocked XREAD of several streams with the stream that woke it; read so, the other
    shards waited for a second read, queued in Redis behind whatever it ran meanwhile."""
    settings = ws_settings(1, redis_url=redis_url, shards=4)
    client = connect(settings)
    sync = redis.Redis.from_url(redis_url)
    keys = Keys(PREFIX)
    reader = PositionReader(client, keys, 4, "x", "r1")
    await reader.start()
    reading = asyncio.ensure_future(reader.read(100, 5000))

    def blocked() -> int:
        return int(sync.info("clients")["blocked_clients"])

    async def reads_blocked(at_least: int) -> bool:
        return blocked() >= at_least

    await async_wait_until(partial(reads_blocked, 1), 5, "the reader blocked in Redis")
    # This reader blocks once per stream; one that read them all in one XREAD never gets to 4.
    with contextlib.suppress(AssertionError):
        await async_wait_until(partial(reads_blocked, 4), 1, "a blocked read on every stream")
    raws = series(4, symbols=4)
    streams = [keys.klines(shard) for shard in range(4)]
    # One script writes all four (as Redis runs a deadline's four shard writes back to back).
    # The calls below hold this test's event loop until the readers' replies have left Redis.
    sync.eval(
        "for i = 1, #KEYS do redis.call('XADD', KEYS[i], '*', 'data', ARGV[i]) end",
        4, *streams, *raws,
    )  # fmt: skip
    assert blocked() == 0
    batch = await reading
    assert batch is not None
    assert sorted(batch.ids) == [0, 1, 2, 3]
    assert sorted(batch.raws) == sorted(raws)
    reader.close()
    await client.aclose()
    sync.close()


@pytest.mark.parametrize("cluster", [False, True])
async def test_group_reader_rereads_own_pending_and_claims_a_dead_replicas(
    redis_url: str, cluster: bool
) -> None:
    settings = ws_settings(1, redis_url=redis_url, shards=1)
    client = connect(settings)
    sync = redis.Redis.from_url(redis_url)
    keys = Keys(PREFIX)
    first = GroupReader(client, keys, 1, "g", "r1", claim_idle_ms=100, cluster=cluster)
    await first.start()
    raws = series(6)
    xadd_candles(sync, raws, shards=1)
    got = await first.read(4, 10)
    assert got is not None and got.raws == raws[:4]
    # r1 "restarts" without acknowledging: it reads its own pending entries first.
    restarted = GroupReader(client, keys, 1, "g", "r1", claim_idle_ms=60_000, cluster=cluster)
    await restarted.start()
    pending = await restarted.read(100, 10)
    assert pending is not None and pending.raws == raws[:4]
    await restarted.done(pending)
    # r2 reads the last two and dies; r3 claims them once idle long enough.
    r2 = GroupReader(client, keys, 1, "g", "r2", claim_idle_ms=100, cluster=cluster)
    await r2.start()
    tail = await r2.read(100, 10)
    assert tail is not None and tail.raws == raws[4:]
    r3 = GroupReader(client, keys, 1, "g", "r3", claim_idle_ms=100, cluster=cluster)
    await r3.start()
    await asyncio.sleep(0.15)  # the idle time is the subject here, not a wait for an event
    claimed = await r3.read(100, 10)
    assert claimed is not None and claimed.raws == raws[4:]
    await r3.done(claimed)
    assert sync.xpending(keys.klines(0), "g")["pending"] == 0
    await client.aclose()
    sync.close()


def test_batch_dicts_and_ids() -> None:
    raws = series(2)
    batch = CandleBatch(raws, {0: [b"1-0", b"2-0"], 1: []})
    assert batch.last_ids() == {0: b"2-0"}
    assert batch.dicts()[0]["close"] == 0.00010000000001


async def test_websocket_forwards_in_progress_updates_when_enabled(redis_url: str) -> None:
    from websockets.asyncio.client import connect

    from publish.consumers.manager import ConsumerManager
    from tests.publish.helpers import basic, candle
    from tests.support.redisproc import free_port

    port = free_port()
    settings = ws_settings(port, redis_url=redis_url, shards=2, websocket_updates=True)
    consumers = ConsumerManager.create(["websocket"], settings)
    service = PublishService(settings, consumers)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    sync = redis.Redis.from_url(redis_url)
    await asyncio.wait_for(service.ready.wait(), 10)
    ws = await connect(f"ws://127.0.0.1:{port}/", additional_headers=basic())
    keys = Keys(PREFIX)

    def in_progress(close: str) -> bytes:
        raw = candle("BTCUSDT", close=close)
        return raw.replace(b'"closed":true', b'"closed":false')

    from common.sharding import shard_of

    shard = shard_of("BTCUSDT", 2)
    sync.xadd(keys.updates(shard), {"data": in_progress("1.5")})
    assert await asyncio.wait_for(ws.recv(decode=False), 5) == b"[" + in_progress("1.5") + b"]"
    closed = candle("BTCUSDT", close="1.6")
    xadd_candles(sync, [closed])
    assert await asyncio.wait_for(ws.recv(decode=False), 5) == b"[" + closed + b"]"
    # A late update of the candle that has closed is dropped; the next candle's goes through.
    sync.xadd(keys.updates(shard), {"data": in_progress("1.55")})
    following = candle("BTCUSDT", timestamp=1_786_310_880_000, close="1.7")
    following = following.replace(b'"closed":true', b'"closed":false')
    sync.xadd(keys.updates(shard), {"data": following})
    assert await asyncio.wait_for(ws.recv(decode=False), 5) == b"[" + following + b"]"
    await ws.close()
    stop.set()
    await asyncio.wait_for(task, 10)
    sync.close()


async def test_a_trimmed_gap_is_logged_at_start(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = ws_settings(1, redis_url=redis_url, shards=1)
    client = connect(settings)
    sync = redis.Redis.from_url(redis_url)
    keys = Keys(PREFIX)
    sync.set(keys.publish_position("x:r1", 0), b"5-0")
    sync.xadd(keys.klines(0), {"data": series(1)[0]}, id="9-0")
    reader = PositionReader(client, keys, 1, "x", "r1")
    await reader.start()
    assert "t:{0}:klines: candles after 5-0 were trimmed" in caplog.text
    assert "resuming at 9-0" in caplog.text
    batch = await reader.read(10, 10)
    assert batch is not None and batch.ids == {0: [b"9-0"]}
    await client.aclose()
    sync.close()


class Flaky(BaseConsumer):
    """Fails its first `failures` calls (a database sink's hiccup), then records."""

    def __init__(self, name: str, failures: int) -> None:
        super().__init__(name)
        self.failures = failures
        self.calls = 0
        self.got: list[dict[str, Any]] = []

    async def consume(self, data: list[dict[str, Any]]) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError(f"hiccup {self.calls}")
        self.got.extend(data)


def _positions(sync: redis.Redis, consumer: str) -> dict[bytes, Any]:
    out: dict[bytes, Any] = {}
    for key in sync.keys(f"{PREFIX}:*:pos:{consumer}:*"):
        kind = sync.type(key)
        out[replies.value(key)] = sync.hgetall(key) if kind == b"hash" else sync.get(key)
    return out


async def _run_until(service: PublishService, stop: asyncio.Event) -> asyncio.Task[None]:
    task = asyncio.create_task(service.run(stop))
    await async_wait_until(lambda: _true(service.ready.is_set()), what="publish ready")
    return task


async def test_a_failing_consumer_gets_the_same_batch_again(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("publish.runner.RETRY_BASE_S", 0.05)
    settings = ws_settings(1, redis_url=redis_url, shards=2, publish_batch=10)
    flaky = Flaky("flaky", failures=3)
    flaky.settings = settings
    service = PublishService(settings, [flaky])
    stop = asyncio.Event()
    task = await _run_until(service, stop)
    sync = redis.Redis.from_url(redis_url)
    raws = series(40)
    xadd_candles(sync, raws)
    await async_wait_until(lambda: _true(len(flaky.got) >= 40), what="every candle, once")
    # nothing skipped, nothing twice: the failed batch was handed over again until it went in
    assert sorted(flaky.got, key=repr) == sorted(map(msgspec.json.decode, raws), key=repr)
    assert flaky.calls > 3 and service.health()[0]
    stop.set()
    await asyncio.wait_for(task, 10)
    sync.close()


async def test_a_consumer_failing_too_often_is_stopped_loudly_with_its_position_kept(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("publish.runner.RETRY_BASE_S", 0.05)
    settings = ws_settings(
        1, redis_url=redis_url, shards=2, publish_batch=10, consumer_max_failures=3
    )
    broken, good = Flaky("sink", failures=10**9), Recorder()
    for consumer in (broken, good):
        consumer.settings = settings
    service = PublishService(settings, [broken, good])
    stop = asyncio.Event()
    task = await _run_until(service, stop)
    sync = redis.Redis.from_url(redis_url)
    await async_wait_until(lambda: _true(len(_positions(sync, "sink")) == 2), what="positions")
    before = _positions(sync, "sink")
    raws = series(30)
    xadd_candles(sync, raws)
    await async_wait_until(lambda: _true(len(good.got) == 30), what="the good consumer's candles")
    (runner,) = [r for r in service.runners if r.name == "sink"]
    await async_wait_until(lambda: _true(runner.failed is not None), what="the sink stopped")
    ok, reason = service.health()
    assert not ok and "sink: stopped after 3 failures" in reason
    assert REGISTRY.gauge("publish_consumer_stopped", "").get("sink") == 1
    assert broken.calls == 3 and _positions(sync, "sink") == before
    stop.set()
    await asyncio.wait_for(task, 10)

    # After a restart (the sink fixed), it resumes at the kept position: every candle arrives.
    fixed = Recorder("sink")
    fixed.settings = settings
    again = PublishService(settings, [fixed])
    stop = asyncio.Event()
    task = await _run_until(again, stop)
    await async_wait_until(lambda: _true(len(fixed.got) == 30), what="the kept candles")
    assert sorted(fixed.got, key=repr) == sorted(map(msgspec.json.decode, raws), key=repr)
    stop.set()
    await asyncio.wait_for(task, 10)
    sync.close()


class FailsOnFirst(BaseConsumer):
    """Fails every batch that holds the first candle written; handles the others."""

    def __init__(self, name: str, first: dict[str, Any]) -> None:
        super().__init__(name)
        self.first = first
        self.calls = 0
        self.got: list[dict[str, Any]] = []

    async def consume(self, data: list[dict[str, Any]]) -> None:
        self.calls += 1
        if self.first in data:
            raise RuntimeError("cannot store this one")
        self.got.extend(data)


async def test_a_batch_failing_at_shutdown_keeps_the_later_ones_from_moving_the_position(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("publish.runner.RETRY_BASE_S", 0.05)
    settings = ws_settings(1, redis_url=redis_url, shards=1, publish_batch=10)
    raws = series(40)
    consumer = FailsOnFirst("sink", msgspec.json.decode(raws[0]))
    consumer.settings = settings
    service = PublishService(settings, [consumer])
    stop = asyncio.Event()
    task = await _run_until(service, stop)
    sync = redis.Redis.from_url(redis_url)
    await async_wait_until(lambda: _true(len(_positions(sync, "sink")) == 1), what="positions")
    before = _positions(sync, "sink")
    xadd_candles(sync, raws, shards=1)
    (runner,) = service.runners
    await async_wait_until(lambda: _true(consumer.calls >= 3 and runner._queue.qsize() >= 1),
                           what="retries, later batches queued")  # fmt: skip
    stop.set()
    await asyncio.wait_for(task, 10)
    assert consumer.got == [] and _positions(sync, "sink") == before
    sync.close()


async def test_health_is_red_while_a_consumer_is_behind_its_bound_and_green_after(
    redis_url: str,
) -> None:
    settings = ws_settings(1, redis_url=redis_url, shards=2, publish_batch=10)
    settings = settings.model_copy(update={"consumer_health_lag_s": 0.5})
    stalled = Stalled()
    stalled.settings = settings
    service = PublishService(settings, [stalled])
    stop = asyncio.Event()
    task = await _run_until(service, stop)
    assert service.health()[0]
    sync = redis.Redis.from_url(redis_url)
    xadd_candles(sync, series(5))
    # held by the consumer: its lag grows past the bound, and /health says which and by how much
    await async_wait_until(lambda: _true(not service.health()[0]), what="health red")
    ok, reason = service.health()
    assert not ok and reason.startswith("stalled: ") and "behind (bound 0.5 s)" in reason
    stalled.release.set()
    await async_wait_until(lambda: _true(service.health()[0]), what="health green again")
    stop.set()
    await asyncio.wait_for(task, 10)
    sync.close()
