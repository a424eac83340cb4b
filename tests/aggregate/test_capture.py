"""The core against Bybit's own klines in the real capture (../shared/testdata/bybit).

Every kline item of the capture is checked: the 85 in-progress snapshots of the 21:27 candle
(six series) and, per series, the step from the last 21:26 snapshot to the confirmed 21:26 candle.

Expected values come from the capture, never from the core: Bybit's snapshots, and a Decimal
reference (capture.reference) built from the captured trades, buy volume from each trade's side.
The 21:27 candle opens at the close of Bybit's confirmed 21:26 kline (a frame of the capture, an
input the trades cannot give: the capture starts 3 s before 21:27), not at the README's answer.

Bybit's own snapshot lag (README "What the capture proves"): three 21:27 snapshots leave out
trades stamped just before them, and the next snapshot of the series includes them. They are
named in LAGGED below with the lag; every other snapshot (82 of 85) must equal the trades exactly.
The 21:26 snapshots before each series' last one are not checked: the trades between them and
the last one predate the capture's trade subscription (they are not in the file).
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from aggregate.candles import CandleCore, CoreConfig
from aggregate.output import CandleWriter
from common.decimals import parse_scaled
from common.intervals import parse_intervals
from common.wire import CandleView, Side, candle_view_decoder
from tests.aggregate.capture import (
    MINUTE_2126,
    MINUTE_2127,
    TABLE,
    Candle,
    Expected,
    Kline,
    all_klines,
    klines,
    messages,
    reference,
    require_capture,
    trades_of,
)

ONE_MINUTE = parse_intervals("1m")
SERIES = [(r.category, r.symbol) for r in TABLE]
LAGGED = {  # (category, symbol, snapshot ms) -> it left out the trades stamped this close before it
    ("linear", "SOLUSDT", MINUTE_2127 + 2_006): 65,
    ("linear", "ETHUSDT", MINUTE_2127 + 33_125): 62,
    ("linear", "BTCUSDT", MINUTE_2127 + 37_441): 1,
}


def fields(candle: Candle | CandleView) -> tuple[object, ...]:
    return (candle.open, candle.high, candle.low, candle.close, candle.volume, candle.turnover)


def bybit(kline: Kline) -> tuple[Decimal, ...]:
    values = (kline.open, kline.high, kline.low, kline.close, kline.volume, kline.turnover)
    return tuple(map(Decimal, values))


def snapshots_2127(category: str, symbol: str) -> list[Kline]:
    return [k for k in klines(category, symbol, MINUTE_2127) if not k.confirm]


def confirmed_2126_close(category: str, symbol: str) -> Decimal:
    [confirm] = [k for k in klines(category, symbol, MINUTE_2126) if k.confirm]
    return Decimal(confirm.close)


def expected_at(category: str, symbol: str, cutoff_ms: int) -> Candle:
    """The 21:27 candle from the trades stamped up to `cutoff_ms`, opening at the 21:26 close."""
    open_ = confirmed_2126_close(category, symbol)
    return reference(open_, trades_of(category, symbol, MINUTE_2127, cutoff_ms))


def core_candle(
    category: str, symbol: str, cutoff_ms: int, prev_close: Decimal | None
) -> CandleView | None:
    """The core's 21:27 candle from the capture's messages cut at `cutoff_ms`, through the writer;
    seeded at 21:27 with `prev_close`, or a cold start (None). None if it writes no 21:27 candle."""
    core = CandleCore(CoreConfig(ONE_MINUTE))
    if prev_close is not None:
        core.seed(symbol, MINUTE_2127, parse_scaled(str(prev_close)))
    for entry in messages()[category]:
        trades = [t for t in entry.trades if t.time_ms <= cutoff_ms]
        if entry.symbol == symbol and trades:
            core.trades(
                symbol,
                [t.time_ms for t in trades],
                [parse_scaled(t.price) for t in trades],
                [parse_scaled(t.size) for t in trades],
                [t.side is Side.BUY for t in trades],
                [t.trade_id for t in trades],
            )
    core.clock(MINUTE_2127 + 60_000 + 80)  # the candle closes at the trade cut-off
    writer = CandleWriter(ONE_MINUTE, category)
    views = [candle_view_decoder.decode(writer.encode(c)) for c in core.take()]
    found = [v for v in views if v.timestamp == MINUTE_2127]
    return found[0] if found else None


def test_the_capture_holds_the_snapshots_its_readme_counts() -> None:
    require_capture()
    items = all_klines()
    assert len(items) == 100
    assert sum(1 for k in items if k.start_ms == MINUTE_2127) == 85
    assert {(k.category, k.symbol) for k in items if k.confirm} == set(SERIES)
    assert all(k.start_ms == MINUTE_2126 for k in items if k.confirm)
    assert set(LAGGED) <= {(k.category, k.symbol, k.timestamp_ms) for k in items}


def test_every_2127_snapshot_is_its_trades_by_bybits_rule() -> None:
    """The reference equals Bybit at 82 snapshots; the 3 others are Bybit's snapshot lag."""
    require_capture()
    exact = 0
    for category, symbol in SERIES:
        snapshots = snapshots_2127(category, symbol)
        for index, kline in enumerate(snapshots):
            key = (category, symbol, kline.timestamp_ms)
            lag = LAGGED.get(key)
            if lag is None:
                assert fields(expected_at(category, symbol, kline.timestamp_ms)) == bybit(kline), (
                    key
                )
                exact += 1
                continue
            # It left out exactly the trades stamped in the last `lag` ms, and no others ...
            assert fields(expected_at(category, symbol, kline.timestamp_ms - lag - 1)) == bybit(
                kline
            ), key
            assert fields(expected_at(category, symbol, kline.timestamp_ms)) != bybit(kline), key
            assert trades_of(category, symbol, kline.timestamp_ms - lag, kline.timestamp_ms)
            # ... and the next snapshot of the series has them.
            following = snapshots[index + 1]
            assert fields(expected_at(category, symbol, following.timestamp_ms)) == bybit(
                following
            ), key
    assert exact == 82


