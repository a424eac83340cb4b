"""The `redis` consumer on a real Redis: each candle published once, in stream order, in arrays
of STREAMER_WEBSOCKET_MAX_FRAME_CANDLES, by whichever replica takes it, and without the candles
leaving Redis on their way (publish.consumers.redis_pubsub)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import redis

from common.keys import Keys
from common.redisconn import connect
from common.sharding import shard_of
from publish.consumers.redis_pubsub import PublishingReader, RedisConsumer
from publish.reader import StreamReader
from tests.publish.helpers import PREFIX, series, ws_settings, xadd_candles
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.redis

CHANNEL = "candles-test"
ONE = shard_of("SYM0USDT", 2)  # the shard of series(n, symbols=1)


def _reader(redis_url: str, replica: str, per_message: int = 100, **overrides: Any) -> StreamReader:
    settings = ws_settings(
        1, redis_url=redis_url, shards=2, redis_channel=CHANNEL,
        websocket_max_frame_candles=per_message, **overrides,
    )  # fmt: skip
    consumer = RedisConsumer()
    consumer.settings = settings
    consumer.validate()
    reader = consumer.stream_reader(connect(settings), Keys(PREFIX), 2, replica)
    assert isinstance(reader, PublishingReader)
    return reader


def _by_shard(raws: list[bytes]) -> dict[int, list[bytes]]:
    """The candles each shard's stream holds, in the order they were added (xadd_candles)."""
    out: dict[int, list[bytes]] = {}
    for raw in raws:
        symbol = raw.split(b'"symbol":"', 1)[1].split(b'"', 1)[0].decode()
        out.setdefault(shard_of(symbol, 2), []).append(raw)
    return out


def _messages(listener: Any) -> list[list[bytes]]:
    """The JSON arrays published so far, each as its candles' raw JSON."""
    got = []
    while (message := listener.get_message(timeout=0.2)) is not None:
        got.append([bytes(r) for r in msgspec.json.decode(message["data"], type=list[msgspec.Raw])])
    return got


def _script_calls(sync: redis.Redis) -> int:
    stats: Any = sync.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def _listen(sync: redis.Redis) -> Any:
    listener = sync.pubsub()  # type: ignore[no-untyped-call]  # unannotated in redis-py
    listener.subscribe(CHANNEL)
    assert listener.get_message(timeout=5)["type"] == "subscribe"
    return listener


async def test_each_candle_is_published_once_in_stream_order_in_arrays(redis_url: str) -> None:
    sync = redis.Redis.from_url(redis_url)
    listener = _listen(sync)
    reader = _reader(redis_url, "r1", per_message=2)
    await reader.start()
    raws = series(14, symbols=10)  # SYM0-7 on shard 1, SYM8-9 on shard 0
    xadd_candles(sync, raws)
    expected = _by_shard(raws)
    batch = await reader.read(100, 50)
    assert batch is not None and len(batch) == 14 and batch.raws == []
    assert {shard: len(ids) for shard, ids in batch.ids.items()} == {0: 2, 1: 12}
    assert {shard: len(candles) for shard, candles in expected.items()} == {0: 2, 1: 12}
    # shard by shard, arrays of at most 2 candles, in the stream's order
    assert _messages(listener) == [expected[0]] + [expected[1][i : i + 2] for i in range(0, 12, 2)]
    keys = Keys(PREFIX)
    assert sync.xpending(keys.klines(0), "publish")["pending"] == 0
    assert sync.xpending(keys.klines(1), "publish")["pending"] == 0
    before = _script_calls(sync)
    assert await reader.read(100, 20) is None  # nothing new: nothing published again
    assert _messages(listener) == []
    # it waited first, and nothing came: no script ran, neither before the wait nor after it
    assert _script_calls(sync) == before
    listener.close()
    sync.close()


async def test_a_wake_runs_the_script_of_the_shards_written_only(redis_url: str) -> None:
    """At a boundary the shards' writes come one by one: each wake runs the script of the
    shard that woke it, not one per shard, in the Redis the WebSocket feed reads from."""
    sync = redis.Redis.from_url(redis_url)
    listener = _listen(sync)
    reader = _reader(redis_url, "r1")
    await reader.start()
    assert await reader.read(100, 20) is None  # what was pending at start: nothing
    raws = series(3, symbols=1)  # one symbol: shard ONE only
    xadd_candles(sync, raws)
    before = _script_calls(sync)
    batch = await reader.read(100, 1000)
    assert batch is not None and list(batch.ids) == [ONE] and len(batch) == 3
    assert _script_calls(sync) == before + 1
    assert [r for m in _messages(listener) for r in m] == raws
    # a shard written after the wake is found by the next read, at once
    other = series(12, symbols=10)
    on_other = _by_shard(other)[1 - ONE]
    xadd_candles(sync, on_other)
    batch = await reader.read(100, 1000)
    assert batch is not None and list(batch.ids) == [1 - ONE] and len(batch) == len(on_other)
    assert _script_calls(sync) == before + 2
    assert [r for m in _messages(listener) for r in m] == on_other
    listener.close()
    sync.close()


