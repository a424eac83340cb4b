"""Bybit's kline rules, built from the simulator's own trades. Pure: no I/O.

Bybit's rules (docs/pipeline.md "Candle rules"), as the real capture shows them:
a candle opens at the previous candle's close and its high/low start from that open; a candle
with no trades is flat at the previous close with volume 0; volume = Σ size and turnover =
Σ size × price exactly (inverse: Σ size / price, see `turnover_units`).

Every symbol keeps its 1-minute candles (the last 1000 non-empty completed ones), because
every Bybit interval is a whole number of minutes aligned to minute boundaries: REST klines of
any interval are folded from them. Intervals that someone subscribed to ("activated") also keep
a running candle, updated per trade, so pushing a snapshot costs nothing.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from common.bybitws import KlineItem
from common.decimals import format_scaled
from common.intervals import Interval

BYBIT_CODES = ("1", "3", "5", "15", "30", "60", "120", "240", "360", "720", "D", "W", "M")
INTERVALS: dict[str, Interval] = {code: Interval.from_bybit_code(code) for code in BYBIT_CODES}
MINUTE = INTERVALS["1"]
HISTORY_MINUTES = 1000  # REST klines reach back this many traded minutes (~0.35 KB each)
INVERSE_TURNOVER_DIGITS = 12
MAX_CONFIRMS_PER_ROLL = 3


@dataclass(slots=True)
class Candle:
    start_ms: int
    end_ms: int  # exclusive: the next candle's start
    open: int
    high: int
    low: int
    close: int
    volume: int = 0
    turnover: int = 0
    trades: int = 0

    @classmethod
    def flat(cls, start_ms: int, end_ms: int, price: int) -> Candle:
        return cls(start_ms, end_ms, price, price, price, price)

    def add(self, price: int, size: int, turnover: int) -> None:
        if price > self.high:
            self.high = price
        elif price < self.low:
            self.low = price
        self.close = price
        self.volume += size
        self.turnover += turnover
        self.trades += 1

    def fold(self, other: Candle) -> None:
        """Add a later, non-empty candle of the same bucket (its open equals our close)."""
        self.high = max(self.high, other.high)
        self.low = min(self.low, other.low)
        self.close = other.close
        self.volume += other.volume
        self.turnover += other.turnover
        self.trades += other.trades


@dataclass(frozen=True, slots=True)
class Digits:
    price: int
    size: int
    turnover: int
    inverse: bool

    def turnover_units(self, price: int, size: int) -> int:
        """Linear/spot: size × price, exact. Inverse: size / price in the base coin, truncated
        to 12 decimals per trade (Bybit's inverse turnover is not an exact decimal)."""
        if not self.inverse:
            return price * size
        shift = self.price + INVERSE_TURNOVER_DIGITS - self.size
        if shift >= 0:
            return int(size * 10**shift // price)
        return int(size // (price * 10 ** (-shift)))

    def as_bybit(self, candle: Candle, code: str, confirm: bool, ts_ms: int) -> KlineItem:
        """A `kline` WebSocket item."""
        return KlineItem(
            start=candle.start_ms,
            end=candle.end_ms - 1,
            interval=code,
            open=format_scaled(candle.open, self.price),
            close=format_scaled(candle.close, self.price),
            high=format_scaled(candle.high, self.price),
            low=format_scaled(candle.low, self.price),
            volume=format_scaled(candle.volume, self.size),
            turnover=format_scaled(candle.turnover, self.turnover),
            confirm=confirm,
            timestamp=ts_ms,
        )

    def as_row(self, candle: Candle) -> list[str]:
        """A REST kline row: [startTime, open, high, low, close, volume, turnover]."""
        return [
            str(candle.start_ms),
            format_scaled(candle.open, self.price),
            format_scaled(candle.high, self.price),
            format_scaled(candle.low, self.price),
            format_scaled(candle.close, self.price),
            format_scaled(candle.volume, self.size),
            format_scaled(candle.turnover, self.turnover),
        ]


@dataclass(slots=True)
class SymbolKlines:
    """All candles of one symbol. `origin_ms` is where its history starts (a minute boundary);
    `base_close` is the close before it (the first candle's open)."""

    digits: Digits
    origin_ms: int
    base_close: int
    minute: Candle
    history: deque[Candle] = field(default_factory=lambda: deque(maxlen=HISTORY_MINUTES))
    series: dict[str, Candle] = field(default_factory=dict)
    confirmed: list[tuple[str, Candle]] = field(default_factory=list)

    @classmethod
    def start(cls, digits: Digits, now_ms: int, price: int) -> SymbolKlines:
        origin = MINUTE.floor(now_ms)
        return cls(digits, origin, price, Candle.flat(origin, origin + MINUTE.ms, price))

    @classmethod
    def seeded(cls, digits: Digits, candle: Candle) -> SymbolKlines:
        """History that starts with a candle in progress (replay: the capture's first kline)."""
        return cls(digits, candle.start_ms, candle.open, candle)

    def add_trade(self, time_ms: int, price: int, size: int) -> None:
        turnover = self.digits.turnover_units(price, size)
        minute = self.minute
        if time_ms >= minute.end_ms:
            minute = self._roll_minute(time_ms)
        minute.add(price, size, turnover)
        for code, open_candle in self.series.items():
            candle = open_candle
            if time_ms >= candle.end_ms:
                candle = self._roll(code, candle, time_ms)
            candle.add(price, size, turnover)

    def advance(self, now_ms: int) -> None:
        """Close every activated candle whose end has passed (confirms go to `confirmed`)."""
        if now_ms >= self.minute.end_ms:
            self._roll_minute(now_ms)
        for code, candle in self.series.items():
            if now_ms >= candle.end_ms:
                self._roll(code, candle, now_ms)

    def take_confirmed(self) -> list[tuple[str, Candle]]:
        out, self.confirmed = self.confirmed, []
        return out

    def _roll_minute(self, time_ms: int) -> Candle:
        old = self.minute
        if old.trades:
            if len(self.history) == self.history.maxlen:
                dropped = self.history[0]
                self.origin_ms, self.base_close = dropped.end_ms, dropped.close
            self.history.append(old)
        start = MINUTE.floor(time_ms)
        self.minute = Candle.flat(start, start + MINUTE.ms, old.close)
        return self.minute

    def _roll(self, code: str, candle: Candle, time_ms: int) -> Candle:
        interval = INTERVALS[code]
        confirms = [candle]
        start = interval.next_open(candle.start_ms)
        while True:
            end = interval.next_open(start)
            if time_ms < end:
                break
            confirms.append(Candle.flat(start, end, candle.close))
            start = end
        self.confirmed.extend((code, c) for c in confirms[-MAX_CONFIRMS_PER_ROLL:])
        fresh = Candle.flat(start, interval.next_open(start), candle.close)
        self.series[code] = fresh
        return fresh

    def current(self, code: str, now_ms: int) -> Candle:
        """The open candle of `code` (activating it: built from the minutes, then per trade)."""
        candle = self.series.get(code)
        if candle is None:
            self.advance(now_ms)
            candle = self.buckets(code, now_ms)[-1]
            self.series[code] = candle
        return candle

    def buckets(self, code: str, now_ms: int) -> list[Candle]:
        """Every candle of `code` from the start of history to the open one, oldest first."""
        interval = INTERVALS[code]
        minutes = [*self.history, self.minute]
        out: list[Candle] = []
        start = interval.floor(self.origin_ms)
        close = self.base_close
        index = 0
        last_start = interval.floor(max(now_ms, self.origin_ms))
        while start <= last_start:
            end = interval.next_open(start)
            candle = Candle.flat(start, end, close)
            while index < len(minutes) and minutes[index].start_ms < end:
                if minutes[index].trades:
                    candle.fold(minutes[index])
                index += 1
            out.append(candle)
            close = candle.close
            start = end
        return out
