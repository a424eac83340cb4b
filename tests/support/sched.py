"""Other processes' scheduling policy, every thread at once (what `chrt -a -p` reads and sets)."""

from __future__ import annotations

import os
import resource


def may_take_realtime(priority: int) -> bool:
    """Whether this user may put processes under SCHED_FIFO at `priority` (root, or an rtprio
    limit at least that high)."""
    return os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_RTPRIO)[0] >= priority


def _threads(pid: int) -> list[int]:
    return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]


def set_fifo(pid: int, priority: int) -> None:
    """Every thread of `pid` under SCHED_FIFO at `priority` (`chrt -a -f -p`)."""
    for tid in _threads(pid):
        os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))


def policies(pid: int) -> set[tuple[int, int]]:
    """(policy, priority) of every thread of `pid`, as the kernel has them."""
    return {(os.sched_getscheduler(t), os.sched_getparam(t).sched_priority) for t in _threads(pid)}
