"""History (docs/protocol.md "History over HTTP"): the store's cost in the candle write, and its
HTTP reads under load.

- Boundary burst: the aggregator's write script (aggregate.checkpoint.WRITE_LUA) with the
  candles of 500 symbols × 6 intervals closing at once, on a private redis-server, against the
  same script with the store's call taken out (the script before the store); the store's sets
  filled past the trim depth first, so ZADDs land in skiplists and trims happen as they do
  in a long run. Redis's own time per script (INFO commandstats), median of the bursts.
- Under the pipeline (bench.pipeline_trial's Run: simulator → ingest → aggregate → publish,
  500 symbols at 20,000 trades/s): 1m series of 100 symbols are given 1,000 older candles
  each (the depth a long run reaches), then `GET /v5/market/kline` with `limit=1000` and
  `limit=200`, one request at a time (latency from connect to the last byte, each a new
  connection, as the server closes it); requests/s of `/v5/market/kline` (limit=200) from 50
  concurrent clients beside `/health` requests/s from the same 50 clients in the same run (the
  listener's own ceiling, the baseline; four rounds of each, interleaved); and the candle delay
  p99 of that run (the pipeline rows of `make bench` measure it too: the store is always on).
- The store's bytes per candle: MEMORY USAGE of the full (1,000-candle) sets over their
  candles, and what 2,000 symbols × 6 intervals × 1,000 candles take at that size.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import statistics
import sys
import tempfile
import time
from pathlib import Path

from aggregate.checkpoint import WRITE_LUA
from bench.aggregate_nostore import STORE_CALL
from bench.pipeline_trial import WAITER_MS, Result, Run, pct
from bench.report import Row
from common.history import member_of
from common.keys import Keys
from common.sharding import shard_of
from common.wire import Candle, candle_encoder, raw_number
from tests.support.pipeline import PASSWORD, USER
from tests.support.redisproc import RedisProcess

DEPTH = 1000  # STREAMER_HISTORY_CANDLES, the default
INTERVALS = ("1s", "1m", "5m", "15m", "1h", "4h")
CLIENTS = 50
NOTES: list[str] = []
_AUTH = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def _candle(symbol: str, label: str, open_ms: int, n: int) -> bytes:
    price = raw_number(f"{100 + n % 50}.{n % 7}")
    return candle_encoder.encode(
        Candle(
            symbol=symbol, interval=60_000, interval_label=label, timestamp=open_ms,
            open=price, high=raw_number("151.25"), low=raw_number("99.5"), close=price,
            volume=raw_number("12.345"), turnover=raw_number("1543.21875"), trade_count=17,
            buy_volume=raw_number("6.2"), sell_volume=raw_number("6.145"),
        )
    )  # fmt: skip


def burst_rows(smoke: bool) -> list[Row]:
    symbols = 50 if smoke else 500
    depth = 20 if smoke else 200  # sets past 128 members are skiplists, as at 1,000
    bursts = 3 if smoke else 30
    keys = Keys("bench")
    names = [f"S{i:03d}USDT" for i in range(symbols)]
    script_keys = [keys.lease("aggregate", 0), keys.klines(0), keys.updates(0), keys.state(0)]
    store_keys = [keys.history(0, label, s) for s in names for label in INTERVALS]
    assert STORE_CALL in WRITE_LUA, "the store's call in the write script changed"
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        server = RedisProcess(Path(tmp) / "redis").start()
        client = server.client()
        try:
            for name, text in (("without", WRITE_LUA.replace(STORE_CALL, "")),
                               ("with", WRITE_LUA)):  # fmt: skip
                client.flushall()
                client.set(keys.lease("aggregate", 0), "tok")
                script = client.register_script(text)
                per_call = []
                for n in range(depth + bursts):
                    open_ms = 1_786_310_400_000 + n * 1000
                    closed = b"\n".join(
                        _candle(s, label, open_ms, n) for s in names for label in INTERVALS
                    )
                    args: list[bytes | str | int] = [
                        "tok",
                        10**6,
                        10_000,
                        b'{"last_id":"1-1"}',
                        b"",
                        closed,
                        b"",
                        depth,
                    ]
                    client.config_resetstat()
                    script(keys=script_keys + store_keys, args=args)
                    if n >= depth:
                        stats = client.info("commandstats")["cmdstat_evalsha"]
                        per_call.append(float(stats["usec_per_call"]) / 1000)
                    if n % 20 == 0:
                        client.delete(keys.klines(0))
                times[name] = statistics.median(per_call)
        finally:
            client.close()
            server.stop()
    stage = f"history, burst of {symbols} symbols × 6 intervals"
    return [
        Row(stage, "write script in Redis, with the store (median)", times["with"], "ms",
            "without the store", times["without"]),
        Row(stage, "the store's cost per candle", (times["with"] - times["without"]) * 1000
            / (symbols * 6), "µs"),
    ]  # fmt: skip


def _seed(run: Run, symbols: list[str]) -> None:
    """1,000 older 1m candles for each symbol, as the store holds them after a long run."""
    client = run.client
    now_minute = int(time.time() * 1000) // 60_000 * 60_000
    first = now_minute - (DEPTH + 10) * 60_000  # before anything the run wrote
    for symbol in symbols:
        key = run.pipe.keys.history(shard_of(symbol, run.pipe.shards), "1m", symbol)
        members = {}
        for n in range(DEPTH):
            members[member_of(_candle(symbol, "1m", first + n * 60_000, n))] = first + n * 60_000
        client.zadd(key, members)


def _symbols(run: Run, count: int) -> list[str]:
    found = set()
    for raw in run.client.scan_iter(match=run.pipe.keys.history_pattern(), count=1000):
        found.add(raw.decode().rsplit(":", 1)[1])
    return sorted(found)[:count]


def _get(port: int, target: str) -> float:
    """One request on a new connection: ms from connect to the body's last byte."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", target, headers={"Authorization": _AUTH})
    reply = conn.getresponse()
    body = reply.read()
    conn.close()
    if reply.status != 200 or (b'"retCode":0' not in body and target.startswith("/v5")):
        raise RuntimeError(f"{target}: HTTP {reply.status} {body[:200]!r}")
    return (time.perf_counter() - start) * 1000


