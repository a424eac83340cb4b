"""`python -m publish` as real processes, fed by XADD into the candle streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import redis
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from publish.consumers.console import format_candle
from tests.publish.helpers import KEY, PREFIX, USER, basic, candle, series, xadd_candles
from tests.support.procs import Proc, python_module
from tests.support.redisproc import RedisProcess, free_port
from tests.support.waiting import async_wait_until, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

READY = "publishing 2 shards to"


def env(redis_url: str, replica: str, **extra: str) -> dict[str, str]:
    values = {
        "STREAMER_REDIS_URL": redis_url,
        "STREAMER_REDIS_PREFIX": PREFIX,
        "STREAMER_SHARDS": "2",
        "STREAMER_PUBLISH_REPLICA": replica,
        "STREAMER_WSS_AUTH_USER": USER,
        "STREAMER_WSS_AUTH_KEY": KEY,
        "STREAMER_SHUTDOWN_TIMEOUT_S": "10",
    }
    values.update(extra)
    return values


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        if proc.popen.poll() is None:
            proc.stop()


def console_lines(proc: Proc) -> list[str]:
    return [line for line in proc.output().splitlines() if line.startswith("[")]


class Subscriber:
    """A redis-py pub/sub subscriber collecting every message of the channel."""

    def __init__(self, url: str) -> None:
        self.client = aioredis.Redis.from_url(url)
        self.pubsub = self.client.pubsub()
        self.messages: list[bytes] = []
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> Subscriber:
        await self.pubsub.subscribe("klines")
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        async for message in self.pubsub.listen():
            if message["type"] == "message":
                self.messages.append(message["data"])

    def candles(self) -> list[bytes]:
        return [msgspec.json.encode(c) for m in self.messages for c in _raw_list(m)]

    async def close(self) -> None:
        assert self.task is not None
        self.task.cancel()
        await self.pubsub.aclose()  # type: ignore[no-untyped-call]  # unannotated in redis-py
        await self.client.aclose()


def _raw_list(message: bytes) -> list[msgspec.Raw]:
    return msgspec.json.decode(message, type=list[msgspec.Raw])


async def _true(value: bool) -> bool:
    return value


async def test_candles_reach_all_four_outputs_identically(
    redis_url: str, tmp_path: Path, procs: list[Proc]
) -> None:
    port, jsonl = free_port(), tmp_path / "klines.jsonl"
    # Written before the publisher starts: not delivered (it starts at the tail), but it is the
    # snapshot of its series.
    old = candle("OLDUSDT", close="9.99999999999999999999")
    xadd_candles(redis.Redis.from_url(redis_url), [old])
    proc = python_module(
        "publish", "console", "redis", "websocket", "file",
        env=env(
            redis_url, "r1", STREAMER_WEBSOCKET_PORT=str(port),
            STREAMER_CONSUMER_MODULES="examples.custom_consumer_example",
            KLINES_FILE=str(jsonl), STREAMER_WEBSOCKET_MAX_FRAME_CANDLES="7",
        ),
        log_path=tmp_path / "publish.log",
    )  # fmt: skip
    procs.append(proc)
    proc.wait_output(READY)
    ws = await connect(f"ws://127.0.0.1:{port}/", additional_headers=basic())
    subscriber = await Subscriber(redis_url).start()
    raws = series(300, symbols=7)
    xadd_candles(redis.Redis.from_url(redis_url), raws)

    frames: list[bytes] = []
    while sum(len(_raw_list(f)) for f in frames) < len(raws):
        message = await asyncio.wait_for(ws.recv(), 10)
        frames.append(message.encode() if isinstance(message, str) else message)
    await async_wait_until(lambda: _true(len(subscriber.candles()) == len(raws)), what="pub/sub")
    wait_until(lambda: len(console_lines(proc)) == len(raws), what="console lines")
    wait_until(lambda: jsonl.exists() and len(jsonl.read_text().splitlines()) == 300, what="file")

    # Exact bytes in WebSocket frames and pub/sub messages: the candle JSON as written.
    ws_raws = [bytes(c) for f in frames for c in _raw_list(f)]
    assert all(len(_raw_list(f)) <= 7 for f in frames)
    assert sorted(ws_raws) == sorted(raws)
    assert sorted(subscriber.candles()) == sorted(raws)
    assert sorted(console_lines(proc)) == sorted(format_candle(r) for r in raws)
    # the example file consumer keeps every digit: its lines are the candle JSON as written
    assert sorted(jsonl.read_bytes().splitlines()) == sorted(raws)
    # Per shard, stream order is kept.
    for symbol in ("SYM0USDT", "SYM3USDT"):
        mine = [r for r in raws if symbol.encode() in r]
        assert [r for r in ws_raws if symbol.encode() in r] == mine

    await ws.send('{"op": "subscribe", "args": ["1m.OLDUSDT"]}')
    reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert reply == {"op": "subscribe", "success": True, "ret_msg": "subscribed",
                     "args": ["1m.OLDUSDT"]}  # fmt: skip
    assert await asyncio.wait_for(ws.recv(decode=False), 10) == b"[" + old + b"]"

    await ws.close()
    await subscriber.close()
    assert proc.stop() == 0
    assert "stopped" in proc.output()


def test_unknown_consumer_exits_2_listing_the_known_ones(redis_url: str, tmp_path: Path) -> None:
    proc = python_module(
        "publish", "console", "nope", env=env(redis_url, "r1"), log_path=tmp_path / "p.log"
    )
    assert proc.popen.wait(20) == 2
    known = "console, postgres, redis, websocket"
    assert f"error: unknown consumer 'nope'; known: {known}" in proc.output()


def test_websocket_without_credentials_or_on_a_used_port_exits_2(
    redis_url: str, tmp_path: Path
) -> None:
    no_auth = env(redis_url, "r1", STREAMER_WSS_AUTH_KEY="")
    proc = python_module("publish", "websocket", env=no_auth, log_path=tmp_path / "a.log")
    assert proc.popen.wait(20) == 2
    assert "STREAMER_WSS_AUTH_USER and STREAMER_WSS_AUTH_KEY must both be set" in proc.output()
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = env(redis_url, "r1", STREAMER_WEBSOCKET_PORT=str(port))
        proc = python_module("publish", "websocket", env=busy, log_path=tmp_path / "b.log")
        assert proc.popen.wait(20) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in proc.output()


async def test_two_redis_replicas_publish_each_candle_once(
    redis_url: str, tmp_path: Path, procs: list[Proc]
) -> None:
    sync = redis.Redis.from_url(redis_url)
    # A third replica that read candles and died before publishing them.
    dead_raws = series(10, start_ms=1_700_000_000_000)
    for shard in (0, 1):
        sync.xgroup_create(f"{PREFIX}:{{{shard}}}:klines", "publish", id="$", mkstream=True)
    xadd_candles(sync, dead_raws)
    for shard in (0, 1):
        sync.xreadgroup("publish", "dead", {f"{PREFIX}:{{{shard}}}:klines": ">"}, count=1000)
    assert sum(
        sync.xpending(f"{PREFIX}:{{{shard}}}:klines", "publish")["pending"] for shard in (0, 1)
    ) == len(dead_raws)
    subscriber = await Subscriber(redis_url).start()
    for replica in ("r1", "r2"):
        proc = python_module(
            "publish", "redis",
            env=env(redis_url, replica, STREAMER_PUBLISH_CLAIM_IDLE_MS="300",
                    STREAMER_PUBLISH_BATCH="50"),
            log_path=tmp_path / f"{replica}.log",
        )  # fmt: skip
        procs.append(proc)
        proc.wait_output(READY)
    raws = series(2000, symbols=20)
    for start in range(0, 2000, 200):
        xadd_candles(sync, raws[start : start + 200])
    wanted = sorted(raws + dead_raws)
    await async_wait_until(
        lambda: _true(len(subscriber.candles()) >= len(wanted)), timeout_s=30, what="candles"
    )
    # Then one more, to be sure nothing else (a duplicate) was on its way before it.
    last = series(1, start_ms=1_900_000_000_000)
    xadd_candles(sync, last)
    await async_wait_until(lambda: _true(last[0] in subscriber.candles()), what="last candle")
    assert sorted(subscriber.candles()) == sorted(wanted + last)
    for shard in (0, 1):
        assert sync.xpending(f"{PREFIX}:{{{shard}}}:klines", "publish")["pending"] == 0
    await subscriber.close()


def test_publisher_waits_for_a_redis_that_is_not_up_yet(tmp_path: Path, procs: list[Proc]) -> None:
    port = free_port()
    proc = python_module(
        "publish", "console", env=env(f"redis://127.0.0.1:{port}/0", "r1"),
        log_path=tmp_path / "publish.log",
    )  # fmt: skip
    procs.append(proc)
    proc.wait_output("Redis unavailable at start, retrying")
    server = RedisProcess(tmp_path / "redis", port=port).start()
    try:
        proc.wait_output(READY)
        raws = series(5)
        xadd_candles(server.client(), raws)
        wait_until(lambda: len(console_lines(proc)) == 5, what="candles on the console")
        assert proc.stop() == 0
    finally:
        server.stop()


async def test_redis_restart_and_publisher_restart_resume_without_loss_or_duplicates(
    tmp_path: Path, procs: list[Proc]
) -> None:
    server = RedisProcess(tmp_path / "redis", extra=("--appendonly", "yes")).start()
    try:
        await _restart_scenario(server, tmp_path, procs)
    finally:
        for proc in procs:
            proc.stop()
        server.stop()


async def _restart_scenario(server: RedisProcess, tmp_path: Path, procs: list[Proc]) -> None:
    def start() -> Proc:
        proc = python_module(
            "publish", "console", "redis", env=env(server.url, "r1"),
            log_path=tmp_path / "publish.log",
        )  # fmt: skip
        procs.append(proc)
        return proc

    proc = start()
    proc.wait_output(READY)
    subscriber = await Subscriber(server.url).start()
    first = series(50, start_ms=1_786_000_000_000)
    xadd_candles(server.client(), first)
    wait_until(lambda: len(console_lines(proc)) == 50, what="first candles on the console")
    await async_wait_until(lambda: _true(len(subscriber.candles()) == 50), what="first pub/sub")
    await subscriber.close()

    server.stop()  # Redis goes away under the running publisher, and comes back (AOF)
    server.start()
    subscriber = await Subscriber(server.url).start()
    second = series(50, start_ms=1_786_100_000_000)
    xadd_candles(server.client(), second)
    wait_until(lambda: len(console_lines(proc)) == 100, timeout_s=30, what="second candles")
    await async_wait_until(lambda: _true(len(subscriber.candles()) == 50), what="second pub/sub")
    assert sorted(subscriber.candles()) == sorted(second)

    assert proc.stop() == 0  # the publisher restarts; candles written meanwhile are not lost
    third = series(50, start_ms=1_786_200_000_000)
    xadd_candles(server.client(), third)
    procs.remove(proc)
    proc = start()
    wait_until(lambda: len(console_lines(proc)) == 150, timeout_s=30, what="third candles")
    await async_wait_until(lambda: _true(len(subscriber.candles()) == 100), what="third pub/sub")
    assert sorted(console_lines(proc)) == sorted(format_candle(r) for r in first + second + third)
    assert sorted(subscriber.candles()) == sorted(second + third)
    await subscriber.close()
