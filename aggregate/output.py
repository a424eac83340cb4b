"""Core candles to candle JSON (DESIGN §5): exact decimals from scaled integers."""

from __future__ import annotations

from aggregate.state import CoreCandle
from common.decimals import PRODUCT_DIGITS, format_scaled
from common.intervals import Interval
from common.wire import Candle, candle_encoder, raw_number


class CandleWriter:
    """Formats core candles of one configuration (intervals, category) as candle JSON."""

    def __init__(self, intervals: tuple[Interval, ...], category: str) -> None:
        self._intervals = intervals
        self._category = category

    def to_wire(self, c: CoreCandle) -> Candle:
        interval = self._intervals[c.interval]
        return Candle(
            symbol=c.symbol,
            interval=interval.ms,
            interval_label=interval.label,
            timestamp=c.open_ms,
            open=raw_number(format_scaled(c.open)),
            high=raw_number(format_scaled(c.high)),
            low=raw_number(format_scaled(c.low)),
            close=raw_number(format_scaled(c.close)),
            volume=raw_number(format_scaled(c.volume)),
            turnover=raw_number(format_scaled(c.turnover, PRODUCT_DIGITS)),
            trade_count=c.trade_count,
            buy_volume=raw_number(format_scaled(c.buy_volume)),
            sell_volume=raw_number(format_scaled(c.volume - c.buy_volume)),
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
