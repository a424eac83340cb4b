"""WebSocket subscriptions: topics `<interval>.<symbol>`, `*` allowed in either part.

A connection starts with no topic, which means every candle. `subscribe` adds topics (so the first
one narrows the feed to them), `unsubscribe` removes them; with none left the feed is every candle
again. `5m.*` = every symbol at 5m, `*.BTCUSDT` = every interval of BTCUSDT, `1m.BTC*` = symbols
starting with BTC. Intervals are written as in STREAMER_KLINE_INTERVALS (`60s` is the same as `1m`).
Pure code: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase

import msgspec

from common.errors import ConfigError
from common.intervals import Calendar, Interval

MAX_TOPICS = 1000
_SYMBOL = re.compile(r"^[A-Z0-9*][A-Z0-9*._-]{0,39}$")  # Bybit's symbols (BTC-26DEC25) or a pattern

SeriesKey = tuple[int | str, str]
"""(interval, symbol): interval in ms, or its label for calendar intervals (1w, 1M)."""


class SeriesFields(msgspec.Struct, gc=False):
    """The fields of a candle that say which series it belongs to."""

    symbol: str
    interval: int
    timestamp: int
    interval_label: str = ""
    closed: bool = True

    @property
    def key(self) -> SeriesKey:
        if self.interval_label in ("1w", "1M"):
            return (self.interval_label, self.symbol)
        return (self.interval, self.symbol)


series_decoder = msgspec.json.Decoder(SeriesFields)


@dataclass(frozen=True, slots=True)
class Topic:
    text: str
    interval: int | str | None
    symbol: str

    def matches(self, key: SeriesKey) -> bool:
        interval, symbol = key
        if self.interval is not None and self.interval != interval:
            return False
        if self.symbol in ("*", symbol):
            return True
        return "*" in self.symbol and fnmatchcase(symbol, self.symbol)


def parse_topic(text: object) -> Topic:
    """A topic from its text; ValueError says what is wrong and what is allowed."""
    if not isinstance(text, str):
        raise ValueError(f"topic {text!r} is not a string like '1m.BTCUSDT'")
    interval_text, dot, symbol = text.partition(".")
    if not dot or not _SYMBOL.match(symbol):
        raise ValueError(
            f"topic {text!r} is not '<interval>.<symbol>' (e.g. 1m.BTCUSDT, 5m.*, *.ETHUSDT)"
        )
    if interval_text == "*":
        return Topic(f"*.{symbol}", None, symbol)
    try:
        interval = Interval.parse(interval_text)
    except ConfigError as exc:
        raise ValueError(f"topic {text!r}: {exc}") from None
    key: int | str = interval.ms if interval.calendar is Calendar.FIXED else interval.label
    return Topic(f"{interval_text}.{symbol}", key, symbol)


class ClientFilter:
    """The topics of one connection."""

    __slots__ = ("key", "topics")

    def __init__(self) -> None:
        self.topics: dict[tuple[int | str | None, str], Topic] = {}
        self.key: frozenset[tuple[int | str | None, str]] | None = None

    def _changed(self) -> None:
        self.key = frozenset(self.topics) if self.topics else None

    def wants(self, key: SeriesKey) -> bool:
        return not self.topics or any(t.matches(key) for t in self.topics.values())

    def subscribe(self, args: object) -> list[Topic]:
        """Add topics (all or none); return the ones that are new."""
        topics = _parse_args(args)
        new = [t for t in topics if (t.interval, t.symbol) not in self.topics]
        if len(self.topics) + len(new) > MAX_TOPICS:
            raise ValueError(f"at most {MAX_TOPICS} topics per connection")
        for topic in new:
            self.topics[(topic.interval, topic.symbol)] = topic
        self._changed()
        return new

    def unsubscribe(self, args: object) -> list[Topic]:
        """Remove topics (all or none); each must be subscribed."""
        topics = _parse_args(args)
        missing = [t.text for t in topics if (t.interval, t.symbol) not in self.topics]
        if missing:
            raise ValueError(f"not subscribed: {', '.join(missing)}")
        for topic in topics:
            self.topics.pop((topic.interval, topic.symbol), None)
        self._changed()
        return topics


def _parse_args(args: object) -> list[Topic]:
    if not isinstance(args, list) or not args:
        raise ValueError("'args' must be a non-empty list of topics like '1m.BTCUSDT'")
    return [parse_topic(arg) for arg in args]
