"""The Bybit-compatible feed's pure parts: `kline.<code>.<symbol>` topics, and Bybit kline items
built from our candle JSON. No I/O.

`<code>` is one of Bybit's codes (`1 3 5 15 30 60 120 240 360 720 D W M`) or any interval label
(`1s`, `7m`, `1h`), and names a series only when that interval is configured: `kline.60.X` and
`kline.1h.X` are two topics of the same series, each pushed under its own name with its own code
in `interval`. Symbols are Bybit's (upper case, no wildcards); any well-formed symbol is accepted,
since a symbol with no candle yet may still get one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import msgspec

from common.bybitws import KlineItem
from common.errors import ConfigError
from common.intervals import Calendar, Interval
from common.settings import SYMBOL_TEXT
from publish.consumers.topics import SeriesKey

_SYMBOL = re.compile(f"^{SYMBOL_TEXT}$")  # the symbols the settings accept (e.g. BTC-26DEC25)


class KlineFields(msgspec.Struct, gc=False):
    """The fields of a candle a Bybit kline item needs; numbers kept as their exact JSON text."""

    timestamp: int
    open: msgspec.Raw
    high: msgspec.Raw
    low: msgspec.Raw
    close: msgspec.Raw
    volume: msgspec.Raw
    turnover: msgspec.Raw
    closed: bool = True


kline_fields_decoder = msgspec.json.Decoder(KlineFields)


def interval_key(interval: Interval) -> int | str:
    """The interval part of a series key, as `topics.SeriesFields.key` writes it."""
    return interval.ms if interval.calendar is Calendar.FIXED else interval.label


@dataclass(frozen=True, slots=True)
class BybitTopic:
    text: str
    code: str
    interval: Interval
    key: SeriesKey

    def item(self, fields: KlineFields, ts_ms: int) -> KlineItem:
        start = fields.timestamp
        return KlineItem(
            start=start,
            end=self.interval.next_open(start) - 1,
            interval=self.code,
            open=_text(fields.open),
            close=_text(fields.close),
            high=_text(fields.high),
            low=_text(fields.low),
            volume=_text(fields.volume),
            turnover=_text(fields.turnover),
            confirm=fields.closed,
            timestamp=ts_ms,
        )


def _text(raw: msgspec.Raw) -> str:
    """A JSON number's text as Bybit's decimal string (our numbers never use exponents)."""
    return bytes(raw).decode()


class TopicParser:
    """Topics of the configured intervals; anything else is a topic Bybit would not know."""

    def __init__(self, intervals: tuple[Interval, ...]) -> None:
        self._configured = {interval_key(i): i for i in intervals}

    def parse(self, text: str) -> BybitTopic | None:
        kind, _, rest = text.partition(".")
        code, _, symbol = rest.partition(".")
        if kind != "kline" or not _SYMBOL.match(symbol) or code != code.strip():
            return None
        try:
            wanted = Interval.from_bybit_code(code)
        except ConfigError:
            try:
                wanted = Interval.parse(code)
            except ConfigError:
                return None
        interval = self._configured.get(interval_key(wanted))
        if interval is None:
            return None
        return BybitTopic(text, code, interval, (interval_key(interval), symbol))
