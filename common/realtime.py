"""Real-time scheduling for a process on a candle's way (STREAMER_REALTIME_PRIORITY).

On a machine with few cores, a candle's way from a waiter deadline to a WebSocket client is a chain
of processes (ingest's clock entry, Redis, the aggregator, Redis again, publish), each woken by
the one before. Under the normal scheduler a woken process can wait milliseconds for a core behind
work that is in no hurry (ingest's next batch of trades, a load generator); under SCHED_FIFO it
takes a core at once. docs/benchmarks.md measures it; docs/deploy.md says where to use it.

The policy is set for the calling thread before the service starts; the threads it starts later
inherit it.
"""

from __future__ import annotations

import os

from common.errors import ConfigError

SETTING = "STREAMER_REALTIME_PRIORITY"


def take_priority(priority: int) -> None:
    """SCHED_FIFO at `priority` (1-99) for this process; 0 leaves the normal scheduler. Raises
    ConfigError when this platform or the kernel will not have it."""
    if priority == 0:
        return
    if not hasattr(os, "sched_setscheduler"):
        raise ConfigError(f"{SETTING}={priority}: this platform has no SCHED_FIFO (Linux has); "
                          "0 turns it off")  # fmt: skip
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except PermissionError as exc:
        raise ConfigError(
            f"{SETTING}={priority}: the kernel refused real-time priority ({exc.strerror}); run"
            " as root, give the container CAP_SYS_NICE (compose: cap_add: [SYS_NICE]), or allow"
            f" it with `ulimit -r {priority}`; 0 turns it off"
        ) from None