async def _hammer(port: int, targets: list[str], clients: int, seconds: float) -> float:
    """Requests/s that `clients` concurrent connections-in-turn complete over `seconds`."""
    done = 0
    deadline = time.monotonic() + seconds

    async def client(offset: int) -> None:
        nonlocal done
        n = offset
        while time.monotonic() < deadline:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            target = targets[n % len(targets)]
            writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {_AUTH}"
                         "\r\n\r\n".encode())  # fmt: skip
            await reader.read(-1)  # the server closes after the answer
            writer.close()
            done += 1
            n += 1

    start = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return done / (time.monotonic() - start)


def pipeline_rows(smoke: bool) -> list[Row]:
    symbols, rate = (50, 2_000) if smoke else (500, 20_000)
    requests = 20 if smoke else 300
    seconds = 1.0 if smoke else 8.0
    window_s = 2.0 if smoke else 25.0
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        run = Run(Path(tmp), symbols, rate, None)
        try:
            run.warm_up()
            names = _symbols(run, 100)
            _seed(run, names)
            port = run.pipe.ws_port
            targets = {
                limit: [
                    f"/v5/market/kline?category=linear&symbol={s}&interval=1&limit={limit}"
                    for s in names
                ]
                for limit in (1000, 200)
            }
            latency = {limit: [_get(port, t) for t in (targets[limit] * 10)[:requests]]
                       for limit in (1000, 200)}  # fmt: skip
            # interleaved, so that both see the same moments of a shared machine
            rounds = [(asyncio.run(_hammer(port, targets[200], CLIENTS, seconds / 4)),
                       asyncio.run(_hammer(port, ["/health"], CLIENTS, seconds / 4)))
                      for _ in range(4)]  # fmt: skip
            kline_rps = statistics.mean(k for k, _ in rounds)
            health_rps = statistics.mean(h for _, h in rounds)
            sizes = [(int(run.client.memory_usage(k, samples=0) or 0), int(run.client.zcard(k)))
                     for k in (run.pipe.keys.history(shard_of(s, run.pipe.shards), "1m", s)
                               for s in names)]  # fmt: skip
            result = Result(symbols, rate, window_s)
            run.measure(result)
        finally:
            run.close()
    per_candle = sum(b for b, _ in sizes) / max(sum(n for _, n in sizes), 1)
    stage = f"history, pipeline {symbols} symbols @ {rate:,}/s"
    rows = []
    for limit in (1000, 200):
        for q in (50, 99):
            target = "p99 ≤ 20 ms" if q == 99 else ""
            what = f"GET /v5/market/kline limit={limit}, p{q}"
            rows.append(Row(stage, what, pct(latency[limit], q), "ms", target=target))
    rows += [
        Row(stage, f"/v5/market/kline limit=200, {CLIENTS} clients", kline_rps, "req/s",
            "/health", health_rps, target="≥ 0.3"),
        Row(stage, "store bytes per candle (1,000-candle sets)", per_candle, "B"),
        Row(stage, "store for 2,000 symbols × 6 intervals × 1,000 candles", per_candle
            * 2000 * 6 * DEPTH / 2**30, "GiB"),
        Row(stage, "candle delay p99 (same run, store on)", pct(result.delay_ms, 99), "ms"),
        Row(stage, f"candle delay p99 − waiter latency ({WAITER_MS} ms)",
            pct(result.delay_ms, 99) - WAITER_MS, "ms", target="≤ 25 ms"),
    ]  # fmt: skip
    print(f"  history: {len(names)} seeded series, delivered {result.delivered:,.0f}/s",
          file=sys.stderr, flush=True)  # fmt: skip
    return rows


