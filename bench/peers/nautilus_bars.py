"""nautilus_trader's TimeBarAggregator on the trades file written by `python -m bench.peers`.

Runs inside the peers venv (var/peers/venv, nautilus_trader 1.221.0), not the project's: it
imports only the standard library and nautilus_trader, never the project.

usage: python nautilus_bars.py TRADES_FILE {timers,batch}

Before the timer: one CryptoPerpetual per symbol (price precision 2, size precision 3), one
TradeTick per trade (ts_event = ts_init = the trade's time in ns), one TestClock per symbol set to
the time of the first trade of all, and on it six TimeBarAggregators (1s,1m,5m,15m,1h,4h: 3,000
in all, `build_with_no_updates=False`), each with a handler counting its bars (and those of
volume 0).

timers (how a live node or a backtest closes time bars), `skip_first_non_full_bar=True`. Timed:
for each trade, `clock.advance_time(ts)` on its symbol's clock and `handle()` of every timer event
it returns (the aggregator's own `_build_bar` callback: a bar that closed at or before this trade
is built first, as a backtest's clock does), then `handle_trade_tick` on the symbol's six
aggregators. At the end, each aggregator still holding trades gets the one timer event it would
get at its next close (its `_build_bar` with a TimeEvent at its timer's next time), instead of the
clocks being advanced hours past the last trade through every empty second.

batch (how nautilus's DataEngine aggregates requested historical ticks: no timer fires).
`start_batch_update(handler, first trade's time)` on every aggregator before the timer; timed:
`handle_trade_tick` on the symbol's six aggregators for each trade, then `stop_batch_update()`.
A bar is built when a later trade passes its close; as in the DataEngine, the last, open bar of
each series is not emitted, and the first is (`skip_first_non_full_bar=False`).

Prints one JSON line: {"trades": n, "elapsed_s": s, "trades_per_s": r, "bars": {label: count},
"empty_bars": {label: count}}.
"""

from __future__ import annotations

import json
import struct
import sys
import time
from array import array
from collections.abc import Callable
from typing import Any

from nautilus_trader.common.component import TestClock, TimeEvent
from nautilus_trader.core.uuid import UUID4
from nautilus_trader.data.aggregation import TimeBarAggregator
from nautilus_trader.model.currencies import BTC, USDT
from nautilus_trader.model.data import Bar, BarType, TradeTick
from nautilus_trader.model.enums import AggressorSide
from nautilus_trader.model.identifiers import InstrumentId, Symbol, TradeId, Venue
from nautilus_trader.model.instruments import CryptoPerpetual
from nautilus_trader.model.objects import Price, Quantity

INTERVALS = [
    ("1s", "1-SECOND"),
    ("1m", "1-MINUTE"),
    ("5m", "5-MINUTE"),
    ("15m", "15-MINUTE"),
    ("1h", "1-HOUR"),
    ("4h", "4-HOUR"),
]


def load(
    path: str,
) -> tuple[list[str], array[float], array[float], array[float], array[int], bytes, bytes]:
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"TRADES01":
        raise ValueError(f"{path}: not a trades file")
    (length,) = struct.unpack_from("<I", data, 8)
    header = json.loads(data[12 : 12 + length])
    n: int = header["n"]
    offset = 12 + length

    def column(code: str, width: int) -> array[Any]:  # float or int, as `code` says
        nonlocal offset
        values = array(code)
        values.frombytes(data[offset : offset + n * width])
        offset += n * width
        return values

    times = column("d", 8)
    prices = column("d", 8)
    sizes = column("d", 8)
    symbols = column("H", 2)
    buys = data[offset : offset + n]
    ids = data[offset + n : offset + 33 * n]
    return header["symbols"], times, prices, sizes, symbols, buys, ids


def instrument(name: str, ts: int) -> CryptoPerpetual:
    return CryptoPerpetual(
        instrument_id=InstrumentId(Symbol(f"{name}-LINEAR"), Venue("BYBIT")),
        raw_symbol=Symbol(name),
        base_currency=BTC,
        quote_currency=USDT,
        settlement_currency=USDT,
        is_inverse=False,
        price_precision=2,
        size_precision=3,
        price_increment=Price.from_str("0.01"),
        size_increment=Quantity.from_str("0.001"),
        ts_event=ts,
        ts_init=ts,
    )


