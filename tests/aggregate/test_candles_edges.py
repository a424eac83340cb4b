"""The candle core at its edges (issue 14): lateness per interval, a tiny common grid, the
duplicate filter's memory. Expected values are worked out by hand from the rules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from aggregate.candles import CandleCore, CoreConfig
from aggregate.state import CoreCandle
from common.decimals import SCALE
from common.intervals import parse_intervals

HOUR0 = 1_786_312_800_000  # 2026-08-09 23:00 UTC
DAY0 = 1_786_320_000_000  # 2026-08-10 00:00 UTC, a Monday


def _feed(core: CandleCore, symbol: str, t: int, trade_id: str, price: int = 100) -> None:
    core.trades(symbol, [t], [price * SCALE], [SCALE], [True], [trade_id])


def _candles(core: CandleCore, label: str) -> list[CoreCandle]:
    index = [i.label for i in core.config.intervals].index(label)
    return [c for c in core.take() if c.interval == index]


def test_a_late_trade_joins_every_candle_still_open_whatever_else_is_configured() -> None:
    """1h alone, or with 1s: a trade 30 s late (revision window 10 s) joins the open 1h candle
    both times; from the closed 1s candle it is dropped (and counted)."""
    hours = []
    for text in ("1h", "1s,1h"):
        core = CandleCore(CoreConfig(parse_intervals(text), 80, 10_000))
        core.seed("BTCUSDT", HOUR0, 100 * SCALE)
        _feed(core, "BTCUSDT", HOUR0 + 1_000, "a", 101)
        _feed(core, "BTCUSDT", HOUR0 + 40_000, "b", 102)
        _feed(core, "BTCUSDT", HOUR0 + 10_000, "late", 99)  # 30 s late
        core.clock(HOUR0 + 3_600_000 + 100)
        hours.append([msgspec.structs.replace(c, interval=0) for c in _candles(core, "1h")])
        assert core.state.counters.dropped == (text == "1s,1h")
    alone, together = hours
    assert alone == together
    (hour,) = alone
    assert (hour.trade_count, hour.volume, hour.low, hour.close) == (
        3,
        3 * SCALE,
        99 * SCALE,
        102 * SCALE,
    )


def test_a_late_trade_revises_closed_candles_only_within_the_window() -> None:
    """1s,1m: 4.5 s late revises the closed 1s candle (revision 1, and the empty ones after it,
    whose open is its close) and joins the open 1m one."""
    core = CandleCore(CoreConfig(parse_intervals("1s,1m"), 80, 10_000))
    core.seed("BTCUSDT", HOUR0, 100 * SCALE)
    _feed(core, "BTCUSDT", HOUR0 + 1_000, "a")
    _feed(core, "BTCUSDT", HOUR0 + 7_000, "b")
    core.take()
    _feed(core, "BTCUSDT", HOUR0 + 2_500, "late", 103)
    revised = [(c.open_ms - HOUR0, c.revision, c.open, c.close) for c in core.take()]
    assert revised == [
        (2_000, 1, 100 * SCALE, 103 * SCALE),
        *((t, 1, 103 * SCALE, 103 * SCALE) for t in range(3_000, 7_000, 1_000)),
    ]
    core.clock(HOUR0 + 60_100)
    minute = _candles(core, "1m")[0]
    assert (minute.trade_count, minute.high) == (3, 103 * SCALE)


def _count_calls(core: CandleCore, name: str) -> list[int]:
    calls = [0]
    method: Callable[..., Any] = getattr(core, name)

    def counted(*args: Any) -> Any:
        calls[0] += 1
        return method(*args)

    setattr(core, name, counted)
    return calls


def test_a_tiny_common_grid_costs_per_candle_not_per_millisecond() -> None:
    """`333ms,1s` has a 1 ms common grid: closing must cost per candle that closes (and per
    trade), not per millisecond per symbol (60 s of stream would be 60,000 steps a symbol)."""
    core = CandleCore(CoreConfig(parse_intervals("333ms,1s"), 80, 10_000))
    closes = _count_calls(core, "_close")
    empties = _count_calls(core, "_close_empty")
    symbols = [f"S{i}" for i in range(5)]
    trades = 0
    for step in range(100):
        for n, symbol in enumerate(symbols):
            _feed(core, symbol, DAY0 + step * 600 + n, f"{symbol}-{step}")
            trades += 1
    core.clock(DAY0 + 60_000)
    candles = len(core.take())
    assert candles > 5 * 230  # every empty candle is there (about 180 + 59 a symbol)
    assert closes[0] + empties[0] <= 2 * (candles + trades), (closes, empties, candles)


def test_the_duplicate_filter_holds_seconds_of_ids_even_with_a_one_day_grid() -> None:
    """`1d,1w,1M` (common grid: one day): the filter keeps what arrived within the last one or
    two generations of max(revision window + waiter latency, 10 s) of stream time, not a day
    of ids; a quiet symbol's ids go too; a copy within the window still counts once."""
    core = CandleCore(CoreConfig(parse_intervals("1d,1w,1M"), 80, 10_000))
    _feed(core, "QUIET", DAY0 + 5, "q1")
    for i in range(120 * 50):  # 120 s of stream, 50 trades a second
        _feed(core, "BUSY", DAY0 + 1_000 + i * 20, f"b{i}")
    horizon_ms = core.ids_horizon_ms
    assert horizon_ms == 10_080
    assert core.remembered_ids() <= 2 * horizon_ms // 20 + 1
    assert core.remembered_ids("QUIET") == 0
    last = DAY0 + 1_000 + (120 * 50 - 1) * 20
    _feed(core, "BUSY", last - 9_000, f"b{120 * 50 - 450}")  # a copy from 9 s before
    assert core.state.counters.duplicates == 1
