"""Every wire type that crosses a process boundary, with reusable encoders and decoders.

Trade stream entries (`<p>:{k}:trades`, field `data`) are one of three JSON objects told apart
by `type`: `trades` (one Bybit message), `clock` (ingest is alive at this time) and `gap` (trades
of these symbols may be missing between these times). Candle stream entries (`<p>:{k}:klines`,
field `data`) are candle JSON objects. Bybit's own wire names stay in `ingest/bybit/`.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum

import msgspec


class Side(StrEnum):
    """The taker side of a trade."""

    BUY = "Buy"
    SELL = "Sell"


class Category(StrEnum):
    LINEAR = "linear"
    SPOT = "spot"
    INVERSE = "inverse"


class Trade(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One trade, as the array `[time_ms, price, size, side, trade_id, seq]` in the stream.

    Price and size keep the exchange's decimal text, so nothing is lost before the candle math.
    """

    time_ms: int
    price: str
    size: str
    side: Side
    trade_id: str
    seq: int = 0


class TradesEntry(msgspec.Struct, tag="trades", tag_field="type", gc=False):
    """The trades of one Bybit message, in the order Bybit sent them (ascending time)."""

    symbol: str
    trades: list[Trade]
    exchange_ms: int = msgspec.field(default=0, name="ts")
    received_ms: int = msgspec.field(default=0, name="recv")


class ClockEntry(msgspec.Struct, tag="clock", tag_field="type", gc=False):
    """Ingest was alive and had written everything it received up to `time_ms` (its own clock)."""

    time_ms: int = msgspec.field(name="ts")


class GapEntry(msgspec.Struct, tag="gap", tag_field="type", gc=False):
    """Trades of `symbols` between `from_ms` and `to_ms` may be missing (connection or buffer)."""

    symbols: list[str]
    from_ms: int = msgspec.field(name="from")
    to_ms: int = msgspec.field(name="to")
    reason: str = ""


StreamEntry = TradesEntry | ClockEntry | GapEntry

STREAM_FIELD = b"data"
"""The one field of every stream entry this project writes."""

entry_encoder = msgspec.json.Encoder()
entry_decoder: msgspec.json.Decoder[StreamEntry] = msgspec.json.Decoder(StreamEntry)


class Candle(msgspec.Struct, kw_only=True, gc=False):
    """The candle JSON of DESIGN §5, written with exact decimals.

    Decimal fields hold the number's JSON text (`msgspec.Raw`), so what goes out is exactly the
    digits computed, never a float.
    """

    symbol: str
    interval: int
    interval_label: str
    timestamp: int
    open: msgspec.Raw
    high: msgspec.Raw
    low: msgspec.Raw
    close: msgspec.Raw
    volume: msgspec.Raw
    turnover: msgspec.Raw
    trade_count: int
    buy_volume: msgspec.Raw
    sell_volume: msgspec.Raw
    closed: bool = True
    revision: int = 0
    source: str = "trades"
    category: str = "linear"
    gap: bool = False


class CandleView(msgspec.Struct, kw_only=True, gc=False):
    """A candle read back (tests, verify, downstream Python readers), decimals as `Decimal`."""

    symbol: str
    interval: int
    timestamp: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    turnover: Decimal
    trade_count: int
    buy_volume: Decimal = Decimal(0)
    sell_volume: Decimal = Decimal(0)
    interval_label: str = ""
    closed: bool = True
    revision: int = 0
    source: str = "trades"
    category: str = "linear"
    gap: bool = False


candle_encoder = msgspec.json.Encoder()
candle_view_decoder: msgspec.json.Decoder[CandleView] = msgspec.json.Decoder(CandleView)


def raw_number(text: str) -> msgspec.Raw:
    """A JSON number from its exact decimal text."""
    return msgspec.Raw(text.encode())
