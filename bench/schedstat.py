"""How long each process ran, and waited for a core, around each waiter deadline (Linux).

`/proc/<pid>/task/<tid>/schedstat` holds each thread's time on a CPU and its time runnable but
waiting in a run queue (ns). Read 2 ms before each deadline (`due`: a whole second plus the waiter
latency, where the 1s candles close) and 14 ms after, the differences say what a boundary cost
each process in CPU and how long it waited for a core the others held: on the 2-core machine
each hop of a candle's way (ingest's clock entry, the aggregator, Redis, publish, the client) is a
wake-up that may find both cores taken (docs/benchmarks.md "Where a candle's time goes").
The CPU time of a thread running at the moment of a reading counts up to its last scheduler tick
(4 ms at HZ 250): one window is exact to a tick at each end, and the bench reports medians.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

BEFORE_S, AFTER_S = 0.002, 0.014


@dataclass
class Window:
    """One deadline: the time between the two readings, and per process (CPU, wait) in ms."""

    due_ms: int
    span_ms: float
    spent: dict[str, tuple[float, float]] = field(default_factory=dict)


def read(pid: int) -> tuple[int, int] | None:
    """A process's CPU time and run-queue wait so far (ns, all its threads); None once gone."""
    run = wait = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            fields = (task / "schedstat").read_text().split()
            run += int(fields[0])
            wait += int(fields[1])
    except (OSError, IndexError, ValueError):
        return None
    return run, wait


class Sampler:
    """Samples `pids` around every deadline while in its `with` block; `windows` holds them."""

    def __init__(self, pids: dict[str, int], waiter_ms: int) -> None:
        self._pids = pids
        self._offset_s = (waiter_ms % 1000) / 1000
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="schedstat", daemon=True)
        self.windows: list[Window] = []

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            now = time.time()
            due = math.floor(now) + self._offset_s
            if due - BEFORE_S < now:
                due += 1
            if self._stop.wait(due - BEFORE_S - time.time()):
                return
            before, started = self._read_all(), time.monotonic()
            if self._stop.wait(max(0.0, due + AFTER_S - time.time())):
                return
            after, span_s = self._read_all(), time.monotonic() - started
            window = Window(round(due * 1000), span_s * 1000)
            for name, was in before.items():
                now_at = after.get(name)
                if was is not None and now_at is not None:
                    cpu, wait = (now_at[0] - was[0]) / 1e6, (now_at[1] - was[1]) / 1e6
                    window.spent[name] = (cpu, wait)
            self.windows.append(window)

    def _read_all(self) -> dict[str, tuple[int, int] | None]:
        return {name: read(pid) for name, pid in self._pids.items()}


def medians(windows: list[Window]) -> dict[str, tuple[float, float]]:
    """Per process, the median CPU and the median wait over the windows (ms)."""
    names = sorted({name for w in windows for name in w.spent})
    out = {}
    for name in names:
        spent = [w.spent[name] for w in windows if name in w.spent]
        out[name] = (statistics.median(s[0] for s in spent), statistics.median(s[1] for s in spent))
    return out
