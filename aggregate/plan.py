"""Which levels the core keeps, and which feeds which.

Trades go into the *base grid* only: the greatest common divisor of the intervals (one day stands
for 1w and 1M, whose boundaries are day boundaries). When a base candle closes it is folded into
the levels it feeds; each closed level candle is folded into the next coarser level that nests it
(every boundary of the coarser one is a boundary of the finer one). OHLCV statistics merge
exactly, so the candles are the same as from adding every trade to every level, for a fraction of
the work. The base grid is usually the smallest interval itself; otherwise it is a hidden level.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd

from common.intervals import Calendar, Interval

DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class LevelPlan:
    interval: Interval
    visible: int  # index into the configured intervals; -1 for a hidden base grid
    feeder: int  # index of the level whose closed candles fold into this one; -1 for the base
    fixed_ms: int  # the length of a fixed interval; 0 for 1w/1M

    def floor(self, time_ms: int) -> int:
        if self.fixed_ms:
            return time_ms - time_ms % self.fixed_ms
        return self.interval.floor(time_ms)

    def next_open(self, open_ms: int) -> int:
        if self.fixed_ms:
            return open_ms + self.fixed_ms
        return self.interval.next_open(open_ms)

    @property
    def max_len_ms(self) -> int:
        return self.fixed_ms or 31 * DAY_MS


def _grid_ms(interval: Interval) -> int:
    return interval.ms if interval.calendar is Calendar.FIXED else DAY_MS


def _nests(finer: LevelPlan, coarser: Interval) -> bool:
    """Every boundary of `coarser` is a boundary of `finer`."""
    if not finer.fixed_ms:
        return False
    return _grid_ms(coarser) % finer.fixed_ms == 0


def plan_levels(intervals: tuple[Interval, ...]) -> list[LevelPlan]:
    """Level 0 is the base grid; the configured intervals follow, shortest first."""
    base_ms = 0
    for interval in intervals:
        base_ms = gcd(base_ms, _grid_ms(interval))
    ordered = sorted(enumerate(intervals), key=lambda pair: pair[1])
    levels: list[LevelPlan] = []
    first_index, first = ordered[0]
    if first.calendar is Calendar.FIXED and first.ms == base_ms:
        levels.append(LevelPlan(first, first_index, -1, base_ms))
        ordered = ordered[1:]
    else:
        hidden = Interval(base_ms, Calendar.FIXED, f"{base_ms}ms")
        levels.append(LevelPlan(hidden, -1, -1, base_ms))
    for index, interval in ordered:
        feeder = max(k for k, level in enumerate(levels) if _nests(level, interval))
        fixed_ms = interval.ms if interval.calendar is Calendar.FIXED else 0
        levels.append(LevelPlan(interval, index, feeder, fixed_ms))
    return levels
