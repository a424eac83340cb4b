from __future__ import annotations

from datetime import UTC, datetime

import pytest

from common.errors import ConfigError
from common.intervals import Calendar, Interval, parse_intervals


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp() * 1000)


@pytest.mark.parametrize(
    ("text", "length_ms", "label"),
    [
        ("500ms", 500, "500ms"),
        ("1s", 1_000, "1s"),
        ("15s", 15_000, "15s"),
        ("1m", 60_000, "1m"),
        ("7m", 420_000, "7m"),
        ("1h", 3_600_000, "1h"),
        ("4h", 14_400_000, "4h"),
        ("1d", 86_400_000, "1d"),
    ],
)
def test_fixed_intervals_parse(text: str, length_ms: int, label: str) -> None:
    interval = Interval.parse(text)
    assert (interval.ms, interval.calendar, interval.label) == (length_ms, Calendar.FIXED, label)


def test_fixed_floor_and_next_align_to_the_epoch() -> None:
    seven = Interval.parse("7m")
    t = ms(2026, 8, 9, 21, 27, 40) + 441
    assert seven.floor(t) == t - t % 420_000
    assert seven.next_open(seven.floor(t)) == seven.floor(t) + 420_000
    assert Interval.parse("1m").floor(t) == ms(2026, 8, 9, 21, 27)
    assert Interval.parse("1d").floor(t) == ms(2026, 8, 9)


def test_week_starts_monday_utc() -> None:
    week = Interval.parse("1w")
    sunday_late = ms(2026, 8, 9, 23, 59, 59)  # 2026-08-09 is a Sunday
    assert week.floor(sunday_late) == ms(2026, 8, 3)  # the Monday before
    assert week.floor(ms(2026, 8, 10)) == ms(2026, 8, 10)
    assert week.next_open(ms(2026, 8, 3)) == ms(2026, 8, 10)
    assert datetime.fromtimestamp(week.floor(0) / 1000, UTC).weekday() == 0


def test_month_is_the_calendar_month() -> None:
    month = Interval.parse("1M")
    assert month.floor(ms(2026, 2, 28, 23, 59)) == ms(2026, 2, 1)
    assert month.next_open(ms(2026, 2, 1)) == ms(2026, 3, 1)
    assert month.next_open(ms(2026, 12, 1)) == ms(2027, 1, 1)
    assert month.floor(ms(2024, 2, 29, 12)) == ms(2024, 2, 1)


@pytest.mark.parametrize(
    ("text", "code"),
    [("1m", "1"), ("60m", "60"), ("1h", "60"), ("4h", "240"), ("12h", "720"), ("1d", "D"),
     ("1w", "W"), ("1M", "M"), ("1s", None), ("7m", None)],
)  # fmt: skip
def test_bybit_codes(text: str, code: str | None) -> None:
    assert Interval.parse(text).bybit_code == code


def test_from_bybit_code_round_trips() -> None:
    for code in ["1", "3", "5", "15", "30", "60", "120", "240", "360", "720", "D", "W", "M"]:
        assert Interval.from_bybit_code(code).bybit_code == code
    assert Interval.from_bybit_code("60").label == "1h"


@pytest.mark.parametrize("text", ["", "1", "m", "0m", "2w", "3M", "1y", "1.5m", "-1s", "1 m"])
def test_bad_intervals_name_what_is_allowed(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        Interval.parse(text)
    assert (
        repr(text) in str(err.value)
        or "longer than zero" in str(err.value)
        or "only" in str(err.value)
    )


def test_list_is_sorted_and_rejects_repeats() -> None:
    assert [i.label for i in parse_intervals("1h, 1s,1m")] == ["1s", "1m", "1h"]
    with pytest.raises(ConfigError, match="'60m' repeats '1h'"):
        parse_intervals("1h,60m")
