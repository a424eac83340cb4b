"""common.gcpolicy with CPython's real collector: full collections happen only at the quiet
moment of each second, however much the process allocates; start-up's objects are frozen; the
automatic full collections come back when the policy ends."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import pytest

from common import gcpolicy

TOLERANCE_MS = 200  # the event loop's lateness on a loaded machine


@pytest.fixture
def full_collections() -> Any:
    """Wall-clock ms of every generation-2 collection after the policy took over (froze)."""
    starts: list[float] = []

    def record(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 2 and gc.get_freeze_count():
            starts.append(time.time() * 1000)

    gc.callbacks.append(record)
    yield starts
    gc.callbacks.remove(record)
    gc.unfreeze()


async def test_full_collections_only_at_the_quiet_moment(
    monkeypatch: pytest.MonkeyPatch, full_collections: list[float]
) -> None:
    monkeypatch.setattr(gcpolicy, "FREEZE_AFTER_S", 0.1)
    monkeypatch.setattr(gcpolicy, "FULL_EVERY_S", 0.3)
    thresholds = gc.get_threshold()
    quiet_ms = int(time.time() * 1000 + 500) % 1000
    stop = asyncio.Event()
    policy = asyncio.create_task(gcpolicy.collect_when_quiet(stop, quiet_ms))
    kept: list[list[int]] = []
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:  # survivors: what makes CPython run full collections
        kept.extend([n] for n in range(2_000))
        if len(kept) > 400_000:
            kept.clear()
        await asyncio.sleep(0)
    stop.set()
    await policy
    assert gc.get_freeze_count() > 1_000  # start-up's objects, frozen
    assert gc.get_threshold() == thresholds  # CPython's own again
    assert len(full_collections) >= 2
    late = [round((t - quiet_ms) % 1000) for t in full_collections]
    assert all(ms < TOLERANCE_MS for ms in late), late


def test_the_quiet_moment_is_halfway_between_closings() -> None:
    assert gcpolicy.quiet_offset_ms(80) == 580
    assert gcpolicy.quiet_offset_ms(600) == 100
    assert gcpolicy.until_quiet_s(1_786_310_400.000, 580) == pytest.approx(0.58)
    assert gcpolicy.until_quiet_s(1_786_310_400.600, 580) == pytest.approx(0.98)
    assert gcpolicy.until_quiet_s(1_786_310_400.579, 580) == pytest.approx(0.001, abs=1e-6)
