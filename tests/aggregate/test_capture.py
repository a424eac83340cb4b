"""The core against Bybit's own klines in the real capture (README table of testdata/bybit)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from aggregate.candles import CandleCore, CoreConfig
from aggregate.output import CandleWriter
from common.decimals import parse_scaled
from common.intervals import parse_intervals
from common.wire import Side, TradesEntry, candle_view_decoder
from tests.aggregate.capture import (
    MINUTE_2126,
    MINUTE_2127,
    TABLE,
    Expected,
    klines,
    messages,
    require_capture,
)

ONE_MINUTE = parse_intervals("1m")


def feed(core: CandleCore, entry: TradesEntry, cutoff_ms: int | None = None) -> None:
    trades = [t for t in entry.trades if cutoff_ms is None or t.time_ms <= cutoff_ms]
    if trades:
        core.trades(
            entry.symbol,
            [t.time_ms for t in trades],
            [parse_scaled(t.price) for t in trades],
            [parse_scaled(t.size) for t in trades],
            [t.side is Side.BUY for t in trades],
            [t.trade_id for t in trades],
        )


@pytest.mark.parametrize("row", TABLE, ids=[f"{r.category}-{r.symbol}" for r in TABLE])
def test_2127_candle_equals_bybit_snapshot(row: Expected) -> None:
    require_capture()
    core = CandleCore(CoreConfig(ONE_MINUTE))
    core.seed(row.symbol, MINUTE_2127, parse_scaled(row.prev_close))
    count = 0
    for entry in messages()[row.category]:
        if entry.symbol == row.symbol:
            feed(core, entry, row.cutoff_ms)
            count += sum(1 for t in entry.trades if MINUTE_2127 <= t.time_ms <= row.cutoff_ms)
    core.clock(MINUTE_2127 + 60_000 + 80)  # the candle closes at the trade cut-off
    [candle] = [c for c in core.take() if c.open_ms == MINUTE_2127]
    view = candle_view_decoder.decode(CandleWriter(ONE_MINUTE, row.category).encode(candle))
    assert count == row.n == view.trade_count
    assert (view.open, view.high, view.low, view.close) == tuple(map(Decimal, row.ohlc))
    assert view.volume == Decimal(row.volume)
    assert view.turnover == Decimal(row.turnover)
    assert view.buy_volume + view.sell_volume == view.volume


def test_2126_btcusdt_linear_closes_as_bybit_confirmed() -> None:
    """Only the 21:26 candle's last trade is in the capture: Bybit's last in-progress snapshot
    plus the candle we build from the captured trades equals Bybit's confirmed candle."""
    require_capture()
    rows = klines("linear", "BTCUSDT", MINUTE_2126)
    confirmed = next(k for k in rows if k.confirm)
    first_trade_ms = min(
        t.time_ms
        for e in messages()["linear"]
        if e.symbol == "BTCUSDT"
        for t in e.trades
        if t.time_ms >= MINUTE_2126
    )
    snapshot = [k for k in rows if not k.confirm and k.timestamp_ms < first_trade_ms][-1]
    core = CandleCore(CoreConfig(ONE_MINUTE))
    core.seed("BTCUSDT", MINUTE_2126, parse_scaled(snapshot.open))
    for entry in messages()["linear"]:
        if entry.symbol == "BTCUSDT":
            feed(core, entry)
    core.clock(MINUTE_2127 + 60_000 + 80)
    [ours] = [
        candle_view_decoder.decode(CandleWriter(ONE_MINUTE, "linear").encode(c))
        for c in core.take()
        if c.open_ms == MINUTE_2126
    ]
    assert ours.trade_count == 1
    assert ours.open == Decimal(confirmed.open)
    assert ours.close == Decimal(confirmed.close)
    assert max(ours.high, Decimal(snapshot.high)) == Decimal(confirmed.high)
    assert min(ours.low, Decimal(snapshot.low)) == Decimal(confirmed.low)
    assert ours.volume + Decimal(snapshot.volume) == Decimal(confirmed.volume)
    assert ours.turnover + Decimal(snapshot.turnover) == Decimal(confirmed.turnover)
