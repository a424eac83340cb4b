"""Polling with a deadline: the only way tests wait for things.

A check inside a loop binds the loop's values as default arguments (`lambda n=n: ...`, as ruff's
B023 asks); mypy cannot infer such a lambda's type, so those calls carry
`# type: ignore[misc]  # default-bound lambda`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

T = TypeVar("T")


def wait_until(
    check: Callable[[], T | Literal[False] | None], timeout_s: float = 10.0, what: str = "condition"
) -> T:
    """Call `check` until it returns something truthy; fail with `what` after the deadline.

    Returns that: typed without the None or False that meant "not yet"."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.005)


async def async_wait_until(
    check: Callable[[], Awaitable[T | Literal[False] | None]],
    timeout_s: float = 10.0,
    what: str = "condition",
) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.005)
