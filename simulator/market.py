"""The exchange's state: instruments, candles, recent trades, and the messages a step produces.

No sockets here: `step(now_ms, kline_topics)` turns a source's trades into encoded trade
messages and kline messages, in the order they are to be sent.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from common.bybitws import kline_frame
from common.wire import Category
from simulator.frames import Encoded, encode_trades
from simulator.generator import SimTrade
from simulator.instruments import Instrument
from simulator.klines import (
    INTERVALS,
    INVERSE_TURNOVER_DIGITS,
    MINUTE,
    Candle,
    Digits,
    SymbolKlines,
)
from simulator.sources import ReplaySource, Source

RECENT_TRADES = 1000  # what Bybit's recent-trade returns at most (spot: 60)
RECENT_TRADES_TOTAL = 500_000  # memory bound: with over 500 symbols each keeps fewer


@dataclass
class KlineMessage:
    topic: str
    symbol: str
    code: str
    text: str
    confirms: list[Candle]


def _digits(category: Category, inst: Instrument) -> Digits:
    inverse = category is Category.INVERSE
    turnover = INVERSE_TURNOVER_DIGITS if inverse else inst.price_digits + inst.size_digits
    return Digits(inst.price_digits, inst.size_digits, turnover, inverse)


class Market:
    def __init__(
        self,
        category: Category,
        instruments: list[Instrument],
        source: Source,
        start_ms: int,
        kline_push_ms: int = 1000,
        confirm_delay_ms: int = 100,
    ) -> None:
        self.category = category
        self.instruments = instruments
        self.index = {inst.symbol: i for i, inst in enumerate(instruments)}
        self.source = source
        self.kline_push_ms = kline_push_ms
        self.confirm_delay_ms = confirm_delay_ms
        self.now_ms = start_ms
        seeds = source.seeds if isinstance(source, ReplaySource) else {}
        self.klines: list[SymbolKlines] = []
        for inst in instruments:
            digits = _digits(category, inst)
            seed = seeds.get(inst.symbol)
            if seed is not None:
                self.klines.append(SymbolKlines.seeded(digits, seed[0]))
            else:
                self.klines.append(SymbolKlines.start(digits, start_ms, inst.seed_price_units))
        keep = max(60, min(RECENT_TRADES, RECENT_TRADES_TOTAL // max(1, len(instruments))))
        self.recent: list[deque[SimTrade]] = [deque(maxlen=keep) for _ in instruments]
        self._pending: dict[str, list[Candle]] = {}
        self._topics: dict[str, tuple[str, str, SymbolKlines]] = {}
        self._pushed: set[str] = set()
        self._next_periodic_ms = 0
        self._next_boundary_ms = 0

    def tradable(self, symbol: str) -> bool:
        """Subscribable: Trading and PreLaunch symbols (PreLaunch ones just never trade)."""
        i = self.index.get(symbol)
        return i is not None and self.instruments[i].status in ("Trading", "PreLaunch")

    def known_topic(self, topic: str) -> bool:
        kind, _, rest = topic.partition(".")
        if kind == "publicTrade":
            return self.tradable(rest)
        if kind == "kline":
            code, _, symbol = rest.partition(".")
            return code in INTERVALS and self.tradable(symbol)
        return False

    def step(self, now_ms: int, kline_topics: set[str]) -> list[Encoded | KlineMessage]:
        out: list[Encoded | KlineMessage] = []
        for checkpoint in self.source.checkpoints(now_ms):
            tick = self.source.poll(checkpoint)
            self.now_ms = checkpoint
            for index, trade in tick.trades:
                self.klines[index].add_trade(trade.time_ms, trade.price, trade.size)
                self.recent[index].append(trade)
            for batch in tick.messages:
                inst = self.instruments[batch.idx]
                out.append(encode_trades(self.category, inst, batch.trades, batch.ts_ms))
            recorded = {f"kline.1.{symbol}" for symbol in tick.kline_pushes}
            out.extend(self._klines(checkpoint, kline_topics, recorded))
        return out

    def _klines(self, now_ms: int, topics: set[str], recorded: set[str]) -> list[KlineMessage]:
        """Kline topics are all looked at once per push period and just after each minute
        boundary (every Bybit interval ends on one); in between only new or recorded ones."""
        periodic = now_ms >= self._next_periodic_ms
        boundary = now_ms >= self._next_boundary_ms
        if periodic:
            self._next_periodic_ms = now_ms + self.kline_push_ms
        if boundary:
            self._next_boundary_ms = MINUTE.floor(now_ms) + MINUTE.ms + self.confirm_delay_ms
        new = topics - self._pushed if len(topics) != len(self._pushed) or recorded else set()
        todo = topics if periodic or boundary else (new | recorded) & topics
        replay = isinstance(self.source, ReplaySource)
        out = []
        for topic in todo:
            code, symbol, sk = self._topic(topic)
            sk.current(code, now_ms)
            sk.advance(now_ms)
            for confirmed_code, candle in sk.take_confirmed():
                self._pending.setdefault(f"kline.{confirmed_code}.{symbol}", []).append(candle)
            pending = self._pending.get(topic, [])
            due = [c for c in pending if now_ms >= c.end_ms + self.confirm_delay_ms]
            if due:
                self._pending[topic] = pending[len(due) :]
            push = topic in new or (topic in recorded if replay and code == "1" else periodic)
            if due or push:
                out.extend(self._kline_messages(topic, symbol, code, sk, due, now_ms))
        if periodic or new:
            self._pushed = set(topics)
            for topic in [t for t in self._pending if t not in topics]:
                del self._pending[topic]
        return out

    def _topic(self, topic: str) -> tuple[str, str, SymbolKlines]:
        info = self._topics.get(topic)
        if info is None:
            _, code, symbol = topic.split(".", 2)
            info = self._topics[topic] = (code, symbol, self.klines[self.index[symbol]])
        return info

    def _kline_messages(
        self, topic: str, symbol: str, code: str, sk: SymbolKlines, due: list[Candle], now_ms: int
    ) -> list[KlineMessage]:
        digits = sk.digits
        confirms = [digits.as_bybit(c, code, True, now_ms) for c in due]
        current = digits.as_bybit(sk.series[code], code, False, now_ms)
        if self.category is Category.SPOT:  # spot sends the confirm and the next candle apart
            texts = [kline_frame(self.category, topic, [i], now_ms).decode() for i in confirms]
            messages = [
                KlineMessage(topic, symbol, code, t, [c]) for t, c in zip(texts, due, strict=True)
            ]
            text = kline_frame(self.category, topic, [current], now_ms).decode()
            return [*messages, KlineMessage(topic, symbol, code, text, [])]
        text = kline_frame(self.category, topic, [*confirms, current], now_ms).decode()
        return [KlineMessage(topic, symbol, code, text, due)]
