"""Ingest throughput: pre-recorded Bybit publicTrade frames → fenced batch writes into Redis.

The measured path is the live one, minus the socket: `parse_frame` (msgspec decode of the raw
frame) → `IngestShards.on_trades` (dedup by trade id, TradesEntry encode, queue) → `Writer.run`
(batches, clock entries, one fenced Lua call per shard batch), on uvloop, into a private
redis-server this bench starts. The baseline, in the same run and on the same server, is a raw
sync pipeline of 1000 XADDs of the same (already encoded) entries: what redis-py does at best
without a script.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path

import msgspec
import redis
import redis.asyncio as aioredis

from bench.report import Row
from common.keys import Keys
from common.lifecycle import TaskSet
from common.sharding import shard_of
from common.wire import Category
from ingest.bybit.messages import TradeMessage, parse_frame
from ingest.pool import Pool
from ingest.shards import IngestShards
from ingest.writer import Writer, encode_trades
from tests.support.redisproc import RedisProcess

SHARDS = 3
SYMBOLS = [f"S{i:03d}USDT" for i in range(200)]
TOKEN = "bench"
_encode = msgspec.json.Encoder().encode


def make_frames(count: int, seed: int = 1) -> list[bytes]:
    """Frames shaped like the real capture: ~69% carry one trade, 2.9 trades on average."""
    rng = random.Random(seed)
    frames: list[bytes] = []
    time_ms = 1_786_310_819_000
    for _ in range(count):
        symbol = rng.choice(SYMBOLS)
        n = 1 if rng.random() < 0.69 else rng.randint(2, 12)
        time_ms += rng.randint(0, 3)
        trades = [
            {
                "T": time_ms,
                "s": symbol,
                "S": rng.choice(("Buy", "Sell")),
                "v": f"{rng.randint(1, 9999) / 1000:.3f}",
                "p": f"{65000 + rng.randint(0, 999) / 10:.2f}",
                "L": "PlusTick",
                "i": str(uuid.UUID(int=rng.getrandbits(128))),
                "BT": False,
                "RPI": False,
                "seq": 753843954913 + len(frames),
            }
            for _ in range(n)
        ]
        message = {"topic": f"publicTrade.{symbol}", "type": "snapshot", "ts": time_ms + 1}
        frames.append(_encode({**message, "data": trades}))
    return frames


class _Server:
    """A private redis-server (tests/support/redisproc.py) in a temporary folder."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="bench-ingest-")
        self.redis = RedisProcess(Path(self.dir)).start()

    @property
    def url(self) -> str:
        return self.redis.url

    def stop(self) -> None:
        self.redis.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


async def _ingest_once(url: str, frames: list[bytes]) -> tuple[int, float, float]:
    client = aioredis.Redis.from_url(url, socket_timeout=None)
    await client.flushall()
    keys = Keys("bench")
    for shard in range(SHARDS):
        await client.set(keys.lease("ingest", shard), TOKEN)
    open_writer = partial(
        Writer,
        client,
        keys,
        TOKEN,
        clock_interval_ms=5,
        buffer_max=10_000_000,
        batch_max=1000,
        retention_s=3600,
    )
    tasks = TaskSet()
    stop = asyncio.Event()
    # A pool of no connections: the frames are fed to `on_trades` below, without a socket.
    no_sockets = partial(
        Pool, "ws://unused", Category.LINEAR, 0, ping_interval_s=20.0, dead_after_s=60.0,
        tasks=tasks, stop=stop,
    )  # fmt: skip
    shards = IngestShards(
        client, keys, SHARDS, tasks, 10.0, open_writer=open_writer, open_pool=no_sockets
    )
    writer = shards.writer
    for shard in range(SHARDS):
        shards.own(shard, [s for s in SYMBOLS if shard_of(s, SHARDS) == shard])
        writer.ready.add(shard)
    writer_task = asyncio.create_task(writer.run(stop))
    on_trades = shards.on_trades
    trades = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for index, raw in enumerate(frames):
        message = parse_frame(raw)
        assert isinstance(message, TradeMessage)
        trades += len(message.trades)
        on_trades(message, 1_786_310_820_000 + index)
        if index % 200 == 199:
            await asyncio.sleep(0)  # the reader yields to the loop as a socket read would
    await writer.drained(120)
    elapsed, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    stop.set()
    await writer_task
    written = sum([await client.xlen(keys.trades(k)) for k in range(SHARDS)])
    assert written >= len(frames), f"only {written} of {len(frames)} entries written"
    await client.aclose()
    return trades, elapsed, cpu_s


def _raw_once(url: str, payloads: list[bytes], trades: int) -> tuple[float, float]:
    client = redis.Redis.from_url(url)
    client.flushall()
    stream = "bench:{0}:raw"
    start, cpu_start = time.perf_counter(), time.process_time()
    for offset in range(0, len(payloads), 1000):
        pipe = client.pipeline(transaction=False)
        for payload in payloads[offset : offset + 1000]:
            pipe.xadd(stream, {b"data": payload})
        pipe.execute()
    elapsed, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    client.close()
    return trades / elapsed, trades / cpu_s


def _payloads(frames: list[bytes]) -> list[bytes]:
    out = []
    for raw in frames:
        message = parse_frame(raw)
        assert isinstance(message, TradeMessage)
        out.append(encode_trades(message.symbol, message.trades, message.exchange_ms, 0))
    return out


def run(smoke: bool) -> list[Row]:
    import statistics

    import uvloop

    count, trials = (3_000, 1) if smoke else (60_000, 5)
    frames = make_frames(count)
    payloads = _payloads(frames)
    server = _Server()
    ingest_rates, raw_rates, ingest_cpu, raw_cpu, total = [], [], [], [], 0
    try:
        for _ in range(trials):  # interleaved, so the ratio is fair on a noisy box
            total, elapsed, cpu_s = uvloop.run(_ingest_once(server.url, frames))
            ingest_rates.append(total / elapsed)
            ingest_cpu.append(total / cpu_s)
            rate, per_cpu = _raw_once(server.url, payloads, total)
            raw_rates.append(rate)
            raw_cpu.append(per_cpu)
    finally:
        server.stop()
    ingest_rate = statistics.median(ingest_rates)
    raw_rate = statistics.median(raw_rates)
    return [
        Row(
            "ingest",
            f"frames → decode+dedup+encode+fenced Lua batch ({total:,} trades, {count:,} msgs)",
            ingest_rate,
            "trades/s",
            "raw pipelined XADD",
            raw_rate,
            "≥ 100 k/s and ≥ 0.5 × raw",
        ),
        Row(
            "ingest",
            "the same, per CPU-second of the client process (Lua work is in redis-server)",
            statistics.median(ingest_cpu),
            "trades/CPU-s",
            "raw pipelined XADD",
            statistics.median(raw_cpu),
        ),
    ]
