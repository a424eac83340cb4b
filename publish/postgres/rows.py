"""Candle JSON -> rows of PostgreSQL's COPY text format, and stored rows -> candle JSON. No I/O.

The numbers travel as the aggregator wrote them: a candle's decimal fields are decoded as
`msgspec.Raw` (the JSON number's own digits) and written into the COPY text untouched, so the
`numeric` columns hold exactly those decimals, with no float or Decimal step on the way. The open
time goes in as `timestamptz` text (UTC, to the millisecond), formatted once per distinct time:
every series of a shard shares the same few open times.
"""

from __future__ import annotations

import logging
import time

import msgspec

from common.logs import RateLimitedLog
from common.wire import Candle, candle_encoder, raw_number

log = logging.getLogger(__name__)
limited = RateLimitedLog(log, 60.0)

SeriesKey = tuple[str, str, str, int]
"""(category, symbol, interval_label, open time ms): one row of the table."""


_decoder = msgspec.json.Decoder(Candle)
_COPY_SPECIALS = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_texts: dict[str, bytes] = {}  # symbols, labels, categories repeat: escape each once
_times: dict[int, bytes] = {}  # open times repeat across series: format each once
_TEXTS_MAX = 100_000


def _text(value: str) -> bytes:
    out = _texts.get(value)
    if out is None:
        if len(_texts) > _TEXTS_MAX:
            _texts.clear()
        out = _texts[value] = value.translate(_COPY_SPECIALS).encode()
    return out


def _time(open_ms: int) -> bytes:
    out = _times.get(open_ms)
    if out is None:
        if len(_times) > _TEXTS_MAX:
            _times.clear()
        seconds, ms = divmod(open_ms, 1000)
        day_time = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))
        out = _times[open_ms] = f"{day_time}.{ms:03d}+00".encode()
    return out


class Rows:
    """The latest revision of each row among the candles added, as COPY text lines."""

    __slots__ = ("_lines", "bad")

    def __init__(self) -> None:
        self._lines: dict[SeriesKey, tuple[int, bytes]] = {}
        self.bad = 0  # entries that are not closed candles (counted, logged, skipped)

    def __len__(self) -> int:
        return len(self._lines)

    def add(self, raw: bytes) -> None:
        """Keep this candle unless a higher revision of its row is already here: one statement
        may not update a row twice, and a lower revision must never replace a higher one."""
        try:
            c = _decoder.decode(raw)
        except msgspec.DecodeError as exc:
            self.bad += 1
            limited.warning("bad", "not a candle, skipped: %s: %.200r", exc, raw)
            return
        if not c.closed:
            return
        key = (c.category, c.symbol, c.interval_label, c.timestamp)
        held = self._lines.get(key)
        if held is not None and held[0] > c.revision:
            return
        self._lines[key] = (c.revision, _line(c))

    def extend(self, raws: list[bytes]) -> Rows:
        for raw in raws:
            self.add(raw)
        return self

    def merge(self, other: Rows) -> None:
        """Take in another batch's rows (the higher revision of a row wins)."""
        for key, held in other._lines.items():
            mine = self._lines.get(key)
            if mine is None or mine[0] <= held[0]:
                self._lines[key] = held
        self.bad += other.bad

    def copy_text(self) -> bytes:
        return b"".join(line for _, line in self._lines.values())


def copy_lines(raws: list[bytes]) -> tuple[bytes, list[bytes], int]:
    """The closed candles of `raws` split for the writer: the COPY lines of those at revision 0,
    in order, for a COPY straight into the table (whose key refuses a row already there, or
    twice: the whole batch then goes through `Rows`); the candles at a higher revision, which
    replace a row and so go through the upsert (few: a late trade's revision); and how many
    closed candles there are. No key and no dict per candle: a third less than `Rows`, which
    was the bulk of this consumer's CPU per candle (measured)."""
    decode, line = _decoder.decode, _line
    lines: list[bytes] = []
    revised: list[bytes] = []
    for raw in raws:
        try:
            c = decode(raw)
        except msgspec.DecodeError as exc:
            limited.warning("bad", "not a candle, skipped: %s: %.200r", exc, raw)
            continue
        if not c.closed:
            continue
        if c.revision:
            revised.append(raw)
        else:
            lines.append(line(c))
    return b"".join(lines), revised, len(lines) + len(revised)


def _line(c: Candle) -> bytes:
    """One row of the table, in its column order (`schema.COLUMNS`)."""
    return b"%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n" % (
        _text(c.category), _text(c.symbol), _text(c.interval_label), _time(c.timestamp), c.interval,
        c.open, c.high, c.low, c.close, c.volume, c.turnover, c.buy_volume, c.sell_volume,
        c.trade_count, c.revision, b"t" if c.gap else b"f", _text(c.source),
    )  # fmt: skip


def candle_json(
    category: str,
    symbol: str,
    interval_label: str,
    open_ms: int,
    interval_ms: int,
    numbers: tuple[str, str, str, str, str, str, str, str],
    trade_count: int,
    revision: int,
    gap: bool,
    source: str,
) -> bytes:
    """A stored row as the candle JSON the streams carry (docs/formats.md "The candle"; numbers:
    open, high, low, close, volume, turnover, buy and sell volume as PostgreSQL's exact text)."""
    open_, high, low, close, volume, turnover, buy, sell = numbers
    return candle_encoder.encode(
        Candle(
            symbol=symbol,
            interval=interval_ms,
            interval_label=interval_label,
            timestamp=open_ms,
            open=raw_number(open_),
            high=raw_number(high),
            low=raw_number(low),
            close=raw_number(close),
            volume=raw_number(volume),
            turnover=raw_number(turnover),
            trade_count=trade_count,
            buy_volume=raw_number(buy),
            sell_volume=raw_number(sell),
            closed=True,
            revision=revision,
            source=source,
            category=category,
            gap=gap,
        )
    )
