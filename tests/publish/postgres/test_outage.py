"""An outage is said once when it starts, once a minute while it lasts, once when it ends."""

from __future__ import annotations

import logging

import pytest

from publish.postgres.outage import Outage


def test_one_line_a_minute_while_postgres_is_away(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    outage = Outage(60.0, clock=lambda: now[0])
    caplog.set_level(logging.INFO, "publish.consumers.postgres")
    for _ in range(3):  # 0.5 s apart: one line
        outage.failed(ConnectionError("refused\nsecond line"))
        now[0] += 0.5
    assert not outage.up
    now[0] = 160.0
    outage.failed(ConnectionError("refused"))  # a minute after the first line
    outage.failed(ConnectionError("refused"))
    now[0] = 170.0
    outage.ok()
    outage.ok()
    assert outage.up and outage.failures == 5
    assert [r.getMessage() for r in caplog.records] == [
        "PostgreSQL unavailable (ConnectionError: refused): holding the position, nothing is "
        "skipped; retrying",
        "PostgreSQL still unavailable after 60 s (ConnectionError: refused)",
        "PostgreSQL is back after 70.0 s: catching up",
    ]
