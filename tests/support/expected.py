"""Candles computed straight from a list of trades, independently of the pipeline's code.

Bybit's rule: a candle opens at the previous candle's close and its high/low include that open;
a candle without trades is flat at the previous close with volume 0. Plain loops and Decimal.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from common.intervals import Interval
from common.wire import CandleView

Key = tuple[str, int, int]  # symbol, interval ms, open time


@dataclass(frozen=True)
class LedgerTrade:
    symbol: str
    time_ms: int
    price: Decimal
    size: Decimal
    buy: bool
    trade_id: str


@dataclass(frozen=True)
class Values:
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    turnover: Decimal
    trade_count: int
    buy_volume: Decimal

    @classmethod
    def of(cls, view: CandleView) -> Values:
        return cls(
            view.open, view.high, view.low, view.close, view.volume, view.turnover,
            view.trade_count, view.buy_volume,
        )  # fmt: skip


def expected_candles(
    trades: Iterable[LedgerTrade], intervals: tuple[Interval, ...], until_ms: int
) -> dict[Key, Values]:
    """Every candle from each symbol's first trade's candle up to (not including) `until_ms`."""
    by_symbol: dict[str, list[LedgerTrade]] = defaultdict(list)
    for trade in trades:
        by_symbol[trade.symbol].append(trade)
    out: dict[Key, Values] = {}
    for symbol, items in by_symbol.items():
        items.sort(key=lambda t: t.time_ms)  # stable: equal times keep the ledger's order
        for interval in intervals:
            _series(symbol, items, interval, until_ms, out)
    return out


def _series(
    symbol: str,
    items: list[LedgerTrade],
    interval: Interval,
    until_ms: int,
    out: dict[Key, Values],
) -> None:
    buckets: dict[int, list[LedgerTrade]] = defaultdict(list)
    for trade in items:
        buckets[interval.floor(trade.time_ms)].append(trade)
    open_ms = min(buckets)
    prev_close: Decimal | None = None
    while interval.next_open(open_ms) <= until_ms:
        bucket = buckets.get(open_ms, [])
        if bucket:
            prices = [t.price for t in bucket]
            first = prices[0] if prev_close is None else prev_close
            value = Values(
                first, max(first, *prices), min(first, *prices), prices[-1],
                sum((t.size for t in bucket), Decimal(0)),
                sum((t.size * t.price for t in bucket), Decimal(0)),
                len(bucket),
                sum((t.size for t in bucket if t.buy), Decimal(0)),
            )  # fmt: skip
        else:
            assert prev_close is not None
            value = Values(prev_close, prev_close, prev_close, prev_close, Decimal(0),
                           Decimal(0), 0, Decimal(0))  # fmt: skip
        out[(symbol, interval.ms, open_ms)] = value
        prev_close = value.close
        open_ms = interval.next_open(open_ms)
