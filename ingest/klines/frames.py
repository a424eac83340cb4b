"""Bybit kline wire types (WebSocket `kline.{code}.{symbol}` and REST `/v5/market/kline`).

Bybit's names stay here: everything leaves this module as a `common.wire.Candle` with
`source: "bybit"`, the decimals exactly as Bybit wrote them. Linear and inverse push the confirm
of candle N and the first snapshot of N+1 in one message (`data` holds two items); spot sends
them separately. Both shapes are the same struct.
"""

from __future__ import annotations

import re

import msgspec

from common.errors import BadMessageError
from common.intervals import Interval
from common.wire import Candle, Category, raw_number

# A JSON-safe plain decimal: what Bybit sends, and what may go into the candle JSON verbatim.
_DECIMAL = re.compile(r"^(0|[1-9][0-9]*)(\.[0-9]+)?$")
TOPIC_PREFIX = "kline."


class KlineItem(msgspec.Struct, forbid_unknown_fields=False, gc=False):
    start: int
    end: int
    interval: str
    open: str
    close: str
    high: str
    low: str
    volume: str
    turnover: str
    confirm: bool
    timestamp: int


class KlineFrame(msgspec.Struct, gc=False):
    topic: str
    data: list[KlineItem]
    ts: int
    type: str = "snapshot"


class KlineRestResult(msgspec.Struct, gc=False):
    symbol: str = ""
    category: str = ""
    # Each row: [startTime, open, high, low, close, volume, turnover], newest first.
    rows: list[tuple[str, str, str, str, str, str, str]] = msgspec.field(
        default_factory=list, name="list"
    )


class KlineRestResponse(msgspec.Struct, gc=False):
    ret_code: int = msgspec.field(name="retCode")
    ret_msg: str = msgspec.field(default="", name="retMsg")
    result: KlineRestResult | None = None
    time_ms: int = msgspec.field(default=0, name="time")


_frame_decoder = msgspec.json.Decoder(KlineFrame)
_rest_decoder = msgspec.json.Decoder(KlineRestResponse)


def topic(interval: Interval, symbol: str) -> str:
    """`kline.1.BTCUSDT`; the interval must be one of Bybit's (settings checked that)."""
    code = interval.bybit_code
    if code is None:
        raise ValueError(f"{interval} has no Bybit kline")
    return f"{TOPIC_PREFIX}{code}.{symbol}"


def parse_topic(text: str) -> tuple[Interval, str]:
    """`kline.1.BTCUSDT` -> (1m, "BTCUSDT")."""
    parts = text.split(".")
    if len(parts) != 3 or parts[0] != "kline":
        raise BadMessageError(f"not a kline topic: {text!r}")
    try:
        return Interval.from_bybit_code(parts[1]), parts[2]
    except Exception as exc:  # ConfigError from an unknown code
        raise BadMessageError(f"unknown kline interval in {text!r}") from exc


def decode_frame(raw: bytes | str) -> KlineFrame:
    """Parse one kline message strictly; anything else raises BadMessageError."""
    try:
        frame = _frame_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise BadMessageError(f"malformed kline frame: {exc}") from None
    if not frame.data:
        raise BadMessageError(f"kline frame with no data: {frame.topic}")
    return frame


def decode_rest(raw: bytes) -> KlineRestResponse:
    try:
        return _rest_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise BadMessageError(f"malformed kline REST answer: {exc}") from None


def _decimal(text: str, what: str) -> msgspec.Raw:
    if not _DECIMAL.match(text):
        raise BadMessageError(f"kline {what} is not a plain decimal: {text!r}")
    return raw_number(text)


def make_candle(
    symbol: str,
    interval: Interval,
    start_ms: int,
    values: tuple[str, str, str, str, str, str],
    *,
    category: Category,
    closed: bool,
    gap: bool = False,
) -> Candle:
    """A candle of the one format from Bybit's (open, high, low, close, volume, turnover)."""
    if interval.floor(start_ms) != start_ms:
        raise BadMessageError(f"{symbol} {interval} kline start {start_ms} is not a boundary")
    open_, high, low, close, volume, turnover = values
    zero = raw_number("0")
    return Candle(
        symbol=symbol,
        interval=interval.ms,
        interval_label=interval.label,
        timestamp=start_ms,
        open=_decimal(open_, "open"),
        high=_decimal(high, "high"),
        low=_decimal(low, "low"),
        close=_decimal(close, "close"),
        volume=_decimal(volume, "volume"),
        turnover=_decimal(turnover, "turnover"),
        # Bybit's klines carry no trade count nor taker split: 0 means "not known" here.
        trade_count=0,
        buy_volume=zero,
        sell_volume=zero,
        closed=closed,
        revision=0,
        source="bybit",
        category=category.value,
        gap=gap,
    )


def item_candle(symbol: str, interval: Interval, item: KlineItem, category: Category) -> Candle:
    if item.interval != interval.bybit_code:
        raise BadMessageError(f"kline item interval {item.interval!r} does not match {interval}")
    values = (item.open, item.high, item.low, item.close, item.volume, item.turnover)
    return make_candle(symbol, interval, item.start, values, category=category, closed=item.confirm)


def rest_rows(
    response: KlineRestResponse, interval: Interval, symbol: str, category: Category, now_ms: int
) -> list[Candle]:
    """The ended candles of a REST answer, oldest first (Bybit lists newest first, open one too).

    A candle has ended when its end is at or before `now_ms` (Bybit's `time` of the answer when
    it gave one); the still-open newest row is never taken.
    """
    if response.result is None:
        raise BadMessageError("kline REST answer without result")
    candles = []
    for row in response.result.rows:
        if not row[0].isdigit():
            raise BadMessageError(f"kline REST startTime is not a number: {row[0]!r}")
        start_ms = int(row[0])
        if interval.next_open(start_ms) > now_ms:
            continue
        candles.append(
            make_candle(symbol, interval, start_ms, row[1:], category=category, closed=True)
        )
    candles.sort(key=lambda c: c.timestamp)
    return candles
