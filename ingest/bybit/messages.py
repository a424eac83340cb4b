"""Bybit V5 public WebSocket frames: typed wire structs and one decoder for every frame.

Bybit's short field names (`T`, `p`, `v`, `S`, `i`) are mapped here and never leave `ingest/`.
Only the fields a trade needs are required; everything else is optional, because recorded frames
omit `BT`/`RPI`/`L`/`seq` on some categories and dates (the real captures: spot has no `L`).
"""

from __future__ import annotations

import msgspec

from common.errors import BadMessageError
from common.wire import Side, Trade


class WireTrade(msgspec.Struct, gc=False):
    time_ms: int = msgspec.field(name="T")
    symbol: str = msgspec.field(name="s")
    side: Side = msgspec.field(name="S")
    size: str = msgspec.field(name="v")
    price: str = msgspec.field(name="p")
    trade_id: str = msgspec.field(name="i")
    seq: int | str | None = None
    tick: str | None = msgspec.field(default=None, name="L")
    block: bool | None = msgspec.field(default=None, name="BT")
    rpi: bool | None = msgspec.field(default=None, name="RPI")


class Frame(msgspec.Struct, gc=False):
    """Any frame of the public stream: a topic push, or an op reply (ack, pong)."""

    topic: str | None = None
    type: str | None = None
    ts: int | None = None
    data: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)  # shape depends on topic
    op: str | None = None
    success: bool | None = None
    ret_msg: str | None = None
    req_id: str | None = None
    conn_id: str | None = None


_decoder = msgspec.json.Decoder(Frame)
_trades_decoder = msgspec.json.Decoder(list[WireTrade])
_request_encoder = msgspec.json.Encoder()

TRADE_TOPIC = "publicTrade."


class TradeMessage(msgspec.Struct, gc=False):
    """One `publicTrade` push: its symbol, Bybit's build time and the trades (Bybit's order)."""

    symbol: str
    exchange_ms: int
    trades: list[Trade]


class OpReply(msgspec.Struct, gc=False):
    """A reply to one of our ops: subscribe/unsubscribe ack or pong."""

    op: str
    success: bool
    ret_msg: str
    req_id: str

    @property
    def is_pong(self) -> bool:
        return self.ret_msg == "pong" or self.op in ("ping", "pong")


def _seq(value: int | str | None) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    if value.isdigit():
        return int(value)
    raise BadMessageError(f"seq {value!r} is not an integer")


def parse_frame(raw: bytes | str) -> TradeMessage | OpReply | None:
    """Decode one frame; None for pushes of other topics. Raise BadMessageError if malformed."""
    try:
        frame = _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise BadMessageError(f"undecodable frame: {exc}") from None
    if frame.topic is not None:
        if not frame.topic.startswith(TRADE_TOPIC):
            return None
        if not len(frame.data):
            raise BadMessageError(f"{frame.topic} push without data")
        try:
            wire = _trades_decoder.decode(frame.data)
        except msgspec.DecodeError as exc:
            raise BadMessageError(f"{frame.topic}: {exc}") from None
        symbol = frame.topic[len(TRADE_TOPIC) :]
        trades = [
            Trade(t.time_ms, t.price, t.size, t.side, t.trade_id, t.seq)
            if type(t.seq) is int
            else Trade(t.time_ms, t.price, t.size, t.side, t.trade_id, _seq(t.seq))
            for t in wire
        ]
        return TradeMessage(symbol, frame.ts or 0, trades)
    if frame.op is not None:
        return OpReply(
            frame.op,
            True if frame.success is None else frame.success,
            frame.ret_msg or "",
            frame.req_id or "",
        )
    raise BadMessageError("frame with neither topic nor op")


def trade_topic(symbol: str) -> str:
    return TRADE_TOPIC + symbol


def symbol_of_topic(topic: str) -> str:
    """`publicTrade.BTCUSDT` and `kline.1.BTCUSDT` (klines mode) -> `BTCUSDT`."""
    return topic.rsplit(".", 1)[-1]


def request(op: str, args: list[str], req_id: str) -> bytes:
    """A client op frame (`subscribe`, `unsubscribe`, `ping`)."""
    if op == "ping":
        return _request_encoder.encode({"op": op, "req_id": req_id})
    return _request_encoder.encode({"op": op, "args": args, "req_id": req_id})
