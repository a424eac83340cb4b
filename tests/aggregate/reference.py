"""A deliberately simple candle builder, written from the rules, to check the fast core against.

It keeps every trade, recomputes every candle it needs from scratch with Decimal after each
trade, and emits a candle whenever it closes or (within the revision window) its value changes.
Slow on purpose: quadratic, no folding, no grids beyond the one the rules name.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass, field
from decimal import Decimal
from math import gcd

from common.intervals import Calendar, Interval

DAY_MS = 86_400_000

CandleKey = tuple[str, str, int]  # symbol, interval label, open time
CandleValue = tuple[object, ...]


@dataclass
class RefTrade:
    t: int
    arrival: int
    price: Decimal
    size: Decimal
    buy: bool


def _order(trade: RefTrade) -> tuple[int, int]:
    return trade.t, trade.arrival


def _time(trade: RefTrade) -> int:
    return trade.t


@dataclass
class RefSymbol:
    start: int
    trades: list[RefTrade] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    max_t: int = -1
    gaps: list[tuple[int, int]] = field(default_factory=list)
    next_open: dict[str, int] = field(default_factory=dict)  # first candle not yet closed
    last: dict[tuple[str, int], tuple[int, CandleValue]] = field(default_factory=dict)


class Reference:
    def __init__(
        self,
        intervals: tuple[Interval, ...],
        latency_ms: int,
        window_ms: int,
        bybit_open: bool = True,
        emit_empty: bool = True,
    ) -> None:
        self.intervals = intervals
        self.latency_ms = latency_ms
        self.window_ms = window_ms
        self.bybit_open = bybit_open
        self.emit_empty = emit_empty
        grid = 0
        for interval in intervals:
            grid = gcd(grid, interval.ms if interval.calendar is Calendar.FIXED else DAY_MS)
        self.grid_ms = grid  # a trade is late once the grid candle holding it has closed
        self.now = -1
        self.arrivals = 0
        self.symbols: dict[str, RefSymbol] = {}
        self.emitted: list[tuple[CandleKey, int, CandleValue]] = []

    def message(self, symbol: str, trades: list[tuple[int, Decimal, Decimal, bool, str]]) -> None:
        """One Bybit message; its candles settle once it is all in.

        A message whose trades are out of time order is taken as if its trades came one by one.
        """
        times = [trade[0] for trade in trades]
        one_by_one = times != sorted(times)
        before = self._before(symbol)
        for trade in trades:
            if one_by_one:
                before = self._before(symbol)
            self.trade(symbol, *trade, before=before)
            if one_by_one:
                self.settle(before[1])
        self.settle(before[1])

    def _before(self, symbol: str) -> tuple[bool, int, int]:
        return symbol in self.symbols, self.now, self.symbols.get(symbol, RefSymbol(0)).max_t

    def trade(
        self,
        symbol: str,
        t: int,
        price: Decimal,
        size: Decimal,
        buy: bool,
        tid: str,
        before: tuple[bool, int, int],
    ) -> None:
        """`before`: (symbol known, stream time, its latest trade) when the message began."""
        existed, now, max_t = before
        sym = self.symbols.get(symbol)
        if sym is None:
            sym = self.symbols[symbol] = RefSymbol(start=t)
            for interval in self.intervals:
                sym.next_open[interval.label] = interval.floor(t)
        else:
            if tid in sym.ids:
                return
            grid_open = t - t % self.grid_ms
            grid_end = grid_open + self.grid_ms
            if grid_open < sym.start - sym.start % self.grid_ms:
                return
            closed = existed and (grid_end + self.latency_ms <= now or max_t >= grid_end)
            if closed and self.now - t > self.window_ms:
                return
        sym.ids.add(tid)
        self.arrivals += 1
        insort(sym.trades, RefTrade(t, self.arrivals, price, size, buy), key=_order)
        sym.max_t = max(sym.max_t, t)
        self.now = max(self.now, t)

    def clock(self, time_ms: int) -> None:
        self.now = max(self.now, time_ms)
        self.settle()

    def gap(self, symbols: list[str], from_ms: int, to_ms: int) -> None:
        for name in symbols or list(self.symbols):
            if name in self.symbols:
                self.symbols[name].gaps.append((from_ms, to_ms))
        self.settle()

    # -------------------------------------------------------------------------

    def settle(self, revisions_at: int | None = None) -> None:
        """Close what is proven closed; re-emit what changed within the revision window,
        judged at `revisions_at` (a message's late trades are judged when it arrives)."""
        at = self.now if revisions_at is None else revisions_at
        for name, sym in self.symbols.items():
            proven = max(sym.max_t, self.now - self.latency_ms)
            for interval in self.intervals:
                self._revisit(name, sym, interval, at)
                label = interval.label
                while interval.next_open(sym.next_open[label]) <= proven:
                    self._consider(name, sym, interval, sym.next_open[label])
                    sym.next_open[label] = interval.next_open(sym.next_open[label])

    def _revisit(self, name: str, sym: RefSymbol, interval: Interval, at: int) -> None:
        """Closed candles still in the revision window: emit again if their value changed."""
        first = interval.floor(sym.start)
        open_ms = sym.next_open[interval.label]
        while open_ms > first:
            open_ms = interval.floor(open_ms - 1)
            if interval.next_open(open_ms) <= at - self.window_ms:
                break
            self._consider(name, sym, interval, open_ms)

    def _consider(self, name: str, sym: RefSymbol, interval: Interval, open_ms: int) -> None:
        if open_ms == interval.floor(sym.start):
            return  # the first candle after a cold start is partial
        value = self.candle(sym, interval, open_ms)
        if value[6] == 0 and not self.emit_empty:
            return
        key = (interval.label, open_ms)
        previous = sym.last.get(key)
        if previous is not None and previous[1] == value:
            return
        revision = 0 if previous is None else previous[0] + 1
        sym.last[key] = (revision, value)
        self.emitted.append(((name, interval.label, open_ms), revision, value))

    def candle(self, sym: RefSymbol, interval: Interval, open_ms: int) -> CandleValue:
        end_ms = interval.next_open(open_ms)
        ordered = sym.trades  # kept in (time, arrival) order
        first = bisect_left(ordered, open_ms, key=_time)
        inside = ordered[first : bisect_left(ordered, end_ms, key=_time)]
        prev = ordered[first - 1].price if first else None
        if inside:
            prices = [tr.price for tr in inside]
            if self.bybit_open and prev is not None:
                o, h, low = prev, max([*prices, prev]), min([*prices, prev])
            else:
                o, h, low = prices[0], max(prices), min(prices)
            c = prices[-1]
        else:
            o = h = low = c = prev
        volume = sum((tr.size for tr in inside), Decimal(0))
        turnover = sum((tr.size * tr.price for tr in inside), Decimal(0))
        buy = sum((tr.size for tr in inside if tr.buy), Decimal(0))
        gap = any(start < end_ms and stop >= open_ms for start, stop in sym.gaps)
        return (o, h, low, c, volume, turnover, len(inside), buy, gap)
