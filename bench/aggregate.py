"""The aggregator's real code path on a private redis-server: XREAD + decode + core + atomic write.

1. Throughput: one shard's trade stream (500 symbols, six intervals 1s,1m,5m,15m,1h,4h, Bybit-sized
   messages, clock entries every 20 ms of trade time) is prepared, then read by a raw XREAD loop
   (the ceiling) and by `ShardAggregator` steps, in the same run.
2. Closing delay: a producer process plays ingest (trades stamped with the wall clock, 2500/s over
   500 symbols, a clock entry at every 20 ms multiple of the wall clock, as ingest's grid) while
   the aggregator follows the stream with default settings (empty candles on: all 500 symbols
   close a 1 s candle at every boundary); per 1 s candle, written minus (end + waiter latency), in
   stream time (the stream time reached when it was written) and in wall time.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from aggregate.service import core_config
from aggregate.shard import OnWritten, ShardAggregator, _entries
from aggregate.state import CoreCandle
from bench.core import workload
from bench.report import Row
from common.decimals import SCALE
from common.keys import Keys
from common.settings import AggregateSettings
from common.wire import STREAM_FIELD, ClockEntry, Side, Trade, TradesEntry, entry_encoder
from tests.support.redisproc import RedisProcess

INTERVALS = "1s,1m,5m,15m,1h,4h"
LATENCY_MS = 80


def _settings(url: str) -> AggregateSettings:
    return AggregateSettings(
        redis_url=url,
        kline_intervals=INTERVALS,
        aggregator_waiter_latency_ms=LATENCY_MS,
        aggregator_batch=2000,
    )


def _stream_payloads(trades: int) -> tuple[list[bytes], int]:
    payloads: list[bytes] = []
    next_clock = 0
    count = 0
    # Steps of 0 or 1 ms: about 2,000 trades per second of trade time over 500 symbols, so most
    # symbols' 1 s candles are empty, as on Bybit's linear market (empty candles are emitted).
    for msg in workload(trades, span_ms=trades // 10, min_step_ms=0):
        batch = [
            Trade(t, f"{p / SCALE:.2f}", f"{s / SCALE:.3f}", Side.BUY if b else Side.SELL, i)
            for t, p, s, b, i in zip(
                msg.times, msg.prices, msg.sizes, msg.buys, msg.ids, strict=True
            )
        ]
        payloads.append(entry_encoder.encode(TradesEntry(msg.symbol, batch)))
        count += len(batch)
        if msg.times[-1] >= next_clock:
            payloads.append(entry_encoder.encode(ClockEntry(msg.times[-1])))
            next_clock = msg.times[-1] + 20
    return payloads, count


async def _fill(client: aioredis.Redis, stream: str, payloads: list[bytes]) -> str:
    last = b""
    for i in range(0, len(payloads), 2000):
        pipe = client.pipeline(transaction=False)
        for data in payloads[i : i + 2000]:
            pipe.xadd(stream, {STREAM_FIELD: data})
        last = (await pipe.execute())[-1]
    return last.decode()


async def _raw_read(client: aioredis.Redis, stream: str, last: str) -> float:
    start = time.perf_counter()
    position = "0-0"
    while position != last:
        reply = await client.execute_command(  # type: ignore[no-untyped-call]  # unannotated in redis-py
            "XREAD", "COUNT", 2000, "STREAMS", stream, position
        )
        entries = _entries(reply)
        position = entries[-1][0].decode()
    return time.perf_counter() - start


def _worker(
    client: aioredis.Redis, keys: Keys, url: str, on_written: OnWritten | None = None
) -> ShardAggregator:
    settings = _settings(url)
    return ShardAggregator(
        client, keys, 0, core_config(settings), "linear", "bench", 2000, 10**7, 10**5,
        on_written=on_written,
    )  # fmt: skip


async def _throughput(client: aioredis.Redis, url: str, trades: int, trials: int) -> list[Row]:
    payloads, count = _stream_payloads(trades)
    keys = Keys("tp")
    last = await _fill(client, keys.trades(0), payloads)
    await client.set(keys.lease("aggregate", 0), "bench")
    raw_rates, agg_rates, cpu_rates = [], [], []
    for _ in range(trials):
        raw_rates.append(count / await _raw_read(client, keys.trades(0), last))
        await client.delete(keys.state(0), keys.klines(0))
        worker = _worker(client, keys, url)
        await worker.load()
        start, cpu_start = time.perf_counter(), time.process_time()
        while worker.last_id != last:
            await worker.step(block_ms=None, overlap=True)
        await worker.step(block_ms=None, overlap=True)  # the final write
        await worker.drain()
        agg_rates.append(count / (time.perf_counter() - start))
        cpu_rates.append(count / (time.process_time() - cpu_start))
    raw, agg = statistics.median(raw_rates), statistics.median(agg_rates)
    cpu = statistics.median(cpu_rates)
    ratios = [a / r for a, r in zip(agg_rates, raw_rates, strict=True)]
    print(
        f"aggregate {agg:,.0f} trades/s ({cpu:,.0f} per CPU-second of the process), "
        f"raw XREAD {raw:,.0f} trades/s, same-trial ratio median {statistics.median(ratios):.3f}",
        file=sys.stderr,
    )
    return [
        Row("aggregate", "service path, 1 process, 500 symbols, 6 intervals", agg, "trades/s",
            "raw XREAD loop", raw, "≥ 250 k and ≥ 0.3×"),
        Row("aggregate", "service path, trades per CPU-second of the process", cpu, "trades/s"),
    ]  # fmt: skip


def _produce(url: str, stream: str, symbols: int, rate: int, stop_at: float) -> None:
    """The ingest side, in its own process: trades stamped with the wall clock as they are
    written, a few symbols per 2 ms, and a clock entry at every 20 ms multiple of the wall clock
    (ingest's grid), until `stop_at` (wall seconds)."""
    client = redis.Redis.from_url(url)
    rng = random.Random(5)
    serial = 0
    next_clock = 0
    per_tick = max(1, rate // 500)
    while time.time() < stop_at:
        now_ms = int(time.time() * 1000)
        pipe = client.pipeline(transaction=False)
        for _ in range(per_tick):
            serial += 1
            name = f"S{min(int(rng.expovariate(1 / 40)), symbols - 1):03d}USDT"  # a few busy ones
            trade = Trade(now_ms, f"{100 + serial % 7}.5", "0.01", Side.BUY, f"x{serial}")
            pipe.xadd(stream, {STREAM_FIELD: entry_encoder.encode(TradesEntry(name, [trade]))})
        if now_ms >= next_clock:
            tick = now_ms - now_ms % 20
            pipe.xadd(stream, {STREAM_FIELD: entry_encoder.encode(ClockEntry(tick))})
            next_clock = tick + 20
        pipe.execute()
        time.sleep(0.002)
    client.close()


async def _closing_delay(client: aioredis.Redis, url: str, seconds: float) -> list[Row]:
    """500 symbols in one shard (all of linear), empty candles on: every symbol closes a 1 s
    candle every second, the burst a shard really has at each boundary."""
    keys = Keys("live")
    await client.set(keys.lease("aggregate", 0), "bench")
    stream_delays: list[float] = []
    wall_delays: list[float] = []
    symbols = 500

    def written(candles: list[CoreCandle], wall_ms: float, now: int) -> None:
        for c in candles:
            if c.revision == 0 and c.interval == 0:  # the 1s candles: most, and the tightest
                due = c.open_ms + 1000 + LATENCY_MS
                stream_delays.append(now - due)
                wall_delays.append(wall_ms - due)

    worker = _worker(client, keys, url, written)
    await worker.load()
    stop_at = time.time() + seconds
    producer = multiprocessing.get_context("spawn").Process(
        target=_produce, args=(url, keys.trades(0), symbols, 2500, stop_at)
    )
    producer.start()
    while time.time() < stop_at + 0.3:
        await worker.step(block_ms=5, overlap=True)
    await worker.drain()
    producer.join()
    rows = []
    for name, values in (("stream time", stream_delays), ("wall time", wall_delays)):
        if not values:
            continue
        values.sort()
        p50 = values[len(values) // 2]
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
        print(f"closing delay ({name}) p50 {p50:.1f} ms, p99 {p99:.1f} ms", file=sys.stderr)
        rows.append(Row("aggregate", f"closing delay p50, {name}", p50, "ms"))
        rows.append(Row("aggregate", f"closing delay p99, {name}", p99, "ms", target="≤ 10 ms"))
    return rows


async def _main(smoke: bool, workdir: Path) -> list[Row]:
    server = RedisProcess(workdir).start()
    try:
        client: Any = aioredis.Redis.from_url(server.url, socket_timeout=None)
        client.response_callbacks.pop("XREAD", None)
        rows = await _throughput(
            client, server.url, 30_000 if smoke else 500_000, 1 if smoke else 3
        )
        rows += await _closing_delay(client, server.url, 3.0 if smoke else 8.0)
        await client.aclose()
        return rows
    finally:
        server.stop()


def run(smoke: bool) -> list[Row]:
    with tempfile.TemporaryDirectory() as workdir:
        return asyncio.run(_main(smoke, Path(workdir)))


if __name__ == "__main__":
    for row in run("--smoke" in sys.argv):
        print(row)
