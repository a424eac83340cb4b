"""The candles a waiter deadline closes, known before the close (CandleCore.closes_at): the shard
writes them first and lets the core close them while Redis stores them, so they must be exactly
what the close then emits, in its order, whatever came in since the previews were made (late
trades, trades that close a candle early, gaps, new symbols, a deadline's clock entry arriving
late); otherwise closes_at must say it does not know (None)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregate.candles import CandleCore, CoreConfig
from common.intervals import parse_intervals
from tests.aggregate.streams import SYMBOLS, Clock, Event, Gap, Msg, feed_core, streams
from tests.aggregate.test_render_ahead import _config as render_config

LATENCY_MS = 80  # as test_render_ahead's config
START_MS = 1_786_310_037_000  # 3 s before a minute's end: streams cross minute boundaries
ONE = 10**13  # scaled 1 (common.decimals)


def _config(intervals: str, bybit_open: bool, emit_empty: bool, updates_ms: int = 0) -> CoreConfig:
    return replace(render_config(intervals, bybit_open, emit_empty), updates_ms=updates_ms)


def _with_deadlines(events: list[Event], lateness: list[int], late: list[int]) -> list[Event]:
    """After each message, a clock tick between the boundary after it and that boundary's
    deadline (where the shard previews), maybe a trade of another symbol that is late by then
    (`late`: its age in ms, 0 for none), then a tick at the deadline or some ms after it."""
    out: list[Event] = []
    for k, event in enumerate(events):
        out.append(event)
        if isinstance(event, Msg):
            last = max(trade[0] for trade in event.trades)
            boundary = last - last % 1000 + 1000
            out.append(Clock(boundary + LATENCY_MS // 2))
            age = late[k % len(late)]
            if age:
                symbol = SYMBOLS[k % len(SYMBOLS)]
                out.append(Msg(symbol, ((boundary - age, "100.5", "0.25", k % 2 == 0, f"L{k}"),)))
            out.append(Clock(boundary + LATENCY_MS + lateness[k % len(lateness)]))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_what_closes_at_says_is_what_the_clock_then_closes(data: st.DataObject) -> None:
    intervals = data.draw(st.sampled_from(["1s,1m", "1s,5s,1m,5m", "1s,1m,5m,15m,1h,4h", "1s,3s"]))
    bybit_open, emit_empty = data.draw(st.booleans()), data.draw(st.booleans())
    config = _config(intervals, bybit_open, emit_empty)
    lateness = data.draw(st.lists(st.sampled_from([0, 0, 1, 19, 700, 1_500]), min_size=1))
    late = data.draw(st.lists(st.sampled_from([0, 5, 300, 1_200, 70_000]), min_size=1))
    stream = data.draw(streams(START_MS, 700, 2_000, 5_000, (5, 40)))
    events = _with_deadlines(stream, lateness, late)
    core = CandleCore(config)
    for event in events:
        if data.draw(st.booleans()):
            core.previews()  # the shard previews after most of its steps
        ahead = core.closes_at(event.time_ms) if isinstance(event, Clock) else None
        feed_core(core, event)
        closed = core.take()
        if ahead is not None:
            assert closed == ahead, f"on {event}"


def _trade(core: CandleCore, symbol: str, time_ms: int, price: int, tid: str) -> None:
    core.trades(symbol, [time_ms], [price * ONE], [ONE], [True], [tid])


def _minute_core(config: CoreConfig) -> tuple[CandleCore, int]:
    """Three symbols past their first (partial) candles, at a minute boundary's waiter."""
    core = CandleCore(config)
    minute = START_MS - START_MS % 60_000 + 60_000
    for k, symbol in enumerate(("AAA", "BBB", "CCC")):
        _trade(core, symbol, minute - 61_500, 100 + k, f"{symbol}-0")
        _trade(core, symbol, minute - 30_200, 107 + k, f"{symbol}-1")
    _trade(core, "AAA", minute - 400, 105, "AAA-2")
    core.clock(minute + 20)  # the boundary has passed, its deadline (minute + 80) not yet
    core.take()
    return core, minute


def test_a_quiet_deadline_is_known_ahead_from_the_previews_and_a_late_trade_counts() -> None:
    core, minute = _minute_core(_config("1s,1m", True, True))
    assert core.closes_at(minute + LATENCY_MS - 1) is None  # not due yet
    core.previews()
    _trade(core, "CCC", minute - 10, 90, "CCC-late")  # late, inside the waiter
    ahead = core.closes_at(minute + LATENCY_MS)
    assert ahead is not None
    # Name order, finest level first: each symbol's 1s candle [minute - 1 s, minute), then 1m.
    assert [(c.symbol, c.interval, c.open_ms) for c in ahead] == [
        (s, k, open_ms) for s in ("AAA", "BBB", "CCC") for k, open_ms in
        ((0, minute - 1000), (1, minute - 60_000))
    ]  # fmt: skip
    ccc_minute = ahead[5]
    # The late trade (90) is in CCC's minute: its trades at -30.2 s (109) and -10 ms (90);
    # Bybit's open is the previous close, 102 (its trade at -61.5 s).
    assert (ccc_minute.open, ccc_minute.high, ccc_minute.low, ccc_minute.close) == (
        102 * ONE, 109 * ONE, 90 * ONE, 90 * ONE,
    )  # fmt: skip
    assert ccc_minute.trade_count == 2
    core.clock(minute + LATENCY_MS)
    assert core.take() == ahead


