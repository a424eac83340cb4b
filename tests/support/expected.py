"""Candles computed straight from a list of trades, independently of the pipeline's code.

Bybit's rule: a candle opens at the previous candle's close and its high/low include that open;
a candle without trades is flat at the previous close with volume 0. Plain loops and Decimal.

`check_series` is the ledger check of the end-to-end and fault tests: the series a run must
have written come from the ledger (every symbol that traded, every interval, from the candle
after the one holding the symbol's first trade: that one is partial after a cold start and not
written), never from what was published, so a series that never appeared, a missing leading
candle and a candle no ledger trade defines all fail.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
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
        # None only in a backfilled candle (CandleView); these come from candle streams
        assert view.trade_count is not None and view.buy_volume is not None, view
        return cls(
            view.open, view.high, view.low, view.close, view.volume, view.turnover,
            view.trade_count, view.buy_volume,
        )  # fmt: skip


def expected_candles(
    trades: Iterable[LedgerTrade], intervals: tuple[Interval, ...], until_ms: int
) -> dict[Key, Values]:
    """Every candle from each symbol's first trade's candle up to those ending by `until_ms`."""
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


def check_series(
    trades: list[LedgerTrade],
    intervals: tuple[Interval, ...],
    published: Mapping[Key, CandleView],
    closed_by_ms: int,
    floors: Mapping[int, int],
) -> dict[int, int]:
    """Compare the last revision of every published candle with the ledger's; return how many
    were compared per interval (ms), after asserting and printing each interval's floor.

    Required: every candle of every ledger series (cold start: from its second candle) that ends
    by `closed_by_ms`. Allowed beyond that: the following candles, equal to the ledger's too.
    """
    by_ms = {interval.ms: interval for interval in intervals}
    unknown = {key for key in published if key[1] not in by_ms}
    assert unknown == set(), f"candles of intervals not configured: {sorted(unknown)[:5]}"
    ends = [by_ms[interval].next_open(open_ms) for _, interval, open_ms in published]
    bound = max([closed_by_ms, *ends])
    every = expected_candles(trades, intervals, bound)
    firsts = {(s, i): o for s, i, o in sorted(every, reverse=True)}  # the earliest per series
    expected = {key: value for key, value in every.items() if key[2] != firsts[key[:2]]}
    extra = sorted(set(published) - set(expected))
    assert extra == [], f"{len(extra)} candles that no ledger series holds, first {extra[:5]}"
    missing = sorted(
        key
        for key in expected
        if key not in published and by_ms[key[1]].next_open(key[2]) <= closed_by_ms
    )
    assert missing == [], f"{len(missing)} candles of ledger series missing, first {missing[:5]}"
    wrong = [
        (key, Values.of(view), expected[key])
        for key, view in sorted(published.items())
        if Values.of(view) != expected[key]
        or view.sell_volume != expected[key].volume - expected[key].buy_volume
    ]
    assert wrong == [], f"{len(wrong)} candles differ from the ledger's, first {wrong[:3]}"
    compared: dict[int, int] = {interval.ms: 0 for interval in intervals}
    for _, interval, _ in published:
        compared[interval] += 1
    series = {key[:2] for key in expected}
    print(
        f"ledger check: {len(series)} series; candles compared per interval (floor): "
        + ", ".join(f"{by_ms[ms].label} {n} ({floors.get(ms, 0)})" for ms, n in compared.items())
    )
    low = {ms: n for ms, n in compared.items() if n < floors.get(ms, 0)}
    assert low == {}, f"fewer candles compared than the floor: {low}"
    return compared
