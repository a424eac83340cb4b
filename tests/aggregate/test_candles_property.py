"""The fast core against the simple reference, on random streams with every kind of mess; and
an interval's candles do not depend on which other intervals are configured (issue 14)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregate.candles import CoreConfig
from common.intervals import parse_intervals
from tests.aggregate.reference import Reference
from tests.aggregate.streams import Emitted, Event, run_core, run_reference, streams

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
START_MS = 1_786_310_000_000  # 2026-08-09, a Sunday evening: 1w boundaries come soon
YEAR_END_MS = 1_798_416_000_000  # 2026-12-28, a Monday: its week crosses the year's end


@dataclass(frozen=True)
class Case:
    intervals: str
    latency_ms: int
    window_ms: int
    step_ms: int  # the largest step between trades
    late_ms: int  # how far back late trades reach (x2)
    start_ms: int = START_MS


CASES = [
    Case("1s,5s,1m", 80, 3_000, 1_500, 2_000),
    Case("1s,1m,5m,15m,1h,4h", 80, 10_000, 3_000, 8_000),
    Case("7s,10s", 80, 5_000, 2_000, 4_000),  # a hidden 1s base grid
    Case("500ms,1s,3s", 0, 1_000, 400, 800),  # waiter mode off
    Case("333ms,1s", 80, 1_000, 400, 900),  # a hidden 1 ms base grid
    Case("1h,1d,1w,1M", HOUR_MS, 2 * DAY_MS, 5 * HOUR_MS, DAY_MS),
    Case("1d,1w,1M", HOUR_MS, 3 * DAY_MS, 2 * DAY_MS, 2 * DAY_MS),
    Case("1d,1w,1M", HOUR_MS, 3 * DAY_MS, 2 * DAY_MS, 2 * DAY_MS, YEAR_END_MS - 3 * DAY_MS),
]


def _ms(year: int, month: int, day: int) -> int:
    return int(datetime(year, month, day, tzinfo=UTC).timestamp()) * 1000


# Long streams (hundreds of messages, about 50 days at 3 days a step): 1M candles of 28 (Feb 2027),
# 29 (Feb 2028), 30 (Apr 2027) and 31 days (Mar 2027) whole, weeks across month ends, and a week
# across the year's end (2026-12-28).
LONG_CASES = [
    *(
        Case("1w,1M", HOUR_MS, 2 * DAY_MS, 3 * DAY_MS, 2 * DAY_MS, _ms(*start))
        for start in ((2027, 1, 25), (2028, 1, 25), (2027, 3, 25), (2027, 2, 25))
    ),
    Case("1h,1w,1M", HOUR_MS, DAY_MS, 20 * HOUR_MS, DAY_MS, _ms(2026, 12, 20)),
    Case("1s,1m,5m", 80, 5_000, 800, 4_000),
]


def config_of(case: Case, bybit_open: bool, emit_empty: bool) -> CoreConfig:
    return CoreConfig(
        intervals=parse_intervals(case.intervals),
        waiter_latency_ms=case.latency_ms,
        revision_window_ms=case.window_ms,
        open_at_previous_close=bybit_open,
        emit_empty=emit_empty,
    )


def differences(got: Emitted, expected: Emitted) -> list[str]:
    return [
        f"{key}: core {got.get(key)} != expected {expected.get(key)}"
        for key in sorted(set(got) | set(expected))
        if got.get(key) != expected.get(key)
    ]


def check(
    case: Case, bybit_open: bool, emit_empty: bool, events: list[Event], restart_at: int = -1
) -> None:
    config = config_of(case, bybit_open, emit_empty)
    labels = tuple(interval.label for interval in config.intervals)
    reference = Reference(labels, case.latency_ms, case.window_ms, bybit_open, emit_empty)
    expected = run_reference(reference, events)
    got = run_core(config, events, restart_at)
    differing = differences(got, expected)
    assert not differing, "\n".join([*differing[:5], *map(repr, events)])


def _streams(case: Case, messages: tuple[int, int] = (1, 30)) -> st.SearchStrategy[list[Event]]:
    return streams(case.start_ms, case.step_ms, case.late_ms, case.window_ms, messages)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.intervals}@{c.start_ms}" for c in CASES])
@pytest.mark.parametrize("bybit_open", [True, False], ids=["prev_close", "first_trade"])
@pytest.mark.parametrize("emit_empty", [True, False], ids=["emit", "skip"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_core_equals_reference(
    case: Case, bybit_open: bool, emit_empty: bool, data: st.DataObject
) -> None:
    events = data.draw(_streams(case))
    check(case, bybit_open, emit_empty, events)


@pytest.mark.parametrize(
    "case", LONG_CASES, ids=[f"{c.intervals}@{c.start_ms}" for c in LONG_CASES]
)
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_long_streams_with_a_restart_in_the_middle(case: Case, data: st.DataObject) -> None:
    """Hundreds of messages; a checkpoint taken and restored somewhere in the middle gives the
    same candles as a run without it (and as the reference)."""
    events = data.draw(_streams(case, (200, 400)))
    restart_at = data.draw(st.integers(1, len(events) - 1))
    emit_empty = data.draw(st.booleans())
    check(case, True, emit_empty, events, restart_at)
    config = config_of(case, True, emit_empty)
    assert run_core(config, events, restart_at) == run_core(config, events)


# Time scales for the metamorphic test, with the intervals it combines at each.
SCALES = [
    (Case("", 80, 1_000, 1_500, 8_000), ("333ms", "500ms", "1s", "5s", "7s", "10s", "15s", "1m")),
    (Case("", HOUR_MS, DAY_MS, 6 * HOUR_MS, 3 * DAY_MS), ("1h", "4h", "1d", "1w", "1M")),
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_an_interval_alone_equals_it_among_others(data: st.DataObject) -> None:
    """For the same trade stream, the candles of an interval are identical whether it is
    configured alone or together with any other intervals (issue 14: lateness is judged per
    candle, not on a common grid)."""
    scale, pool = data.draw(st.sampled_from(SCALES))
    alone = data.draw(st.sampled_from(pool))
    others = data.draw(st.sets(st.sampled_from(pool), min_size=1, max_size=4)) - {alone}
    bybit_open, emit_empty = data.draw(st.booleans()), data.draw(st.booleans())
    events = data.draw(_streams(scale, (10, 80)))
    case = Case(alone, scale.latency_ms, scale.window_ms, 0, 0)
    single = run_core(config_of(case, bybit_open, emit_empty), events)
    together_case = Case(",".join([alone, *sorted(others)]), *dataclasses.astuple(case)[1:])
    together = run_core(config_of(together_case, bybit_open, emit_empty), events)
    mine = {key: value for key, value in together.items() if key[1] == alone}
    differing = differences(mine, single)
    assert not differing, "\n".join([*differing[:5], *map(repr, events)])
