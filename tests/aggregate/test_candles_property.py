"""The fast core against the simple reference, on random streams with every kind of mess."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregate.candles import CoreConfig
from common.intervals import parse_intervals
from tests.aggregate.reference import Reference
from tests.aggregate.streams import Event, run_core, run_reference, streams

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
START_MS = 1_786_310_000_000  # 2026-08-09, a Sunday evening: 1w boundaries come soon


@dataclass(frozen=True)
class Case:
    intervals: str
    latency_ms: int
    window_ms: int
    step_ms: int  # the largest step between trades
    late_ms: int  # how far back late trades reach (x2)


CASES = [
    Case("1s,5s,1m", 80, 3_000, 1_500, 2_000),
    Case("1s,1m,5m,15m,1h,4h", 80, 10_000, 3_000, 8_000),
    Case("7s,10s", 80, 5_000, 2_000, 4_000),  # a hidden 1s base grid
    Case("500ms,1s,3s", 0, 1_000, 400, 800),  # waiter mode off
    Case("1h,1d,1w,1M", HOUR_MS, 2 * DAY_MS, 5 * HOUR_MS, DAY_MS),
    Case("1d,1w,1M", HOUR_MS, 3 * DAY_MS, 2 * DAY_MS, 2 * DAY_MS),
]


def check(case: Case, bybit_open: bool, emit_empty: bool, events: list[Event]) -> None:
    intervals = parse_intervals(case.intervals)
    config = CoreConfig(
        intervals=intervals,
        waiter_latency_ms=case.latency_ms,
        revision_window_ms=case.window_ms,
        open_at_previous_close=bybit_open,
        emit_empty=emit_empty,
    )
    reference = Reference(intervals, case.latency_ms, case.window_ms, bybit_open, emit_empty)
    expected = run_reference(reference, events)
    got = run_core(config, events)
    differing = [
        f"{key}: core {got.get(key)} != reference {expected.get(key)}"
        for key in sorted(set(got) | set(expected))
        if got.get(key) != expected.get(key)
    ]
    assert not differing, "\n".join([*differing[:5], *map(repr, events)])


@pytest.mark.parametrize("case", CASES, ids=[c.intervals for c in CASES])
@pytest.mark.parametrize("bybit_open", [True, False], ids=["prev_close", "first_trade"])
@pytest.mark.parametrize("emit_empty", [True, False], ids=["emit", "skip"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_core_equals_reference(
    case: Case, bybit_open: bool, emit_empty: bool, data: st.DataObject
) -> None:
    events = data.draw(streams(START_MS, case.step_ms, case.late_ms))
    check(case, bybit_open, emit_empty, events)