@pytest.mark.parametrize(("category", "symbol"), SERIES, ids=[f"{c}-{s}" for c, s in SERIES])
def test_the_core_equals_the_trades_at_every_2127_snapshot(category: str, symbol: str) -> None:
    """Every value the writer puts out, at each snapshot's cut-off; buy and sell volume from the
    trades' sides (the writer derives sell as volume - buy, so that alone would prove nothing)."""
    require_capture()
    prev_close = confirmed_2126_close(category, symbol)
    for kline in snapshots_2127(category, symbol):
        want = expected_at(category, symbol, kline.timestamp_ms)
        got = core_candle(category, symbol, kline.timestamp_ms, prev_close)
        assert got is not None
        sells = trades_of(category, symbol, MINUTE_2127, kline.timestamp_ms)
        sell_volume = sum((Decimal(t.size) for t in sells if t.side is Side.SELL), Decimal(0))
        assert (*fields(got), got.trade_count, got.buy_volume, got.sell_volume) == (
            *fields(want),
            want.trade_count,
            want.buy_volume,
            sell_volume,
        ), (category, symbol, kline.timestamp_ms)
        assert (got.closed, got.gap, got.revision, got.category) == (True, False, 0, category)


@pytest.mark.parametrize("row", TABLE, ids=[f"{r.category}-{r.symbol}" for r in TABLE])
def test_the_last_2127_snapshot_is_the_readme_row(row: Expected) -> None:
    """The README's table: Bybit's last snapshot, the reference and the core agree with it."""
    require_capture()
    last = snapshots_2127(row.category, row.symbol)[-1]
    assert last.timestamp_ms == row.cutoff_ms
    answer = (*map(Decimal, row.ohlc), Decimal(row.volume), Decimal(row.turnover))
    assert bybit(last) == answer
    assert confirmed_2126_close(row.category, row.symbol) == Decimal(row.prev_close)
    want = expected_at(row.category, row.symbol, row.cutoff_ms)
    assert (fields(want), want.trade_count) == (answer, row.n)
    got = core_candle(row.category, row.symbol, row.cutoff_ms, want.open)
    assert got is not None
    assert (fields(got), got.trade_count) == (answer, row.n)


def test_a_cold_start_opens_linear_btcusdt_at_its_captured_2126_trade() -> None:
    """No seed at all: linear BTCUSDT's one captured 21:26 trade makes 21:26 the partial first
    candle (not written), and the 21:27 candle opens at its price, Bybit's row. The five other
    series have no 21:26 trade in the capture, so their 21:27 candle is the partial first one."""
    require_capture()
    [row] = [r for r in TABLE if (r.category, r.symbol) == ("linear", "BTCUSDT")]
    got = core_candle("linear", "BTCUSDT", row.cutoff_ms, None)
    assert got is not None
    answer = (*map(Decimal, row.ohlc), Decimal(row.volume), Decimal(row.turnover))
    assert (fields(got), got.trade_count) == (answer, row.n)
    for category, symbol in SERIES[1:]:
        assert core_candle(category, symbol, MINUTE_2127 + 59_999, None) is None


@pytest.mark.parametrize(("category", "symbol"), SERIES, ids=[f"{c}-{s}" for c, s in SERIES])
def test_the_2126_candle_closes_as_bybit_confirmed(category: str, symbol: str) -> None:
    """The last 21:26 snapshot plus the candle the core builds from the captured trades after it
    is Bybit's confirmed candle: one trade for linear BTCUSDT, none for the five others."""
    require_capture()
    rows = klines(category, symbol, MINUTE_2126)
    [confirmed] = [k for k in rows if k.confirm]
    snapshot = [k for k in rows if not k.confirm][-1]
    after = [t for t in trades_of(category, symbol, snapshot.timestamp_ms + 1, MINUTE_2127 - 1)]
    assert len(after) == (1 if (category, symbol) == ("linear", "BTCUSDT") else 0)
    core = CandleCore(CoreConfig(ONE_MINUTE))
    core.seed(symbol, MINUTE_2126, parse_scaled(snapshot.close))
    for entry in messages()[category]:
        trades = [t for t in entry.trades if snapshot.timestamp_ms < t.time_ms]
        if entry.symbol == symbol and trades:
            core.trades(
                symbol,
                [t.time_ms for t in trades],
                [parse_scaled(t.price) for t in trades],
                [parse_scaled(t.size) for t in trades],
                [t.side is Side.BUY for t in trades],
                [t.trade_id for t in trades],
            )
    core.clock(MINUTE_2127 + 60_000 + 80)
    writer = CandleWriter(ONE_MINUTE, category)
    [ours] = [
        candle_view_decoder.decode(writer.encode(c))
        for c in core.take()
        if c.open_ms == MINUTE_2126
    ]
    assert ours.trade_count == len(after)
    assert ours.close == Decimal(confirmed.close)
    assert max(ours.high, Decimal(snapshot.high)) == Decimal(confirmed.high)
    assert min(ours.low, Decimal(snapshot.low)) == Decimal(confirmed.low)
    assert ours.volume + Decimal(snapshot.volume) == Decimal(confirmed.volume)
    assert ours.turnover + Decimal(snapshot.turnover) == Decimal(confirmed.turnover)
    assert Decimal(snapshot.open) == Decimal(confirmed.open)
