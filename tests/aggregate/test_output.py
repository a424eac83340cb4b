"""The candle JSON template equals the `common.wire.Candle` encoding, byte for byte."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from aggregate.output import CandleWriter
from aggregate.state import CoreCandle
from common.intervals import parse_intervals
from common.wire import candle_encoder

WRITER = CandleWriter(parse_intervals("1s,1m,1w,1M"), "linear")
SCALED = st.one_of(
    st.integers(0, 10**16),
    st.integers(0, 10**30),
    st.integers(-(10**14), 0),
    st.sampled_from([0, 1, 10**12, 12_345 * 10**10, 7 * 10**11]),
)


@st.composite
def candles(draw: st.DrawFn) -> CoreCandle:
    volume = draw(SCALED.filter(lambda v: v >= 0))
    return CoreCandle(
        draw(st.sampled_from(["BTCUSDT", "1000PEPEUSDT", 'ODD"\\NAME'])),
        draw(st.integers(0, 3)),
        draw(st.integers(0, 2**45)),
        draw(SCALED),
        draw(SCALED),
        draw(SCALED),
        draw(SCALED),
        volume,
        draw(st.integers(0, 10**40)) if volume else 0,
        draw(st.integers(0, volume)),
        draw(st.integers(1, 10**6)) if volume else draw(st.integers(0, 3)),
        draw(st.integers(0, 5)),
        draw(st.booleans()),
        draw(st.booleans()),
    )


@settings(max_examples=400, deadline=None)
@given(candle=candles())
def test_template_equals_struct_encoding(candle: CoreCandle) -> None:
    expected = candle_encoder.encode(WRITER.to_wire(candle))
    assert WRITER.encode(candle) == expected
    assert WRITER.encode(candle) == expected  # from the caches


@settings(max_examples=200, deadline=None)
@given(
    close=SCALED,
    symbol=st.sampled_from(["BTCUSDT", "ETHUSDT"]),
    interval=st.integers(0, 3),
    revision=st.integers(0, 3),
    flags=st.tuples(st.booleans(), st.booleans()),
)
def test_empty_candles_from_the_tail_cache(
    close: int, symbol: str, interval: int, revision: int, flags: tuple[bool, bool]
) -> None:
    gap, closed = flags
    for open_ms in (1_786_310_000_000, 1_786_310_001_000):
        candle = CoreCandle(
            symbol, interval, open_ms, close, close, close, close, 0, 0, 0, 0, revision, gap, closed
        )
        assert WRITER.encode(candle) == candle_encoder.encode(WRITER.to_wire(candle))
