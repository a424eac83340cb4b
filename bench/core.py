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

import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass

from aggregate.candles import CandleCore, CoreConfig
from bench.report import Row
from common.decimals import SCALE
from common.intervals import parse_intervals

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
    for row in run("--smoke" in sys.argv):
        print(row)
