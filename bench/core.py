"""The candle core alone (issue 9): 1,000,000 trades, 500 symbols, 2 h, six intervals, in memory.

Trades come in the batches one Bybit message carries (1-20), prices a 2-decimal random walk per
symbol, 3-decimal sizes, random sides, strictly increasing times; all built before the timer.
The baseline is a plain Python loop in the same process on the same trades: a dict of
per-interval float lists per symbol, closing a candle when a trade crosses its boundary. Both
count candles per interval (empty candles off, first partial candle of each series left out,
every candle closed at the end) and the counts must agree.

`python -m bench.core` prints the figures; `python -m bench core` puts them in the table.
"""

# The baseline is the obvious loop; a comparison is what it would use.
# ruff: noqa: PLR1730

from __future__ import annotations

import hashlib
import multiprocessing
import random
import statistics
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aggregate.candles import CandleCore, CoreConfig
from aggregate.feed import EntryFeeder
from aggregate.output import CandleWriter
from bench.report import Row
from common.decimals import SCALE
from common.intervals import parse_intervals
from common.wire import ClockEntry, Side, Trade, TradesEntry, entry_encoder

INTERVALS = parse_intervals("1s,1m,5m,15m,1h,4h")
START_MS = 1_786_300_000_000


@dataclass
class Message:
    symbol: str
    times: list[int]
    prices: list[int]
    sizes: list[int]
    buys: list[bool]
    ids: list[str]
    float_prices: list[float]
    float_sizes: list[float]


