"""A deliberately simple candle builder, written from the rules, to check the fast core against.

Each configured interval is on its own: its own list of the trades it took, its own candles, its
own lateness (issue 14: a trade goes into every candle of its time that is still open, revises
every closed one while stream time - T <= the revision window, and is dropped only from the
others). Boundaries come from `datetime` (weeks from Monday 00:00 UTC, calendar months), not from
`common.intervals`. Every candle is recomputed from scratch with Decimal after each message, and
emitted when it closes or (within the revision window) when its value changed. Slow on purpose:
quadratic, no folding, no grids.
"""

from __future__ import annotations

import re
from bisect import bisect_left, insort
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}

CandleKey = tuple[str, str, int]  # symbol, interval label, open time
CandleValue = tuple[object, ...]


def _moment(time_ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=time_ms)


def _ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def floor(label: str, time_ms: int) -> int:
    """Open time of the `label` candle that holds `time_ms`."""
    if label == "1w":
        day = _moment(time_ms).replace(hour=0, minute=0, second=0, microsecond=0)
        return _ms(day - timedelta(days=day.weekday()))  # Monday is weekday 0
    if label == "1M":
        return _ms(_moment(time_ms).replace(day=1, hour=0, minute=0, second=0, microsecond=0))
    return time_ms - time_ms % _length(label)


def end(label: str, open_ms: int) -> int:
    """Exclusive end of the `label` candle that opens at `open_ms`."""
    if label == "1w":
        return _ms(_moment(open_ms) + timedelta(days=7))
    if label == "1M":
        moment = _moment(open_ms)
        year, month = divmod(moment.year * 12 + moment.month, 12)  # month is 0-based here
        return _ms(datetime(year, month + 1, 1, tzinfo=UTC))
    return open_ms + _length(label)


def _length(label: str) -> int:
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d)", label)
    assert match is not None, label
    return int(match.group(1)) * UNIT_MS[match.group(2)]


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
class RefSeries:
    """One symbol's candles of one interval: the trades it took, what it emitted."""

    first_open: int  # its first candle (partial after a cold start: never emitted)
    next_open: int  # its first candle not closed yet
    trades: list[RefTrade] = field(default_factory=list)  # in (time, arrival) order
    last: dict[int, tuple[int, CandleValue]] = field(default_factory=dict)


@dataclass
class RefSymbol:
    series: dict[str, RefSeries]
    ids: set[str] = field(default_factory=set)
    max_t: int = -1
    gaps: list[tuple[int, int]] = field(default_factory=list)


class Reference:
    def __init__(
        self,
        labels: tuple[str, ...],
        latency_ms: int,
        window_ms: int,
        bybit_open: bool = True,
        emit_empty: bool = True,
    ) -> None:
        self.labels = labels
        self.latency_ms = latency_ms
        self.window_ms = window_ms
        self.bybit_open = bybit_open
        self.emit_empty = emit_empty
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
        known = self.symbols.get(symbol)
        return known is not None, self.now, -1 if known is None else known.max_t

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
            by_label = {label: RefSeries(floor(label, t), floor(label, t)) for label in self.labels}
            sym = self.symbols[symbol] = RefSymbol(by_label)
        if tid in sym.ids:
            return
        self.arrivals += 1
        taken = RefTrade(t, self.arrivals, price, size, buy)
        kept = False
        for label in self.labels:
            series = sym.series[label]
            open_ms = floor(label, t)
            if open_ms < series.first_open:
                continue  # before its first candle: not ours
            end_ms = end(label, open_ms)
            closed = existed and (end_ms + self.latency_ms <= now or max_t >= end_ms)
            if closed and self.now - t > self.window_ms:
                continue  # too late for this candle
            insort(series.trades, taken, key=_order)
            kept = True
        if kept:
            sym.ids.add(tid)
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
            for label in self.labels:
                series = sym.series[label]
                self._revisit(name, sym, label, series, at)
                while end(label, series.next_open) <= proven:
                    self._consider(name, sym, label, series, series.next_open)
                    series.next_open = end(label, series.next_open)

    def _revisit(self, name: str, sym: RefSymbol, label: str, series: RefSeries, at: int) -> None:
        """Closed candles still in the revision window: emit again if their value changed."""
        open_ms = series.next_open
        while open_ms > series.first_open:
            open_ms = floor(label, open_ms - 1)
            if end(label, open_ms) <= at - self.window_ms:
                break
            self._consider(name, sym, label, series, open_ms)

    def _consider(
        self, name: str, sym: RefSymbol, label: str, series: RefSeries, open_ms: int
    ) -> None:
        if open_ms == series.first_open:
            return  # the first candle after a cold start is partial
        value = self.candle(sym, label, series, open_ms)
        if value[6] == 0 and not self.emit_empty:
            return
        previous = series.last.get(open_ms)
        if previous is not None and previous[1] == value:
            return
        revision = 0 if previous is None else previous[0] + 1
        series.last[open_ms] = (revision, value)
        self.emitted.append(((name, label, open_ms), revision, value))

    def candle(self, sym: RefSymbol, label: str, series: RefSeries, open_ms: int) -> CandleValue:
        end_ms = end(label, open_ms)
        ordered = series.trades
        first = bisect_left(ordered, open_ms, key=_time)
        inside = ordered[first : bisect_left(ordered, end_ms, key=_time)]
        prev = ordered[first - 1].price if first else None
        o = h = low = c = prev  # no trades: flat at the previous close
        if inside:
            prices = [tr.price for tr in inside]
            if self.bybit_open and prev is not None:
                o, h, low = prev, max([*prices, prev]), min([*prices, prev])
            else:
                o, h, low = prices[0], max(prices), min(prices)
            c = prices[-1]
        volume = sum((tr.size for tr in inside), Decimal(0))
        turnover = sum((tr.size * tr.price for tr in inside), Decimal(0))
        buy = sum((tr.size for tr in inside if tr.buy), Decimal(0))
        gap = any(start < end_ms and stop >= open_ms for start, stop in sym.gaps)
        return (o, h, low, c, volume, turnover, len(inside), buy, gap)
