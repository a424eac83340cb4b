"""EntryFeeder: stream entries into the core, bad ones reported; the decimal shortcut is exact."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregate.candles import CandleCore, CoreConfig
from aggregate.feed import EntryFeeder, _parse
from common.decimals import parse_scaled
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
    assert "bad trade of BTCUSDT" in problems[0]
    assert problems[1].startswith("bad stream entry")
    direct = EntryFeeder(CandleCore(CONFIG))
    for payload in (payloads[0], payloads[1], payloads[6], payloads[7], payloads[8]):
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


@settings(max_examples=300, deadline=None)
@given(
    text=st.one_of(
        st.from_regex(r"\A-?[0-9]{1,8}(\.[0-9]{0,14})?\Z"),
        st.text(max_size=8),
        st.sampled_from(["1_000", " 1", "+1", "1.-2", "١٢", "1e3", ".5", "5."]),
    )
)
def test_parse_equals_parse_scaled(text: str) -> None:
    try:
        expected: int | str = parse_scaled(text)
    except ValueError:
        expected = "error"
    try:
        got: int | str = _parse(text)
    except ValueError:
        got = "error"
    assert got == expected