def workload(
    trades: int, symbols: int = 500, span_ms: int = 7_200_000, seed: int = 1, min_step_ms: int = 1
) -> list[Message]:
    """`min_step_ms=0` allows equal times (denser streams than 1 trade per ms)."""
    rng = random.Random(seed)
    names = [f"S{i:03d}USDT" for i in range(symbols)]
    cents = {name: rng.randint(100, 10_000_000) for name in names}
    step = max(1, 2 * span_ms // trades - min_step_ms)
    t = START_MS
    messages: list[Message] = []
    serial = 0
    while serial < trades:
        name = rng.choice(names)
        n = min(rng.randint(1, 20), trades - serial)
        msg = Message(name, [], [], [], [], [], [], [])
        for _ in range(n):
            t += rng.randint(min_step_ms, step)
            cents[name] = max(1, cents[name] + rng.randint(-3, 3))
            milli = rng.randint(1, 100_000)
            serial += 1
            msg.times.append(t)
            msg.prices.append(cents[name] * SCALE // 100)
            msg.sizes.append(milli * SCALE // 1000)
            msg.buys.append(rng.random() < 0.5)
            msg.ids.append(f"{serial:032x}")
            msg.float_prices.append(cents[name] / 100)
            msg.float_sizes.append(milli / 1000)
        messages.append(msg)
    return messages


def run_core(messages: list[Message]) -> tuple[float, Counter[str]]:
    core = CandleCore(CoreConfig(INTERVALS, 80, 10_000, True, False))
    counts: Counter[str] = Counter()
    labels = [interval.label for interval in INTERVALS]
    feed = core.trades
    start = time.perf_counter()
    for msg in messages:
        feed(msg.symbol, msg.times, msg.prices, msg.sizes, msg.buys, msg.ids)
        if len(core.out) > 10_000:
            for candle in core.take():
                counts[labels[candle.interval]] += 1
    core.clock(messages[-1].times[-1] + 400 * 86_400_000)
    elapsed = time.perf_counter() - start
    for candle in core.take():
        counts[labels[candle.interval]] += 1
    return elapsed, counts


def run_plain(messages: list[Message]) -> tuple[float, Counter[str]]:
    """The baseline: the obvious loop, floats, one list per open candle."""
    lengths = [(interval.label, interval.ms) for interval in INTERVALS]
    candles: dict[str, list[list[float] | None]] = {}
    closed: list[tuple[str, str, list[float]]] = []
    start = time.perf_counter()
    for msg in messages:
        series = candles.get(msg.symbol)
        if series is None:
            series = candles[msg.symbol] = [None] * len(lengths)
        for t, price, size in zip(msg.times, msg.float_prices, msg.float_sizes, strict=True):
            for k, (label, length) in enumerate(lengths):
                open_ms = t - t % length
                candle = series[k]
                if candle is None or candle[0] != open_ms:
                    if candle is not None:
                        closed.append((msg.symbol, label, candle))
                    series[k] = [open_ms, price, price, price, price, size]
                else:
                    if price > candle[2]:
                        candle[2] = price
                    if price < candle[3]:
                        candle[3] = price
                    candle[4] = price
                    candle[5] += size
    for name, series in candles.items():
        for (label, _), candle in zip(lengths, series, strict=True):
            if candle is not None:
                closed.append((name, label, candle))
    elapsed = time.perf_counter() - start
    counts = Counter(label for _, label, _ in closed)
    for label, _ in lengths:
        counts[label] -= len(candles)  # the first, partial candle of each series
    return elapsed, counts


# (intervals, stream span in days): the calendar one crosses week and month ends.
DIGEST_CONFIGS = (("1s,1m,5m,15m,1h,4h", 0.25), ("1m,5m,1h", 0.25), ("1s,15s,1m", 0.25),
                  ("1h,1d,1w,1M", 75))  # fmt: skip


def digests(trades: int = 100_000) -> dict[str, str]:
    """sha256 of the candle JSON a core writes for the seeded workload, per configuration.

    In-order trades only: a change of the late-trade rules must leave these equal."""
    out: dict[str, str] = {}
    for text, days in DIGEST_CONFIGS:
        span_ms = int(days * 86_400_000)
        messages = workload(trades, symbols=20, span_ms=span_ms)
        intervals = parse_intervals(text)
        writer = CandleWriter(intervals, "linear")
        for emit, bybit in ((True, True), (False, True), (True, False)):
            core = CandleCore(CoreConfig(intervals, 80, 10_000, bybit, emit))
            digest = hashlib.sha256()
            for msg in messages:
                core.trades(msg.symbol, msg.times, msg.prices, msg.sizes, msg.buys, msg.ids)
                for candle in core.take():
                    digest.update(writer.encode(candle) + b"\n")
            end = messages[-1].times[-1]
            for step in range(1, 101):  # closing what is due, in steps: bounded memory
                core.clock(end + step * span_ms // 100)
                for candle in core.take():
                    digest.update(writer.encode(candle) + b"\n")
            name = f"{text} empty={'emit' if emit else 'skip'} open={'prev' if bybit else 'first'}"
            out[name] = digest.hexdigest()[:16]
    return out


def tiny_grid(symbols: int = 20, stream_s: int = 60) -> tuple[float, float]:
    """`333ms,1s` (a 1 ms common grid) with empty candles on, 2 trades/s per symbol: seconds of
    CPU per second of stream, and trades/s (issue 14: the closing walk must not run per ms)."""
    trades = 2 * symbols * stream_s
    messages = workload(trades, symbols=symbols, span_ms=stream_s * 1000)
    core = CandleCore(CoreConfig(parse_intervals("333ms,1s"), 80, 10_000, True, True))
    start = time.process_time()
    for msg in messages:
        core.trades(msg.symbol, msg.times, msg.prices, msg.sizes, msg.buys, msg.ids)
        core.out.clear()
    elapsed = time.process_time() - start
    span_s = (messages[-1].times[-1] - messages[0].times[0]) / 1000
    return elapsed / span_s, trades / elapsed


def _rss_run(symbols: int, rate: int, seconds: int, out: Any) -> None:
    """In its own process: the aggregator's entry path (decode, parse, core) over `seconds` of
    stream at `rate` trades/s (Bybit-like messages of 1-5 trades, UUID trade ids, a clock
    entry every 20 ms), as fast as it goes; then its RSS."""
    core = CandleCore(CoreConfig(parse_intervals("1d,1w,1M"), 80, 10_000))
    feeder = EntryFeeder(core)
    rng = random.Random(3)
    names = [f"S{i:04d}USDT" for i in range(symbols)]
    t = float(START_MS)
    end = START_MS + seconds * 1000
    next_clock = START_MS
    serial = 0
    batch: list[bytes] = []
    start = time.perf_counter()
    while t < end:
        n = rng.randint(1, 5)
        trades = []
        for _ in range(n):
            serial += 1
            trade_id = str(uuid.UUID(int=rng.getrandbits(128)))
            price = f"{rng.randint(10_000, 10_100) / 100:.2f}"
            trades.append(Trade(int(t), price, "0.010", Side.BUY, trade_id))
        batch.append(entry_encoder.encode(TradesEntry(rng.choice(names), trades)))
        t += n * 1000 / rate
        if t >= next_clock:
            batch.append(entry_encoder.encode(ClockEntry(int(t))))
            next_clock = int(t) + 20
        if len(batch) >= 2000:
            feeder.feed(batch)
            batch.clear()
            core.out.clear()
    feeder.feed(batch)
    elapsed = time.perf_counter() - start
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    remembered = getattr(core, "remembered_ids", lambda: -1)()
    out.put((status["VmRSS"].strip(), status["VmHWM"].strip(), serial, remembered, elapsed))


def rss_calendar(symbols: int = 2_000, rate: int = 5_000, seconds: int = 600) -> tuple[Any, ...]:
    """(RSS, peak RSS, trades, ids the duplicate filter holds, seconds taken) of `_rss_run`."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    process = context.Process(target=_rss_run, args=(symbols, rate, seconds, out))
    process.start()
    result: tuple[Any, ...] = out.get()
    process.join()
    return result


def run(smoke: bool) -> list[Row]:
    trades = 50_000 if smoke else 1_000_000
    messages = workload(trades)
    core_rates, plain_rates = [], []
    counts_core: Counter[str] = Counter()
    counts_plain: Counter[str] = Counter()
    for _ in range(1 if smoke else 3):
        elapsed, counts_core = run_core(messages)
        core_rates.append(trades / elapsed)
        elapsed, counts_plain = run_plain(messages)
        plain_rates.append(trades / elapsed)
    if counts_core != counts_plain:
        raise AssertionError(f"candle counts differ: core {counts_core} plain {counts_plain}")
    core_rate = statistics.median(core_rates)
    plain_rate = statistics.median(plain_rates)
    per_interval = ", ".join(f"{i.label} {counts_core[i.label]}" for i in INTERVALS)
    print(
        f"core {core_rate:,.0f} trades/s, plain loop {plain_rate:,.0f} trades/s, "
        f"ratio {core_rate / plain_rate:.2f}; candles (both): {per_interval}",
        file=sys.stderr,
    )
    return [
        Row(
            "aggregate",
            f"candle core, {trades:,} trades, 500 symbols, 6 intervals",
            core_rate,
            "trades/s",
            "plain loop",
            plain_rate,
            "≥ 800 k and ≥ 2.5×",
        )
    ]


if __name__ == "__main__":
    if "--digest" in sys.argv:
        for config, value in digests().items():
            print(f"{value}  {config}")
    elif "--rss" in sys.argv:
        rss, peak, count, ids, took = rss_calendar()
        print(
            f"1d,1w,1M, 2,000 symbols, 10 min of stream at 5,000 trades/s ({count:,} trades, "
            f"{took:.0f} s): RSS {rss}, peak {peak}; duplicate filter {ids:,} ids"
        )
    elif "--tiny" in sys.argv:
        cpu_per_s, rate = tiny_grid()
        print(f"333ms,1s, 20 symbols: {cpu_per_s:.4f} s of CPU per s of stream, {rate:,.0f} /s")
    else:
        for row in run("--smoke" in sys.argv):
            print(row)
