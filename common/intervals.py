"""Candle intervals: parsing, UTC boundaries and Bybit's kline codes.

Every interval aligns to UTC epoch boundaries of the trade time. Weeks start on Monday 00:00 UTC
(as Bybit's `W` klines do; the epoch itself was a Thursday) and months are calendar months.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from functools import total_ordering

from common.errors import ConfigError

_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_WEEK_MS = 7 * 86_400_000
_MONDAY_OFFSET_MS = 4 * 86_400_000  # 1970-01-01 was a Thursday; the first Monday is 4 days later
_MONTH_NOMINAL_MS = 30 * 86_400_000
_MAX_FIXED_MS = 365 * 86_400_000
_PATTERN = re.compile(r"^(\d{1,12})(ms|s|m|h|d|w|M)$")

ALLOWED_TEXT = (
    "<n>ms, <n>s, <n>m, <n>h, <n>d up to 365d, 1w or 1M (e.g. 500ms,1s,15s,1m,7m,1h,4h,1d,7d,1w,1M)"
)


class Calendar(Enum):
    FIXED = "fixed"
    WEEK = "week"
    MONTH = "month"


# Intervals of equal nominal length are ordered fixed first (7d before 1w, 30d before 1M).
_CALENDAR_RANK = {Calendar.FIXED: 0, Calendar.WEEK: 1, Calendar.MONTH: 2}


# Bybit's kline codes, keyed by (calendar, nominal length in ms).
_BYBIT_CODES: dict[tuple[Calendar, int], str] = {
    (Calendar.FIXED, 60_000): "1",
    (Calendar.FIXED, 180_000): "3",
    (Calendar.FIXED, 300_000): "5",
    (Calendar.FIXED, 900_000): "15",
    (Calendar.FIXED, 1_800_000): "30",
    (Calendar.FIXED, 3_600_000): "60",
    (Calendar.FIXED, 7_200_000): "120",
    (Calendar.FIXED, 14_400_000): "240",
    (Calendar.FIXED, 21_600_000): "360",
    (Calendar.FIXED, 43_200_000): "720",
    (Calendar.FIXED, 86_400_000): "D",
    (Calendar.WEEK, _WEEK_MS): "W",
    (Calendar.MONTH, _MONTH_NOMINAL_MS): "M",
}
BYBIT_INTERVALS_TEXT = "1m 3m 5m 15m 30m 1h 2h 4h 6h 12h 1d 1w 1M"


@total_ordering
@dataclass(frozen=True, slots=True)
class Interval:
    """A candle length. `ms` is the exact length for fixed intervals, the nominal one otherwise.

    `label` is the canonical spelling (`60m` and `3600s` are `1h`), so two spellings of one
    interval are equal everywhere: in checkpoints, stream labels and comparisons. Ordered by
    length, then fixed before calendar: `7d` and `1w` (or `30d` and `1M`) are different
    intervals of one nominal length (a 7-day candle aligned to the epoch is not Monday's week).
    """

    ms: int
    calendar: Calendar
    label: str

    def _key(self) -> tuple[int, int, str]:
        return (self.ms, _CALENDAR_RANK[self.calendar], self.label)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Interval):
            return NotImplemented
        return self._key() < other._key()

    @classmethod
    def parse(cls, text: str) -> Interval:
        match = _PATTERN.match(text.strip())
        if match is None:
            raise ConfigError(f"interval {text!r} is not valid; allowed: {ALLOWED_TEXT}")
        count, unit = int(match.group(1)), match.group(2)
        if count <= 0:
            raise ConfigError(f"interval {text!r} must be longer than zero")
        if unit == "w":
            if count != 1:
                raise ConfigError(f"interval {text!r}: only 1w is supported (Monday 00:00 UTC)")
            return cls(_WEEK_MS, Calendar.WEEK, "1w")
        if unit == "M":
            if count != 1:
                raise ConfigError(f"interval {text!r}: only 1M (calendar month) is supported")
            return cls(_MONTH_NOMINAL_MS, Calendar.MONTH, "1M")
        ms = count * _UNIT_MS[unit]
        if ms > _MAX_FIXED_MS:
            raise ConfigError(f"interval {text!r} is longer than 365d; allowed: {ALLOWED_TEXT}")
        return cls(ms, Calendar.FIXED, _canonical_label(Calendar.FIXED, ms))

    @classmethod
    def from_bybit_code(cls, code: str) -> Interval:
        for (calendar, ms), known in _BYBIT_CODES.items():
            if known == code:
                return cls(ms, calendar, _canonical_label(calendar, ms))
        raise ConfigError(f"unknown Bybit interval code {code!r}")

    @property
    def bybit_code(self) -> str | None:
        """Bybit's kline code for this interval, or None when Bybit has no such kline."""
        return _BYBIT_CODES.get((self.calendar, self.ms))

    def floor(self, time_ms: int) -> int:
        """Open time of the candle that holds `time_ms`."""
        if self.calendar is Calendar.FIXED:
            return time_ms - time_ms % self.ms
        if self.calendar is Calendar.WEEK:
            return time_ms - (time_ms - _MONDAY_OFFSET_MS) % _WEEK_MS
        moment = datetime.fromtimestamp(time_ms / 1000, UTC)
        return _month_start_ms(moment.year, moment.month)

    def next_open(self, open_ms: int) -> int:
        """Open time of the candle after the one opening at `open_ms` (its exclusive end)."""
        if self.calendar is not Calendar.MONTH:
            return open_ms + self.ms
        moment = datetime.fromtimestamp(open_ms / 1000, UTC)
        year, month = (
            (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
        )
        return _month_start_ms(year, month)

    def __str__(self) -> str:
        return self.label


def _month_start_ms(year: int, month: int) -> int:
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp()) * 1000


def _canonical_label(calendar: Calendar, ms: int) -> str:
    if calendar is Calendar.WEEK:
        return "1w"
    if calendar is Calendar.MONTH:
        return "1M"
    for unit in ("d", "h", "m", "s"):
        if ms % _UNIT_MS[unit] == 0:
            return f"{ms // _UNIT_MS[unit]}{unit}"
    return f"{ms}ms"


def canonical_label(text: str) -> str:
    """The canonical spelling of an interval label (`60m` -> `1h`); unknown text as it is."""
    try:
        return Interval.parse(text).label
    except ConfigError:
        return text


def parse_intervals(text: str) -> tuple[Interval, ...]:
    """Parse a comma-separated list, sorted shortest first; one interval twice (however
    spelled, e.g. `60m,1h`) is an error naming both spellings."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise ConfigError(f"no interval given; allowed: {ALLOWED_TEXT}")
    parsed = [Interval.parse(part) for part in parts]
    seen: dict[tuple[Calendar, int], str] = {}
    for part, interval in zip(parts, parsed, strict=True):
        key = (interval.calendar, interval.ms)
        if key in seen:
            raise ConfigError(f"interval {part!r} repeats {seen[key]!r}")
        seen[key] = part
    return tuple(sorted(parsed))
