"""Bybit frame text, built by hand: the hot path encodes tens of thousands of trades a second.

Key order follows what Bybit sends per category (recorded 2026-08): linear/inverse trade
messages are `topic,type,ts,data` with trades `T,s,S,v,p,L,i,BT,RPI,seq`; spot messages are
`topic,ts,type,data` with trades `i,T,p,v,S,seq,s,BT,RPI` and no `L`.
"""

from __future__ import annotations

import msgspec

from common.wire import Category
from simulator.generator import SimTrade
from simulator.instruments import Instrument

_json = msgspec.json.Encoder()


class Encoded:
    """One trade message: its text, and per trade the ledger line without `sent_ms`."""

    __slots__ = ("ledger_heads", "symbol", "text", "topic", "trades")

    def __init__(
        self, topic: str, symbol: str, text: str, ledger_heads: list[str], trades: int
    ) -> None:
        self.topic = topic
        self.symbol = symbol
        self.text = text
        self.ledger_heads = ledger_heads
        self.trades = trades

    def ledger_text(self, sent_ms: int) -> str:
        tail = f"{sent_ms}}}\n"
        return tail.join(self.ledger_heads) + tail

    def missed_text(self) -> str:
        """Ledger lines of trades nobody was subscribed to: `{"missed": {..., "sent_ms":null}}`."""
        return "".join(f'{{"missed":{head}null}}}}\n' for head in self.ledger_heads)


def encode_trades(
    category: Category, inst: Instrument, trades: list[SimTrade], ts_ms: int
) -> Encoded:
    symbol = inst.symbol
    items: list[str] = []
    heads: list[str] = []
    spot = category is Category.SPOT
    for t in trades:
        p = inst.price_text(t.price)
        v = inst.size_text(t.size)
        side = "Buy" if t.buy else "Sell"
        rpi = "true" if t.rpi else "false"
        if spot:
            items.append(
                f'{{"i":"{t.trade_id}","T":{t.time_ms},"p":"{p}","v":"{v}","S":"{side}",'
                f'"seq":{t.seq},"s":"{symbol}","BT":false,"RPI":{rpi}}}'
            )
        else:
            items.append(
                f'{{"T":{t.time_ms},"s":"{symbol}","S":"{side}","v":"{v}","p":"{p}",'
                f'"L":"{t.tick}","i":"{t.trade_id}","BT":false,"RPI":{rpi},"seq":{t.seq}}}'
            )
        heads.append(
            f'{{"symbol":"{symbol}","T":{t.time_ms},"p":"{p}","v":"{v}","S":"{side}",'
            f'"i":"{t.trade_id}","seq":{t.seq},"sent_ms":'
        )
    topic = f"publicTrade.{symbol}"
    data = ",".join(items)
    if spot:
        text = f'{{"topic":"{topic}","ts":{ts_ms},"type":"snapshot","data":[{data}]}}'
    else:
        text = f'{{"topic":"{topic}","type":"snapshot","ts":{ts_ms},"data":[{data}]}}'
    return Encoded(topic, symbol, text, heads, len(trades))


def encode(obj: object) -> str:
    return _json.encode(obj).decode()
