"""EntryFeeder: stream entries into the core, bad ones reported; the decimal shortcut is exact."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregate.candles import CandleCore, CoreConfig
from aggregate.feed import EntryFeeder, _parse
from common.decimals import SCALE, parse_scaled
from common.intervals import parse_intervals
from common.wire import (
    ClockEntry,
    GapEntry,
    Side,
    Trade,
    TradesEntry,
    entry_decoder,
    entry_encoder,
)

CONFIG = CoreConfig(parse_intervals("1s,1m"))
T0 = 1_786_310_000_000


def _core_json(feeder: EntryFeeder) -> bytes:
    return msgspec.json.encode([feeder.core.export_state(), feeder.core.take()])


def test_entries_feed_the_core_and_bad_ones_are_reported() -> None:
    trades = [
        Trade(T0 + i * 300, f"{100 + i}.{i}5", f"0.{i + 1}", Side.BUY, f"a{i}") for i in range(9)
    ]
    payloads = [
        entry_encoder.encode(TradesEntry("BTCUSDT", trades[:4])),
        b'{"type":"trades","symbol":"BTCUSDT","trades":[[%d,"101.5","2","Sell","b1"]]}'
        % (T0 + 1500),
        b'{"type":"trades","symbol":"BTCUSDT","trades":[[%d,"1e5","2","Sell","b2",0]]}'
        % (T0 + 1600),
        b'{"type":"trades","symbol":"BTCUSDT","trades":[[%d,"101","2","Hold","b3",0]]}'
        % (T0 + 1600),
        b'{"type":"trades","symbol":"BTCUSDT","trades":[]}',
        b"not json",
        entry_encoder.encode(GapEntry(["BTCUSDT"], T0, T0 + 200, "test")),
        entry_encoder.encode(TradesEntry("ETHUSDT", trades[4:])),
        entry_encoder.encode(ClockEntry(T0 + 60_000)),
    ]
    feeder = EntryFeeder(CandleCore(CONFIG))
    problems = feeder.feed(payloads)
    assert len(problems) == 3  # 1e5, Hold, not json
    assert (
        problems[0] == f"bad trade of BTCUSDT at T={T0 + 1600}: not a plain decimal number: '1e5'"
    )
    assert problems[1].startswith("bad stream entry")
    direct = EntryFeeder(CandleCore(CONFIG))
    bad_price_gap = entry_encoder.encode(GapEntry(["BTCUSDT"], T0 + 1600, T0 + 1600, "bad"))
    for payload in (payloads[0], payloads[1], bad_price_gap, payloads[6], payloads[7], payloads[8]):
        entry = entry_decoder.decode(payload)
        if isinstance(entry, TradesEntry):
            direct.core.trades(
                entry.symbol,
                [t.time_ms for t in entry.trades],
                [parse_scaled(t.price) for t in entry.trades],
                [parse_scaled(t.size) for t in entry.trades],
                [t.side is Side.BUY for t in entry.trades],
                [t.trade_id for t in entry.trades],
            )
        elif isinstance(entry, GapEntry):
            direct.core.gap(entry.symbols, entry.from_ms, entry.to_ms)
        elif isinstance(entry, ClockEntry):
            direct.core.clock(entry.time_ms)
    assert feeder.core.state.counters.trades_in == 10
    assert _core_json(feeder) == _core_json(direct)


def _trade(t: int, price: str, size: str, trade_id: str) -> Trade:
    return Trade(t, price, size, Side.BUY, trade_id)


def test_a_bad_number_drops_its_trade_alone_and_flags_its_candles() -> None:
    """One unparseable price in a message of four: the three others are aggregated, the bad one
    is reported, and the candles holding its time say `gap: true` (the 1m one too)."""
    t = T0 - T0 % 60_000 + 60_000  # a minute boundary
    feeder = EntryFeeder(CandleCore(CONFIG))
    feeder.core.seed("BTCUSDT", t, 100 * SCALE)
    message = [
        _trade(t + 100, "101.5", "1", "a"),
        _trade(t + 1_200, "102,5", "1", "bad"),  # a comma: not a number
        _trade(t + 1_300, "103.5", "2", "b"),
        _trade(t + 2_100, "99.5", "0.5", "c"),
    ]
    problems = feeder.feed(
        [
            entry_encoder.encode(TradesEntry("BTCUSDT", message)),
            entry_encoder.encode(ClockEntry(t + 60_100)),
        ]
    )
    assert problems == [
        f"bad trade of BTCUSDT at T={t + 1_200}: not a plain decimal number: '102,5'"
    ]
    candles = {(c.interval, c.open_ms - t): c for c in feeder.core.take()}
    one_s = [candles[(0, ms)] for ms in (0, 1_000, 2_000, 3_000)]
    assert [(c.trade_count, c.gap) for c in one_s] == [
        (1, False),
        (1, True),
        (1, False),
        (0, False),
    ]
    assert one_s[1].close == parse_scaled("103.5")
    minute = candles[(1, 0)]
    assert (minute.trade_count, minute.volume, minute.gap) == (3, parse_scaled("3.5"), True)


def test_the_scale_holds_every_step_bybit_lists() -> None:
    """Spot BABYDOGEUSDT's tick is 0.0000000000001 (13 decimals; the capture's instruments-info):
    such a price is exact, not a refused trade."""
    feeder = EntryFeeder(CandleCore(CONFIG))
    t = T0 - T0 % 60_000
    feeder.core.seed("BABYDOGEUSDT", t, parse_scaled("0.0000000012345"))
    trades = [_trade(t + 10, "0.0000000012346", "1000000000", "x")]
    problems = feeder.feed(
        [
            entry_encoder.encode(TradesEntry("BABYDOGEUSDT", trades)),
            entry_encoder.encode(ClockEntry(t + 1_100)),
        ]
    )
    assert problems == []
    (candle,) = [c for c in feeder.core.take() if c.interval == 0]
    assert candle.close == parse_scaled("0.0000000012346")
    assert candle.turnover == parse_scaled("1000000000") * parse_scaled("0.0000000012346")


@settings(max_examples=300, deadline=None)
@given(
    text=st.one_of(
        st.from_regex(r"\A-?[0-9]{1,8}(\.[0-9]{0,14})?\Z"),
        st.text(max_size=8),
        st.sampled_from(["1_000", " 1", "+1", "1.-2", "١٢", "1e3", ".5", "5."]),
    )
)
def test_parse_equals_parse_scaled(text: str) -> None:
    """The same values; and a negative price or size is refused."""
    try:
        expected: int | str = parse_scaled(text)
    except ValueError:
        expected = "error"
    if isinstance(expected, int) and expected < 0:
        expected = "error"
    try:
        got: int | str = _parse(text)
    except ValueError:
        got = "error"
    assert got == expected


def test_a_seed_opens_a_cold_symbol_at_its_close_and_is_ignored_once_followed() -> None:
    """A `seed` entry: the candle that opens at its `start` is a full candle opening at its
    close (not the skipped partial first one); for a symbol already followed it changes
    nothing, and a close that is not a number is reported."""
    t = T0 - T0 % 60_000 + 60_000  # a minute boundary
    feeder = EntryFeeder(CandleCore(CONFIG))
    problems = feeder.feed(
        [
            b'{"type":"seed","symbol":"BTCUSDT","start":%d,"close":"100.5"}' % t,
            entry_encoder.encode(TradesEntry("BTCUSDT", [_trade(t + 1_500, "101", "2", "a")])),
            entry_encoder.encode(TradesEntry("ETHUSDT", [_trade(t + 1_500, "7", "1", "e")])),
            # ETHUSDT is followed now; BTCUSDT's later seed changes nothing either
            b'{"type":"seed","symbol":"ETHUSDT","start":%d,"close":"9"}' % (t + 2_000),
            b'{"type":"seed","symbol":"BTCUSDT","start":%d,"close":"50"}' % (t + 2_000),
            b'{"type":"seed","symbol":"SOLUSDT","start":%d,"close":"1e3"}' % t,
            entry_encoder.encode(ClockEntry(t + 60_100)),
        ]
    )
    assert problems == ["bad seed of SOLUSDT: close '1e3': not a plain decimal number: '1e3'"]
    candles = {(c.symbol, c.interval, c.open_ms - t): c for c in feeder.core.take()}
    minute = candles[("BTCUSDT", 1, 0)]
    assert (minute.open, minute.high, minute.low, minute.close, minute.trade_count) == (
        parse_scaled("100.5"), parse_scaled("101"), parse_scaled("100.5"), parse_scaled("101"), 1,
    )  # fmt: skip
    first_second = candles[("BTCUSDT", 0, 0)]  # empty, at the seed's close
    assert (first_second.open, first_second.close, first_second.trade_count) == (
        parse_scaled("100.5"), parse_scaled("100.5"), 0,
    )  # fmt: skip
    assert ("ETHUSDT", 1, 0) not in candles  # cold start without a seed: partial, skipped
    assert "SOLUSDT" not in feeder.core.state.symbols