async def test_the_candles_do_not_cross_the_socket(redis_url: str) -> None:
    """Redis sends this reader the ids it handled, not the candles: read into publish and sent
    back as a script's arguments, a boundary's candles crossed the socket twice more."""
    sync = redis.Redis.from_url(redis_url)
    reader = _reader(redis_url, "r1")
    await reader.start()
    raws = series(200, symbols=10)
    xadd_candles(sync, raws)
    size = sum(map(len, raws))
    before = int(sync.info("stats")["total_net_output_bytes"])
    published = 0
    while published < 200:
        batch = await reader.read(1000, 50)
        assert batch is not None
        published += len(batch)
    sent = int(sync.info("stats")["total_net_output_bytes"]) - before
    assert sent < size / 4, (sent, size)
    sync.close()


async def test_a_candle_left_pending_by_a_crash_is_published_once_after_restart(
    redis_url: str,
) -> None:
    """The blocking read that wakes a reader takes one entry (pending to its replica); a crash
    before the script that publishes it leaves it pending. The replica's next start publishes
    it, before anything newer, and only once."""
    sync = redis.Redis.from_url(redis_url)
    listener = _listen(sync)
    first = _reader(redis_url, "r1")
    await first.start()
    raws = series(6, symbols=1)  # one symbol: one shard
    xadd_candles(sync, raws[:3])
    keys = Keys(PREFIX)
    # the wake-up read of the replica that crashes right after it
    sync.xreadgroup("publish", "r1", {keys.klines(0): ">", keys.klines(ONE): ">"}, count=1)
    assert sync.xpending(keys.klines(ONE), "publish")["pending"] == 1
    xadd_candles(sync, raws[3:])
    again = _reader(redis_url, "r1")
    await again.start()
    batch = await again.read(100, 50)
    assert batch is not None and len(batch) == 6
    assert [r for m in _messages(listener) for r in m] == raws
    assert sync.xpending(keys.klines(ONE), "publish")["pending"] == 0
    listener.close()
    sync.close()


async def test_a_dead_replicas_pending_candles_are_claimed_and_published_once(
    redis_url: str,
) -> None:
    sync = redis.Redis.from_url(redis_url)
    listener = _listen(sync)
    survivor = _reader(redis_url, "r2", publish_claim_idle_ms=100)
    await survivor.start()
    raws = series(4, symbols=1)
    xadd_candles(sync, raws)
    keys = Keys(PREFIX)
    # replica r1 took them all and died before publishing
    sync.xreadgroup("publish", "r1", {keys.klines(ONE): ">"}, count=10)
    published: list[bytes] = []

    async def all_published() -> bool:
        await survivor.read(100, 20)
        published.extend(r for m in _messages(listener) for r in m)
        return len(published) >= 4

    await async_wait_until(all_published, what="the dead replica's candles published")
    assert published == raws
    assert sync.xpending(keys.klines(ONE), "publish")["pending"] == 0
    assert await survivor.read(100, 20) is None and _messages(listener) == []
    listener.close()
    sync.close()


async def test_a_wake_whose_script_fails_is_published_at_the_next_read(redis_url: str) -> None:
    """The wait takes one entry (pending to this replica); when the script after it fails
    (here Redis refuses it: NOPERM), the next read runs every shard's script first, so that
    candle goes out then, not when its shard is next written or a claim period later."""
    sync = redis.Redis.from_url(redis_url)
    sync.acl_setuser("pub", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                     commands=["+@all", "-evalsha", "-eval"])  # fmt: skip
    user_url = redis_url.replace("redis://", "redis://pub:pw@", 1)
    listener = _listen(sync)
    reader = _reader(user_url, "r1", publish_claim_idle_ms=600_000)
    await reader.start()
    # what was pending at start: the scripts are refused, and the read says so
    with pytest.raises(redis.exceptions.ResponseError, match="no permissions"):
        await reader.read(100, 20)
    sync.acl_setuser("pub", commands=["+evalsha", "+eval"])
    assert await reader.read(100, 20) is None
    sync.acl_setuser("pub", commands=["-evalsha", "-eval"])
    raws = series(1, symbols=1)  # one: the next wait finds nothing new
    xadd_candles(sync, raws)
    with pytest.raises(redis.exceptions.ResponseError, match="no permissions"):
        await reader.read(100, 1000)  # the wait took one; its script is refused
    assert sync.xpending(Keys(PREFIX).klines(ONE), "publish")["pending"] == 1
    assert _messages(listener) == []
    sync.acl_setuser("pub", commands=["+evalsha", "+eval"])
    batch = await reader.read(100, 20)
    assert batch is not None and list(batch.ids) == [ONE] and len(batch) == 1
    assert [r for m in _messages(listener) for r in m] == raws
    assert sync.xpending(Keys(PREFIX).klines(ONE), "publish")["pending"] == 0
    listener.close()
    sync.acl_deluser("pub")
    sync.close()
