"""Candles rendered ahead of their waiter deadline (CandleCore.previews, CandleWriter.prepare):
the preview of a candle is the candle its deadline closes, unless a trade of its own symbol came
in between; and what the writer hands out equals a fresh rendering either way."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregate.candles import CandleCore, CoreConfig
from aggregate.output import CandleWriter
from aggregate.state import CoreCandle
from common.intervals import parse_intervals
from tests.aggregate.streams import Clock, Event, Msg, feed_core, streams

LATENCY_MS = 80
START_MS = 1_786_310_037_000  # 3 s before a minute's end: streams cross minute boundaries


def _config(intervals: str, bybit_open: bool, emit_empty: bool) -> CoreConfig:
    return CoreConfig(
        intervals=parse_intervals(intervals),
        waiter_latency_ms=LATENCY_MS,
        revision_window_ms=5_000,
        open_at_previous_close=bybit_open,
        emit_empty=emit_empty,
    )


def _with_waits(events: list[Event]) -> list[Event]:
    """The stream with a clock tick between the boundary after each message and its deadline
    (the moment the shard renders ahead), so that most boundaries are previewed."""
    out: list[Event] = []
    for event in events:
        out.append(event)
        if isinstance(event, Msg):
            last = max(trade[0] for trade in event.trades)
            out.append(Clock(last - last % 1000 + 1000 + LATENCY_MS // 2))
    return out


def _key(c: CoreCandle) -> tuple[str, int, int]:
    return c.symbol, c.interval, c.open_ms


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_preview_is_the_candle_its_deadline_closes(data: st.DataObject) -> None:
    intervals = data.draw(st.sampled_from(["1s,1m", "1s,5s,1m,5m", "1s,1m,5m,15m,1h,4h"]))
    bybit_open, emit_empty = data.draw(st.booleans()), data.draw(st.booleans())
    config = _config(intervals, bybit_open, emit_empty)
    events = _with_waits(data.draw(streams(START_MS, 700, 2_000, 5_000, (5, 40))))
    core = CandleCore(config)
    writer, fresh = (
        CandleWriter(config.intervals, "linear"),
        CandleWriter(config.intervals, "linear"),
    )
    for event in events:
        previews = {_key(p): p for p in core.previews()}
        writer.prepare(list(previews.values()))
        feed_core(core, event)
        for c in core.take():
            assert writer.encode(c) == fresh.encode(c)
            preview = previews.get(_key(c))
            if preview is None or (isinstance(event, Msg) and event.symbol == c.symbol):
                continue  # a trade of its own may change it: its rendering is made anew
            if c.gap or c.revision:
                continue  # not previewed: a gap entry flagged it, or it is a revision
            assert c == preview, f"{c} closed, {preview} previewed, on {event}"


def _trade(core: CandleCore, symbol: str, time_ms: int, price: int, size: int, tid: str) -> None:
    core.trades(symbol, [time_ms], [price], [size], [True], [tid])


def test_every_candle_of_a_quiet_boundary_is_rendered_ahead_and_a_late_trade_is_not_lost() -> None:
    """Three symbols (one trading, one quiet, one that gets a late trade) over a minute
    boundary: every 1s and 1m candle the deadline closes was previewed, except the one the
    late trade changed, which closes with that trade in it."""
    config = _config("1s,1m", True, True)
    core = CandleCore(config)
    minute = START_MS - START_MS % 60_000 + 60_000  # a minute boundary
    one = 10**13  # scaled 1 (common.decimals)
    symbols = ("AAA", "BBB", "CCC")
    for k, symbol in enumerate(symbols):  # the first, partial candles: in the minute before
        _trade(core, symbol, minute - 61_500, (100 + k) * one, one, f"{symbol}-0")
    for k, symbol in enumerate(symbols):
        _trade(core, symbol, minute - 30_200, (107 + k) * one, 2 * one, f"{symbol}-1")
    _trade(core, "AAA", minute - 400, 105 * one, 3 * one, "AAA-2")
    core.clock(minute + 20)  # the boundary has passed, its deadline (minute + 80) not yet
    core.take()
    previews = {_key(p): p for p in core.previews()}
    # Each symbol closes its 1s candle [minute - 1000, minute) and its 1m candle at the deadline.
    assert set(previews) == {
        (s, k, open_ms)
        for s in symbols
        for k, open_ms in ((0, minute - 1000), (1, minute - 60_000))
    }
    aaa_minute = previews["AAA", 1, minute - 60_000]
    # 1m of AAA: the trades at -30.2 s (107) and -0.4 s (105; the one at -61.5 s is the minute
    # before); Bybit's open is the previous close, 100.
    assert (aaa_minute.open, aaa_minute.high, aaa_minute.low, aaa_minute.close) == (
        100 * one, 107 * one, 100 * one, 105 * one,
    )  # fmt: skip
    assert (aaa_minute.volume, aaa_minute.trade_count) == (5 * one, 2)
    _trade(core, "CCC", minute - 10, 90 * one, one, "CCC-late")  # late, inside the waiter
    core.clock(minute + LATENCY_MS)
    closed = {_key(c): c for c in core.take() if c.closed}
    assert set(closed) == set(previews)
    changed = {key for key in closed if closed[key] != previews[key]}
    assert changed == {("CCC", 0, minute - 1000), ("CCC", 1, minute - 60_000)}
    assert closed["CCC", 0, minute - 1000].low == 90 * one
    assert closed["CCC", 1, minute - 60_000].trade_count == 2  # -30.2 s and the late one


def test_the_writer_hands_out_what_it_rendered_ahead_and_renders_the_rest() -> None:
    config = _config("1s,1m", True, True)
    writer = CandleWriter(config.intervals, "linear")
    fresh = CandleWriter(config.intervals, "linear")
    one = 10**13
    ahead = CoreCandle("AAA", 0, START_MS, one, 2 * one, one, 2 * one, one, 2 * one**2, one, 3)
    writer.prepare([ahead])
    assert writer._ready[ahead] == fresh.encode(ahead)
    same = CoreCandle("AAA", 0, START_MS, one, 2 * one, one, 2 * one, one, 2 * one**2, one, 3)
    other = CoreCandle("AAA", 0, START_MS, one, 2 * one, one, 2 * one, one, 2 * one**2, one, 4)
    assert writer.encode(same) == fresh.encode(ahead)
    assert writer.encode(other) == fresh.encode(other) != fresh.encode(ahead)
    assert b'"trade_count":4' in writer.encode(other)