def delay_rows(smoke: bool) -> list[Row]:
    """The candle delay p99 with the store and without it (bench.aggregate_nostore: the same
    aggregator, the store's call taken out of its write script), in alternating trials of the
    same load, so that both see the same machine; the median of each side's p99s."""
    symbols, rate = (50, 2_000) if smoke else (500, 20_000)
    trials, window_s = (1, 2.0) if smoke else (3, 25.0)
    p99: dict[str, list[float]] = {"with": [], "without": []}
    for _ in range(trials):
        for side, modules in (("with", {}), ("without", {"aggregate": "bench.aggregate_nostore"})):
            with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
                run = Run(Path(tmp), symbols, rate, None, modules=modules)
                try:
                    run.warm_up()
                    result = Result(symbols, rate, window_s)
                    run.measure(result)
                finally:
                    run.close()
            p99[side].append(pct(result.delay_ms, 99) - WAITER_MS)
    NOTES.append(
        f"history: candle delay p99 − waiter at {rate:,} trades/s, {symbols} symbols, alternating"
        f" trials: with the store {p99['with']} ms, without {p99['without']} ms"
    )
    stage = f"history, pipeline {symbols} symbols @ {rate:,}/s"
    return [
        Row(stage, f"candle delay p99 − waiter, with the store (median of {trials})",
            statistics.median(p99["with"]), "ms", "without the store",
            statistics.median(p99["without"])),
    ]  # fmt: skip


def run(smoke: bool) -> list[Row]:
    NOTES.clear()
    return burst_rows(smoke) + pipeline_rows(smoke) + delay_rows(smoke)


if __name__ == "__main__":
    for row in run(smoke="--smoke" in sys.argv):
        print(row)
