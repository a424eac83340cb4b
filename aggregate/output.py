"""Core candles to candle JSON (docs/formats.md "The candle"): exact decimals from scaled integers.

`CandleWriter.encode` is on the hot path (every candle written), so it fills a bytes template
instead of building a `common.wire.Candle`: the symbol/interval head is cached per series and
price texts per value (prices repeat a lot). The bytes equal `candle_encoder.encode(to_wire(c))`
exactly (the field order of `common.wire.Candle`); tests/aggregate/test_output.py holds them to it.
"""

from __future__ import annotations

import msgspec

from aggregate.state import CoreCandle
from common.decimals import PRODUCT_DIGITS, SCALE_DIGITS, format_scaled
from common.intervals import Interval
from common.wire import Candle, raw_number

_CACHE_MAX = 100_000
_ONE = 10**SCALE_DIGITS
_FRACTION = b"%%0%dd" % SCALE_DIGITS  # b"%013d"
_TEMPLATE = (
    b'%s%d,"open":%s,"high":%s,"low":%s,"close":%s,"volume":%s,"turnover":%s,'
    b'"trade_count":%d,"buy_volume":%s,"sell_volume":%s,"closed":%s,"revision":%d,'
    b'"source":"trades","category":%s,"gap":%s}'
)


def _scaled_bytes(value: int) -> bytes:
    """format_scaled(value) as ASCII bytes."""
    if value < 0:
        return b"-" + _scaled_bytes(-value)
    whole, frac = divmod(value, _ONE)
    if frac == 0:
        return b"%d" % whole
    return b"%d.%s" % (whole, (_FRACTION % frac).rstrip(b"0"))


class CandleWriter:
    """Formats core candles of one configuration (intervals, category) as candle JSON."""

    def __init__(self, intervals: tuple[Interval, ...], category: str) -> None:
        self._intervals = intervals
        self._category = category
        self._category_json = msgspec.json.encode(category)
        self._texts: dict[int, bytes] = {}  # prices repeat a lot
        self._heads: dict[tuple[str, int], bytes] = {}
        self._empty_tails: dict[tuple[int, bool, int, bool], bytes] = {}
        self._ready: dict[CoreCandle, bytes] = {}  # rendered ahead (`prepare`)

    def _text(self, value: int) -> bytes:
        text = self._texts.get(value)
        if text is None:
            if len(self._texts) > _CACHE_MAX:
                self._texts.clear()
            text = self._texts[value] = _scaled_bytes(value)
        return text

    def _head(self, symbol: str, index: int) -> bytes:
        key = (symbol, index)
        head = self._heads.get(key)
        if head is None:
            if len(self._heads) > _CACHE_MAX:
                self._heads.clear()
            interval = self._intervals[index]
            head = self._heads[key] = (
                b'{"symbol":%s,"interval":%d,"interval_label":%s,'
                % (
                    msgspec.json.encode(symbol),
                    interval.ms,
                    msgspec.json.encode(interval.label),
                )
                + b'"timestamp":'
            )
        return head

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

    def prepare(self, candles: list[CoreCandle]) -> None:
        """Render these candles now, for `encode` to hand out when one of them is asked for (the
        candles a waiter deadline will close, rendered while the shard waits for it:
        CandleCore.previews). Replaces what the previous call prepared."""
        self._ready = {c: self.encode(c) for c in candles}

    def encode(self, c: CoreCandle) -> bytes:
        if self._ready:
            ready = self._ready.get(c)
            if ready is not None:
                return ready
        if not c.volume and not c.trade_count and c.open == c.high == c.low == c.close:
            # An empty candle (every symbol has one per boundary): all but the series and the
            # time depends on the close and the flags only.
            tail = self._empty_tails.get((c.close, c.closed, c.revision, c.gap))
            if tail is None:
                tail = self._empty_tail(c)
            return (
                self._heads.get((c.symbol, c.interval)) or self._head(c.symbol, c.interval)
            ) + b"%d%s" % (c.open_ms, tail)
        text = self._texts.get
        if c.volume:  # sizes are positive: no volume, no turnover
            volume = _scaled_bytes(c.volume)
            buy = _scaled_bytes(c.buy_volume)
            sell = _scaled_bytes(c.volume - c.buy_volume)
            turnover = format_scaled(c.turnover, PRODUCT_DIGITS).encode()
        else:
            volume = buy = sell = turnover = b"0"
        return _TEMPLATE % (
            self._heads.get((c.symbol, c.interval)) or self._head(c.symbol, c.interval),
            c.open_ms,
            text(c.open) or self._text(c.open),
            text(c.high) or self._text(c.high),
            text(c.low) or self._text(c.low),
            text(c.close) or self._text(c.close),
            volume,
            turnover,
            c.trade_count,
            buy,
            sell,
            b"true" if c.closed else b"false",
            c.revision,
            self._category_json,
            b"true" if c.gap else b"false",
        )

    def _empty_tail(self, c: CoreCandle) -> bytes:
        if len(self._empty_tails) > _CACHE_MAX:
            self._empty_tails.clear()
        price = self._text(c.close)
        flags = (b"true" if c.closed else b"false", c.revision, self._category_json)
        tail = _TEMPLATE % (b"", 0, price, price, price, price, b"0", b"0", 0, b"0", b"0", *flags,
                            b"true" if c.gap else b"false")  # fmt: skip
        tail = self._empty_tails[(c.close, c.closed, c.revision, c.gap)] = tail[1:]  # no "0"
        return tail

    def end_ms(self, c: CoreCandle) -> int:
        return self._intervals[c.interval].next_open(c.open_ms)
