"""Subscriptions on spot (10 args per request) with refused and unanswered requests."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from tests.ingest.e2e_support import (
    ingest_env,
    ledger_keys,
    read_streams,
    start_ingest,
    start_simulator,
)
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


@pytest.mark.parametrize(
    ("fault", "logged"),
    [
        ("--refuse-subscribe", "Params Error"),
        ("--stall-subscribe", "no answer to subscribe"),
    ],
)
def test_spot_chunks_and_subscribe_faults(
    tmp_path: Path, redis_url: str, fault: str, logged: str
) -> None:
    sim = start_simulator(
        tmp_path, "--category", "spot", "--symbols", "60", "--rate", "600", fault, "0.3"
    )
    env = ingest_env(
        sim,
        redis_url,
        STREAMER_BYBIT_CATEGORY="spot",
        STREAMER_BYBIT_SOCKET_POOL_SIZE="2",
        STREAMER_BYBIT_DEAD_AFTER_S="2",
        STREAMER_BYBIT_PING_INTERVAL_S="0.5",
    )
    ingest = start_ingest(tmp_path, env)
    ingest.wait_output(logged, 20)
    # every shard opens (clock entries) even though some of its requests failed
    wait_until(
        lambda: all(read_streams(redis_url).clocks[k] for k in range(3)), 20, "clock entries"
    )
    wait_until(lambda: len(sim.trades()) > 800, 30, "trades on the subscribed symbols")
    assert "connection lost" not in ingest.output()  # a refused topic is no reason to reconnect
    assert sim.proc.stop() == 0
    expected = set(ledger_keys(sim))
    wait_until(
        lambda: set(read_streams(redis_url).trade_keys()) >= expected, 20, "every sent trade"
    )
    assert ingest.stop() == 0
    written = read_streams(redis_url).trade_keys()
    assert [k for k, n in collections.Counter(written).items() if n > 1] == []
    assert set(written) == expected
    output = ingest.output()
    assert "args size" not in output  # never more than 10 args per spot request
