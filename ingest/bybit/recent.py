"""`GET /v5/market/recent-trade`: the wire shape, and its trades as the stream writes them.

Bybit's REST names (`execId`, `time` as a string, `seq` as a string, newest first) are mapped
to the same `Trade` a `publicTrade` push gives (ingest.bybit.messages), field for field: the
price and size text as Bybit wrote it, the taker side, the trade id, `seq` where present (0
where not). A test holds the two mappings equal on the same trades from the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from common.errors import BadMessageError
from common.wire import Category, Side, Trade

SPOT_LIMIT = 60
LIMIT = 1000
"""The most trades one answer holds: spot 60, every other category 1000 (Bybit's
`GET /v5/market/recent-trade`, its `limit`)."""

RATE_LIMITED = frozenset({10006, 10018})
"""retCodes that mean "too many requests": wait before asking anything again."""
REFUSED = frozenset({10001})
"""retCodes that asking again will not change (e.g. `params error: symbol invalid`)."""


def limit_of(category: Category) -> int:
    return SPOT_LIMIT if category is Category.SPOT else LIMIT


class WireRecentTrade(msgspec.Struct, gc=False):
    exec_id: str = msgspec.field(name="execId")
    price: str
    size: str
    side: Side
    time: str
    symbol: str = ""
    seq: str | int | None = None
    block: bool | None = msgspec.field(default=None, name="isBlockTrade")
    rpi: bool | None = msgspec.field(default=None, name="isRPITrade")


class RecentResult(msgspec.Struct, gc=False):
    trades: list[WireRecentTrade] = msgspec.field(default_factory=list, name="list")


class RecentResponse(msgspec.Struct, gc=False):
    ret_code: int = msgspec.field(name="retCode")
    ret_msg: str = msgspec.field(default="", name="retMsg")
    result: RecentResult | None = None
    time: int = 0


_decoder = msgspec.json.Decoder(RecentResponse)


@dataclass(frozen=True, slots=True)
class Recent:
    """One answer: its trades oldest first, Bybit's time when it answered, and how many trades
    were asked for (fewer in the answer: Bybit holds no older trade of the symbol)."""

    trades: list[Trade]
    exchange_ms: int
    limit: int

    def reaches_back(self, from_ms: int) -> bool:
        """Whether every trade since `from_ms` is in the answer."""
        trades = self.trades
        return len(trades) < self.limit or trades[0].time_ms < from_ms


class RefusedError(BadMessageError):
    """Bybit refused the request itself (retCode); `code` says whether to wait or give up."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"retCode {code} {message!r}")
        self.code = code

    @property
    def rate_limited(self) -> bool:
        return self.code in RATE_LIMITED

    @property
    def final(self) -> bool:
        return self.code in REFUSED


def _int(text: str | int | None, what: str) -> int:
    if text is None or text == "":
        return 0
    if isinstance(text, int):
        return text
    if not text.isdigit():
        raise BadMessageError(f"recent-trade {what} {text!r} is not an integer")
    return int(text)


def to_trade(wire: WireRecentTrade) -> Trade:
    if not wire.time.isdigit():
        raise BadMessageError(f"recent-trade time {wire.time!r} is not ms")
    seq = _int(wire.seq, "seq")
    return Trade(int(wire.time), wire.price, wire.size, wire.side, wire.exec_id, seq)


def parse_recent(body: bytes, symbol: str, limit: int) -> Recent:
    """The answer for `symbol` to a request for `limit` trades, oldest first (Bybit sends
    newest first and does not promise it: sorted by time, then seq, ties in Bybit's order
    reversed). RefusedError for a retCode other than 0; BadMessageError for anything that is
    not this answer."""
    try:
        response = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise BadMessageError(f"recent-trade answer is not Bybit's shape: {exc}") from None
    if response.ret_code != 0:
        raise RefusedError(response.ret_code, response.ret_msg)
    if response.result is None:
        raise BadMessageError("recent-trade answer without a result")
    wires = response.result.trades
    if any(w.symbol and w.symbol != symbol for w in wires):
        raise BadMessageError(f"recent-trade for {symbol} holds trades of another symbol")
    trades = [to_trade(w) for w in reversed(wires)]
    trades.sort(key=lambda t: (t.time_ms, t.seq))  # stable: equal keys keep Bybit's order
    return Recent(trades, response.time, limit)