def test_a_symbol_that_traded_past_its_end_closed_early_and_is_not_in_the_deadline() -> None:
    core, minute = _minute_core(_config("1s,1m", True, True))
    core.previews()
    _trade(core, "BBB", minute + 30, 111, "BBB-next")  # proves BBB's candles complete: closed
    assert {c.symbol for c in core.take()} == {"BBB"}
    ahead = core.closes_at(minute + LATENCY_MS)
    assert ahead is not None and {c.symbol for c in ahead} == {"AAA", "CCC"}
    core.clock(minute + LATENCY_MS)
    assert core.take() == ahead


def test_a_gap_or_a_second_deadline_are_left_to_the_close() -> None:
    core, minute = _minute_core(_config("1s,1m", True, True))
    core.previews()
    core.gap(["AAA"], minute - 500, minute - 450)  # AAA's candles close flagged: not previewed
    assert core.closes_at(minute + LATENCY_MS) is None

    core, minute = _minute_core(_config("1s,1m", True, True))
    core.previews()
    # A clock entry 1.5 s late closes the next second's candles as well (two deadlines).
    assert core.closes_at(minute + 1_500 + LATENCY_MS) is None
    core.clock(minute + 1_500 + LATENCY_MS)
    assert len(core.take()) == 9  # 3 × (1s, 1m, and the next 1s)


def test_nothing_is_known_ahead_with_in_progress_updates_or_without_the_waiter() -> None:
    core, minute = _minute_core(_config("1s,1m", True, True, updates_ms=500))
    core.previews()
    assert core.closes_at(minute + LATENCY_MS) is None
    config = CoreConfig(parse_intervals("1s,1m"), 0, 5_000, True, True)
    core = CandleCore(config)
    _trade(core, "AAA", START_MS, 100, "a")
    _trade(core, "AAA", START_MS + 1_000, 101, "b")
    assert core.closes_at(START_MS + 2_000) is None


def test_a_deadline_clock_entry_a_little_late_still_closes_the_same_candles() -> None:
    core, minute = _minute_core(_config("1s,1m,5m", False, True))
    core.previews()
    ahead = core.closes_at(minute + LATENCY_MS + 19)
    assert ahead is not None and len(ahead) == 6
    core.clock(minute + LATENCY_MS + 19)
    assert core.take() == ahead


def test_gap_entries_in_a_stream_drop_every_kept_preview() -> None:
    """A kept preview of a symbol the gap names would miss its gap flag."""
    core, minute = _minute_core(_config("1s,1m", True, True))
    core.previews()
    feed_core(core, Gap(("BBB",), minute - 100, minute - 90))
    assert core.closes_at(minute + LATENCY_MS) is None
    core.clock(minute + LATENCY_MS)
    assert any(c.gap for c in core.take() if c.symbol == "BBB")


def test_a_first_partial_candle_is_known_ahead_as_not_shown() -> None:
    """A symbol's first candles are partial (begun before its first trade) and not shown, but
    their trades fold into the next level: the deadline is known ahead all the same, without
    them. NEW's first trade 300 ms before the minute: its 1s and 1m candles close partial; at
    the next minute its 1m candle, which holds that trade, is shown."""
    core, minute = _minute_core(_config("1s,1m", True, True))
    _trade(core, "NEW", minute - 300, 50, "NEW-0")
    core.previews()
    ahead = core.closes_at(minute + LATENCY_MS)
    assert ahead is not None
    assert [(c.symbol, c.interval) for c in ahead] == [
        (s, k) for s in ("AAA", "BBB", "CCC") for k in (0, 1)
    ]
    core.clock(minute + LATENCY_MS)
    assert core.take() == ahead
    # NEW trades again in the next minute's last second; that minute's candles show it.
    _trade(core, "NEW", minute + 59_500, 52, "NEW-1")
    core.clock(minute + 60_000 + LATENCY_MS // 2)
    core.take()
    core.previews()
    ahead = core.closes_at(minute + 60_000 + LATENCY_MS)
    assert ahead is not None
    new_minute = [c for c in ahead if (c.symbol, c.interval) == ("NEW", 1)]
    # Bybit's open: the previous close, 50 (the partial candle's); then 52.
    assert [(c.open, c.high, c.low, c.close, c.trade_count) for c in new_minute] == [
        (50 * ONE, 52 * ONE, 50 * ONE, 52 * ONE, 1)
    ]
    core.clock(minute + 60_000 + LATENCY_MS)
    assert core.take() == ahead
