"""Every wire type that crosses a process boundary, with reusable encoders and decoders.

Trade stream entries (`<p>:{k}:trades`, field `data`) are JSON objects told apart by `type`:
`trades` (one Bybit message), `clock` (ingest is alive at this time), `gap` (trades of these
symbols may be missing between these times), `repair` (what ingest fetched back of a gap),
`symbols` (the symbols the shard serves now) and `seed` (a symbol's last price before a
boundary, from which its stream is complete).
Candle stream entries (`<p>:{k}:klines`, field `data`) are candle JSON objects. Bybit's own
wire names stay in `ingest/bybit/`.
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


class SymbolsEntry(msgspec.Struct, tag="symbols", tag_field="type", gc=False):
    """From here on the shard serves exactly `symbols` (ingest took the shard, or its symbol list
    changed): a series of any other symbol ends here (it moved to another shard or was dropped).
    `ts` is ingest's clock when it wrote it, for people; it does not move stream time."""

    symbols: list[str]
    time_ms: int = msgspec.field(default=0, name="ts")


class SeedEntry(msgspec.Struct, tag="seed", tag_field="type", gc=False):
    """`symbol`'s last price before `start` was `close` (the exchange's confirmed candle that
    ends at `start`), and the stream holds every trade of `symbol` from `start` on: its candles
    that open at `start` are full candles, not the skipped partial first candle of a cold start.
    `ingest replay` writes one from a capture's confirmed kline; an aggregator that already
    follows `symbol` ignores it (its own previous candle knows the close)."""

    symbol: str
    start_ms: int = msgspec.field(name="start")
    close: str


class RepairEntry(msgspec.Struct, tag="repair", tag_field="type", gc=False):
    """Ingest asked Bybit's `recent-trade` for the gap `from_ms`..`to_ms` of `symbols` and wrote
    (as ordinary trades entries, before this one) the trades the stream did not hold. For the
    symbols in `complete` the answer reached back past `from_ms`: every trade of the window is
    in the stream now. The others stay incomplete (the answer did not reach back far enough, or
    Bybit did not answer in time)."""

    symbols: list[str]
    from_ms: int = msgspec.field(name="from")
    to_ms: int = msgspec.field(name="to")
    complete: list[str] = msgspec.field(default_factory=list)


StreamEntry = TradesEntry | ClockEntry | GapEntry | SymbolsEntry | RepairEntry | SeedEntry

STREAM_FIELD = b"data"
"""The one field of every stream entry this project writes."""


def entry_id(raw: bytes | str) -> tuple[int, int]:
    """A stream entry id (`<ms>-<seq>`, as Redis replies it or as text) as a tuple that orders
    as Redis orders ids."""
    ms, _, seq = (raw.encode() if isinstance(raw, str) else raw).partition(b"-")
    return int(ms), int(seq or 0)


entry_encoder = msgspec.json.Encoder()
entry_decoder: msgspec.json.Decoder[StreamEntry] = msgspec.json.Decoder(StreamEntry)


class _CandleBase(msgspec.Struct, kw_only=True, gc=False):
    """The fields every candle JSON begins with (docs/formats.md "The candle"): its series, its
    open time and the prices and sizes Bybit's own kline gives too, numbers as their JSON text
    (`msgspec.Raw`). msgspec encodes a base's fields before the subclass's, so the candle types
    write these first; a subclass says `kw_only=True` too, or its fields would go first."""

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


class Candle(_CandleBase, kw_only=True):
    """The candle JSON of docs/formats.md "The candle", written with exact decimals.

    Decimal fields hold the number's JSON text (`msgspec.Raw`), so what goes out is exactly the
    digits computed, never a float.
    """

    trade_count: int
    buy_volume: msgspec.Raw
    sell_volume: msgspec.Raw
    closed: bool = True
    revision: int = 0
    source: str = "trades"
    category: str = "linear"
    gap: bool = False


class BackfilledCandle(_CandleBase, kw_only=True):
    """A candle of Bybit's REST kline in the history store (STREAMER_HISTORY_BACKFILL, see
    ingest/backfill.py): `Candle`'s fields in `Candle`'s order (the store's member layout and the
    kline rows rely on it), `source: "bybit"`, and the fields only trades give (`trade_count`,
    `buy_volume`, `sell_volume`) null: Bybit's kline does not say them."""

    trade_count: None = None
    buy_volume: None = None
    sell_volume: None = None
    closed: bool = True
    revision: int = 0
    source: str = "bybit"
    category: str = "linear"
    gap: bool = False


class CandleView(msgspec.Struct, kw_only=True, gc=False):
    """A candle read back (tests, verify, downstream Python readers), decimals as `Decimal`.
    `trade_count`, `buy_volume` and `sell_volume` are None only in a backfilled candle of the
    history store (`BackfilledCandle`), never in a candle stream."""

    symbol: str
    interval: int
    timestamp: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    turnover: Decimal
    trade_count: int | None
    buy_volume: Decimal | None = Decimal(0)
    sell_volume: Decimal | None = Decimal(0)
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
