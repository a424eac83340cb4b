"""bench.schedstat against real processes: one that spins, one that sleeps."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from bench.schedstat import Sampler, medians, read
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def spinner_and_sleeper() -> Iterator[tuple[int, int]]:
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    # The sleeper says when its interpreter has started: a window sampled during its start-up
    # counted the start-up's CPU (1.5 ms once) as the sleeper's.
    sleep = subprocess.Popen(
        [sys.executable, "-c", "import time; print('sleeping', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE,
    )
    assert sleep.stdout is not None and sleep.stdout.readline() == b"sleeping\n"
    try:
        yield spin.pid, sleep.pid
    finally:
        for proc in (spin, sleep):
            proc.kill()
            proc.wait()


def test_a_process_that_spins_runs_or_waits_the_whole_window_one_that_sleeps_neither(
    spinner_and_sleeper: tuple[int, int],
) -> None:
    """A process that never blocks is on a CPU or in a run queue the whole time between the two
    readings: its CPU time plus its wait is the window's span, to the kernel's tick (the CPU time of
    a thread running at a reading counts up to its last tick: 4 ms at HZ 250, at each end). One
    that sleeps spends neither."""
    spin, sleep = spinner_and_sleeper
    with Sampler({"spin": spin, "sleep": sleep}, waiter_ms=80) as sampler:
        wait_until(lambda: len(sampler.windows) >= 2, timeout_s=5)
    for window in sampler.windows:
        assert 5.0 <= window.span_ms < 60.0
        cpu, wait = window.spent["spin"]
        assert cpu > 0 and abs(cpu + wait - window.span_ms) < 8.5, window
        assert sum(window.spent["sleep"]) < 0.5, window
        assert window.due_ms % 1000 == 80
    assert set(medians(sampler.windows)) == {"sleep", "spin"}


def test_a_process_gone_has_no_reading() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert read(proc.pid) is None
