"""Reconnect pacing: a capped, jittered exponential backoff, reset on success."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator


def backoff(
    base_s: float = 0.5,
    cap_s: float = 30.0,
    factor: float = 2.0,
    jitter: float = 0.5,
    rand: Callable[[], float] = random.random,
) -> Iterator[float]:
    """Delays base, base*factor, ... up to cap, each scaled by a random [1 - jitter, 1] share.

    Jitter keeps many replicas that lost Redis or Bybit at once from reconnecting in lockstep.
    Make a new generator after a success to start again from `base_s`.
    """
    delay = base_s
    while True:
        yield delay * (1.0 - jitter * rand())
        delay = min(cap_s, delay * factor)
