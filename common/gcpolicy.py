"""Full garbage collections at a moment of our choosing, away from candle boundaries.

CPython's full (generation 2) collection stops the process for as long as it takes to walk every
object it tracks: 18-46 ms measured in the aggregator at 500 symbols, at whatever moment the
allocation counters say, so one that lands on a boundary delays every candle closing there
(docs/benchmarks.md "Where a candle's time goes"). So every process (common.lifecycle):

- freezes what start-up made once it runs (`gc.freeze`: modules, classes, settings, about
  50,000 objects that are never garbage), so that no collection walks them again;
- leaves the cheap young-generation collections to CPython, but turns its automatic full ones off;
- runs the full one itself every FULL_EVERY_S, `quiet_ms` past a whole second of the wall clock:
  candles close at whole seconds plus the waiter latency, so `quiet_offset_ms` puts it halfway
  between two of those (with 1 s or longer intervals nothing is due then).

Cyclic garbage that reached the old generation waits for the next full collection (at most
FULL_EVERY_S); young cycles are collected as before.
"""

from __future__ import annotations

import asyncio
import gc
import time

FREEZE_AFTER_S = 5.0
"""Start-up is over by then (settings, connections, the first reads)."""
FULL_EVERY_S = 30.0
_NEVER = 1 << 30
"""A generation-2 threshold the count of young collections never reaches."""


def quiet_offset_ms(waiter_ms: int) -> int:
    """The moment of each second farthest from the candle closings at whole seconds + waiter."""
    return (waiter_ms + 500) % 1000


def until_quiet_s(now_s: float, quiet_ms: int) -> float:
    """Seconds from `now_s` (wall clock) to the next moment `quiet_ms` past a whole second."""
    into_ms = (now_s * 1000 - quiet_ms) % 1000
    return (1000 - into_ms) / 1000


async def collect_when_quiet(stop: asyncio.Event, quiet_ms: int) -> None:
    """Until `stop`: the policy above. Restores CPython's automatic full collections on exit."""
    young, middle, old = gc.get_threshold()
    try:
        if await _wait(stop, FREEZE_AFTER_S, quiet_ms):
            return
        gc.collect()  # start-up's garbage first: freeze only what lives on
        gc.freeze()
        gc.set_threshold(young, middle, _NEVER)
        while not await _wait(stop, FULL_EVERY_S, quiet_ms):
            gc.collect()
    finally:
        gc.set_threshold(young, middle, old)


async def _wait(stop: asyncio.Event, at_least_s: float, quiet_ms: int) -> bool:
    """Sleep `at_least_s`, then to the next quiet moment; True when stopped meanwhile."""
    delay_s = at_least_s + until_quiet_s(time.time() + at_least_s, quiet_ms)
    try:
        await asyncio.wait_for(stop.wait(), delay_s)
    except TimeoutError:
        return False
    return True