def counter(counts: dict[str, int], empty: dict[str, int], label: str) -> Callable[[Bar], None]:
    def handler(bar: Bar) -> None:
        counts[label] += 1
        if not bar.volume.raw:
            empty[label] += 1

    return handler


def main() -> None:
    path, mode = sys.argv[1:3]
    if mode not in {"timers", "batch"}:
        raise SystemExit(f"mode must be timers or batch, not {mode!r}")
    batch = mode == "batch"
    names, times, prices, sizes, symbols, buys, ids = load(path)
    n = len(times)
    start_ns = int(times[0]) * 1_000_000
    instruments = [instrument(name, start_ns) for name in names]
    ticks = [
        TradeTick(
            instruments[symbols[i]].id,
            Price(prices[i], 2),
            Quantity(sizes[i], 3),
            AggressorSide.BUYER if buys[i] else AggressorSide.SELLER,
            TradeId(ids[32 * i : 32 * i + 32].decode()),
            int(times[i]) * 1_000_000,
            int(times[i]) * 1_000_000,
        )
        for i in range(n)
    ]
    counts = dict.fromkeys((label for label, _ in INTERVALS), 0)
    empty = dict.fromkeys((label for label, _ in INTERVALS), 0)
    handlers = {label: counter(counts, empty, label) for label, _ in INTERVALS}
    clocks: list[TestClock] = []
    aggregators: list[list[TimeBarAggregator]] = []
    for inst in instruments:
        clock = TestClock()
        clock.set_time(start_ns)
        clocks.append(clock)
        aggregators.append(
            [
                TimeBarAggregator(
                    inst,
                    BarType.from_str(f"{inst.id}-{spec}-LAST-INTERNAL"),
                    handlers[label],
                    clock,
                    build_with_no_updates=False,
                    skip_first_non_full_bar=not batch,
                )
                for label, spec in INTERVALS
            ]
        )
    feeds = [[a.handle_trade_tick for a in series] for series in aggregators]
    order = list(symbols)
    if batch:
        for series in aggregators:
            for aggregator, (label, _) in zip(series, INTERVALS, strict=True):
                aggregator.start_batch_update(handlers[label], start_ns)
        elapsed = drive_batch(ticks, order, aggregators, feeds)
    else:
        elapsed = drive_timers(ticks, order, clocks, aggregators, feeds)

    result = {
        "trades": n,
        "elapsed_s": elapsed,
        "trades_per_s": n / elapsed,
        "bars": counts,
        "empty_bars": empty,
    }
    print(json.dumps(result))


def drive_batch(
    ticks: list[TradeTick],
    order: list[int],
    aggregators: list[list[TimeBarAggregator]],
    feeds: list[list[Callable[[TradeTick], None]]],
) -> float:
    began = time.perf_counter()
    for tick, k in zip(ticks, order, strict=True):
        for feed in feeds[k]:
            feed(tick)
    for series in aggregators:
        for aggregator in series:
            aggregator.stop_batch_update()
    return time.perf_counter() - began


def drive_timers(
    ticks: list[TradeTick],
    order: list[int],
    clocks: list[TestClock],
    aggregators: list[list[TimeBarAggregator]],
    feeds: list[list[Callable[[TradeTick], None]]],
) -> float:
    began = time.perf_counter()
    for tick, k in zip(ticks, order, strict=True):
        for event in clocks[k].advance_time(tick.ts_init):
            event.handle()
        for feed in feeds[k]:
            feed(tick)
    for clock, series in zip(clocks, aggregators, strict=True):
        for aggregator in series:
            name = str(aggregator.bar_type)
            close = clock.next_time_ns(name)
            aggregator._build_bar(TimeEvent(name, UUID4(), close, close))
    return time.perf_counter() - began


if __name__ == "__main__":
    main()
