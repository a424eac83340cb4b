from __future__ import annotations

import asyncio
import time

from common.lifecycle import sleep_or_stop


async def test_sleep_or_stop_sleeps_the_delay_when_not_stopped() -> None:
    stop = asyncio.Event()
    started = time.monotonic()
    assert await sleep_or_stop(stop, 0.05) is False
    assert time.monotonic() - started >= 0.04  # the delay, give or take the loop's clock


async def test_sleep_or_stop_returns_once_stop_is_set() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    started = time.monotonic()
    assert await sleep_or_stop(stop, 60.0) is True
    assert time.monotonic() - started < 30.0  # far below the 60 s asked for


async def test_sleep_or_stop_does_not_sleep_when_already_stopped() -> None:
    stop = asyncio.Event()
    stop.set()
    started = time.monotonic()
    assert await sleep_or_stop(stop, 60.0) is True
    assert time.monotonic() - started < 30.0
