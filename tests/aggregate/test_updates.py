"""In-progress snapshots (STREAMER_KLINE_UPDATES_MS, `<p>:{k}:updates`) value by value.

A real `python -m aggregate` on a real redis-server reads an in-order trade stream (no late or
re-sent trades, so what a snapshot holds is defined by the stream alone). The snapshots of one
symbol at one update tick (1s, then 5s) must each hold every trade of their candle up to the
same point of the stream (the latest trade any of them holds), and equal the reference there:
the candle of those trades opened at the previous candle's close by Bybit's rule, computed with
Decimal from the entries written (tests/support/expected.py), never from the aggregator's output.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pytest
import redis

from common.intervals import parse_intervals
from common.keys import Keys
from common.wire import (
    STREAM_FIELD,
    CandleView,
    ClockEntry,
    Side,
    Trade,
    TradesEntry,
    candle_view_decoder,
    entry_encoder,
)
from tests.aggregate.test_service import checkpoint_id, env, fill
from tests.support import replies
from tests.support.expected import Key, LedgerTrade, Values, check_series
from tests.support.procs import python_module
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

START_MS = 1_786_310_000_000
INTERVALS = parse_intervals("1s,5s")


def in_order_stream(messages: int, seed: int = 11) -> tuple[list[bytes], list[LedgerTrade]]:
    """Messages in time order over 8 symbols with ingest clock entries; and its trades."""
    rng = random.Random(seed)
    symbols = [f"U{i}USDT" for i in range(8)]
    prices = {s: rng.randint(10_000, 90_000) for s in symbols}
    t = START_MS
    out: list[bytes] = []
    trades: list[LedgerTrade] = []
    for n in range(messages):
        t += rng.randint(0, 25)
        symbol = rng.choice(symbols)
        batch = []
        for _ in range(rng.randint(1, 4)):
            prices[symbol] += rng.randint(-3, 3)
            price, size = f"{prices[symbol] / 100:.2f}", f"{rng.randint(1, 99_999) / 10_000:.4f}"
            side = Side.BUY if rng.random() < 0.5 else Side.SELL
            batch.append(Trade(t, price, size, side, f"u{len(trades)}"))
            trades.append(LedgerTrade(symbol, t, Decimal(price), Decimal(size),
                                      side is Side.BUY, f"u{len(trades)}"))  # fmt: skip
        out.append(entry_encoder.encode(TradesEntry(symbol, batch, t, t + 3)))
        if n % 7 == 0:
            out.append(entry_encoder.encode(ClockEntry(t + rng.randint(0, 40))))
    out.append(entry_encoder.encode(ClockEntry(t + 60_000)))
    return out, trades


def candles_of(trades: list[LedgerTrade]) -> dict[Key, list[int]]:
    """Every candle's trades, as positions in the stream (in stream order)."""
    out: dict[Key, list[int]] = defaultdict(list)
    for position, trade in enumerate(trades):
        for interval in INTERVALS:
            out[(trade.symbol, interval.ms, interval.floor(trade.time_ms))].append(position)
    return out


def reference(
    trades: list[LedgerTrade], candles: dict[Key, list[int]], key: Key, cut: int
) -> tuple[Values, Decimal]:
    """The candle `key` holding its trades up to stream position `cut`; and its sell volume."""
    symbol, _, open_ms = key
    earlier = [t for t in trades if t.symbol == symbol and t.time_ms < open_ms]
    assert earlier, f"{key}: a snapshot of the first, partial candle"
    first = earlier[-1].price  # the previous candle's close (the stream is in time order)
    inside = [trades[i] for i in candles.get(key, []) if i <= cut]
    prices = [t.price for t in inside]
    values = Values(
        first, max([first, *prices]), min([first, *prices]), prices[-1] if prices else first,
        sum((t.size for t in inside), Decimal(0)),
        sum((t.size * t.price for t in inside), Decimal(0)),
        len(inside), sum((t.size for t in inside if t.buy), Decimal(0)),
    )  # fmt: skip
    return values, sum((t.size for t in inside if not t.buy), Decimal(0))


def ticks(updates: list[CandleView]) -> list[list[CandleView]]:
    """The snapshots of one symbol at one update tick: consecutive, finest interval first."""
    out: list[list[CandleView]] = []
    for view in updates:
        if out and out[-1][-1].symbol == view.symbol and out[-1][-1].interval < view.interval:
            out[-1].append(view)
        else:
            out.append([view])
    return out


def test_every_in_progress_snapshot_equals_the_reference(redis_url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = Keys("updates")
    entries, trades = in_order_stream(4000)
    last = fill(client, keys.trades(0), entries).decode()
    proc = python_module(
        "aggregate",
        env={**env(redis_url, "updates"), "STREAMER_KLINE_INTERVALS": "1s,5s",
             "STREAMER_KLINE_UPDATES_MS": "500"},
        log_path=tmp_path / "aggregate.log",
    )  # fmt: skip
    wait_until(lambda: checkpoint_id(client, keys, proc) == last, 60, "the run to finish")
    proc.wait_output("aggregate started")
    assert proc.stop() == 0
    updates = [
        candle_view_decoder.decode(fields[STREAM_FIELD])
        for _, fields in replies.entries(client.xrange(keys.updates(0)))
    ]
    candles = candles_of(trades)
    counts: dict[Key, list[int]] = defaultdict(list)
    for group in ticks(updates):
        # Where in the stream the aggregator was at this tick: the latest trade any of the
        # symbol's snapshots holds (each holds the first `trade_count` trades of its candle).
        cut = max(
            (candles[(v.symbol, v.interval, v.timestamp)][v.trade_count - 1] for v in group
             if v.trade_count),
            default=-1,
        )  # fmt: skip
        for view in group:
            key = (view.symbol, view.interval, view.timestamp)
            want, sell = reference(trades, candles, key, cut)
            got = Values.of(view)
            assert (got, view.sell_volume) == (want, sell), (key, cut)
            assert (view.closed, view.revision, view.gap) == (False, 0, False), key
            counts[key].append(got.trade_count)
    # A snapshot is written only for a changed candle: each one holds more trades than the last.
    assert all(a < b for seq in counts.values() for a, b in itertools.pairwise(seq))
    per_interval = {i.ms: sum(1 for k in counts if k[1] == i.ms) for i in INTERVALS}
    print(f"in-progress snapshots compared: {len(updates)}, candles per interval: {per_interval}")
    assert len(updates) >= 1000 and per_interval[1000] >= 8 * 40 and per_interval[5000] >= 8 * 8
    # The closed candles of the same run, against the same trades.
    views = [
        candle_view_decoder.decode(f[STREAM_FIELD])
        for _, f in replies.entries(client.xrange(keys.klines(0)))
    ]
    closed = {(v.symbol, v.interval, v.timestamp): v for v in views}
    # the last clock entry (60 s past the last trade) has closed every candle ending 55 s after it
    closed_by_ms = max(t.time_ms for t in trades) + 55_000
    check_series(trades, INTERVALS, closed, closed_by_ms, {1000: 8 * 40, 5000: 8 * 8})
