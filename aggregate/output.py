"""Core candles to candle JSON (DESIGN §5): exact decimals from scaled integers."""

from __future__ import annotations

import msgspec

from aggregate.state import CoreCandle
from common.decimals import PRODUCT_DIGITS, format_scaled
from common.intervals import Interval
from common.wire import Candle, candle_encoder, raw_number

_CACHE_MAX = 100_000


class CandleWriter:
    """Formats core candles of one configuration (intervals, category) as candle JSON."""

    def __init__(self, intervals: tuple[Interval, ...], category: str) -> None:
        self._intervals = intervals
        self._category = category
        self._texts: dict[int, msgspec.Raw] = {}  # prices and sizes repeat a lot

    def _text(self, value: int) -> msgspec.Raw:
        text = self._texts.get(value)
        if text is None:
            if len(self._texts) > _CACHE_MAX:
                self._texts.clear()
            text = self._texts[value] = raw_number(format_scaled(value))
        return text

    def to_wire(self, c: CoreCandle) -> Candle:
        interval = self._intervals[c.interval]
        return Candle(
            symbol=c.symbol,
            interval=interval.ms,
            interval_label=interval.label,
            timestamp=c.open_ms,
            open=self._text(c.open),
            high=self._text(c.high),
            low=self._text(c.low),
            close=self._text(c.close),
            volume=self._text(c.volume),
            turnover=raw_number(format_scaled(c.turnover, PRODUCT_DIGITS)),
            trade_count=c.trade_count,
            buy_volume=self._text(c.buy_volume),
            sell_volume=self._text(c.volume - c.buy_volume),
            closed=c.closed,
            revision=c.revision,
            source="trades",
            category=self._category,
            gap=c.gap,
        )

    def encode(self, c: CoreCandle) -> bytes:
        return candle_encoder.encode(self.to_wire(c))

    def end_ms(self, c: CoreCandle) -> int:
        return self._intervals[c.interval].next_open(c.open_ms)
