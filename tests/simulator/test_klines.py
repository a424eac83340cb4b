from __future__ import annotations

import msgspec

from simulator.klines import Candle, Digits, SymbolKlines

LINEAR = Digits(price=2, size=3, turnover=5, inverse=False)
T0 = 1_786_310_700_000  # a 5-minute boundary (2026-08-09 21:25 UTC)


def _klines(price: int = 100_00) -> SymbolKlines:
    return SymbolKlines.start(LINEAR, T0 + 5_000, price)


def test_candle_opens_at_previous_close_and_high_low_include_it() -> None:
    sk = _klines()
    sk.current("1", T0 + 5_000)
    sk.add_trade(T0 + 10_000, 100_50, 2_000)  # 2.000 @ 100.50
    sk.add_trade(T0 + 70_000, 101_00, 1_000)  # next minute: opens at 100.50
    sk.add_trade(T0 + 71_000, 100_80, 1_000)
    confirmed = sk.take_confirmed()
    assert [(code, c.start_ms) for code, c in confirmed] == [("1", T0)]
    first = confirmed[0][1]
    assert (first.open, first.high, first.low, first.close) == (100_00, 100_50, 100_00, 100_50)
    assert first.volume == 2_000
    assert first.turnover == 100_50 * 2_000  # 201.00000 at 5 digits
    second = sk.series["1"]
    assert (second.open, second.high, second.low, second.close) == (100_50, 101_00, 100_50, 100_80)
    item = LINEAR.as_bybit(second, "1", False, T0 + 71_500)
    assert msgspec.structs.asdict(item) == {
        "start": T0 + 60_000, "end": T0 + 119_999, "interval": "1", "open": "100.5",
        "close": "100.8", "high": "101", "low": "100.5", "volume": "2", "turnover": "201.8",
        "confirm": False, "timestamp": T0 + 71_500,
    }  # fmt: skip


def test_empty_candles_are_flat_at_previous_close() -> None:
    sk = _klines()
    sk.current("1", T0)
    sk.add_trade(T0 + 1_000, 99_00, 5)
    sk.advance(T0 + 180_500)  # two more minutes pass with no trades
    confirmed = [c for _, c in sk.take_confirmed()]
    assert [c.start_ms for c in confirmed] == [T0, T0 + 60_000, T0 + 120_000]
    for empty in confirmed[1:]:
        assert (empty.open, empty.high, empty.low, empty.close, empty.volume) == (
            99_00, 99_00, 99_00, 99_00, 0,
        )  # fmt: skip
    assert LINEAR.as_row(confirmed[2]) == [str(T0 + 120_000), "99", "99", "99", "99", "0", "0"]


def test_longer_intervals_fold_the_minutes_and_rest_buckets_agree() -> None:
    sk = _klines()
    trades = [(T0 + 1_000, 100_10, 1), (T0 + 61_000, 99_90, 2), (T0 + 250_000, 100_30, 3)]
    for time_ms, price, size in trades:
        sk.add_trade(time_ms, price, size)
    five = sk.buckets("5", T0 + 260_000)
    assert len(five) == 1
    candle = five[0]
    assert (candle.open, candle.high, candle.low, candle.close) == (100_00, 100_30, 99_90, 100_30)
    assert candle.volume == 6
    assert candle.turnover == 100_10 * 1 + 99_90 * 2 + 100_30 * 3
    minutes = sk.buckets("1", T0 + 260_000)
    assert [c.start_ms for c in minutes] == [T0 + k * 60_000 for k in range(5)]
    assert [c.open for c in minutes] == [100_00, 100_10, 99_90, 99_90, 99_90]
    assert [c.volume for c in minutes] == [1, 2, 0, 0, 3]
    # activating the 5-minute series later starts from the same folded candle
    live = sk.current("5", T0 + 260_000)
    assert (live.open, live.high, live.low, live.close, live.volume) == (
        100_00, 100_30, 99_90, 100_30, 6,
    )  # fmt: skip


def test_inverse_turnover_is_size_over_price() -> None:
    inverse = Digits(price=2, size=0, turnover=12, inverse=True)
    assert inverse.turnover_units(50_000_00, 100) == 2_000_000_000  # 100 / 50000 = 0.002
    assert inverse.as_row(Candle(0, 60_000, 1, 1, 1, 1, 100, 2_000_000_000))[6] == "0.002"


def test_seeded_history_starts_with_the_recorded_candle() -> None:
    seed = Candle(T0, T0 + 60_000, 65119_90, 65119_90, 65114_20, 65114_30, 1_576, 0, 1)
    sk = SymbolKlines.seeded(LINEAR, seed)
    sk.current("1", T0 + 58_000)
    sk.add_trade(T0 + 59_680, 65114_20, 4)
    sk.advance(T0 + 60_100)
    ((_code, closed),) = sk.take_confirmed()
    assert (closed.close, closed.volume) == (65114_20, 1_580)
    assert sk.series["1"].open == 65114_20
