"""`python -m ops verify` and `python -m ops status` against a real aggregator's output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import redis

from common.keys import Keys
from common.wire import STREAM_FIELD, candle_view_decoder
from tests.aggregate.test_service import checkpoint_id, env, fill, prepared_entries
from tests.support.procs import ROOT, python_module
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.redis, pytest.mark.e2e]


def _ops(redis_url: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    variables = {**env(redis_url, prefix), "STREAMER_ENV_FILE": "/nonexistent.env"}
    variables.pop("STREAMER_AGGREGATOR_BATCH")
    return subprocess.run(
        [sys.executable, "-m", "ops", *args],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **variables},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def aggregated(redis_url: str, tmp_path: Path) -> Keys:
    client = redis.Redis.from_url(redis_url)
    keys = Keys("ops")
    last = fill(client, keys.trades(0), prepared_entries(3000)).decode()
    client.hset(keys.meta(), mapping={"shards": 1, "intervals": "1s,1m,5m", "mode": "trades",
                                       "category": "linear"})  # fmt: skip
    proc = python_module("aggregate", env=env(redis_url, "ops"), log_path=tmp_path / "agg.log")
    wait_until(lambda: checkpoint_id(client, keys, proc) == last, 60, "the aggregator to finish")
    assert proc.stop() == 0
    client.close()
    return keys


def test_verify_agrees_then_finds_a_changed_and_a_removed_candle(
    redis_url: str, aggregated: Keys
) -> None:
    ok = _ops(redis_url, "ops", "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    compared = int(ok.stdout.split()[1])
    assert compared > 300
    assert f"{compared} equal, 0 differ, 0 missing" in ok.stdout

    client = redis.Redis.from_url(redis_url)
    rows = client.xrange(aggregated.klines(0))
    _, fields = rows[len(rows) // 2]
    view = candle_view_decoder.decode(fields[STREAM_FIELD])
    changed = msgspec.json.decode(fields[STREAM_FIELD])
    changed["close"] = float(view.close) + 1
    changed["revision"] = view.revision + 5
    client.xadd(aggregated.klines(0), {STREAM_FIELD: msgspec.json.encode(changed)})
    _, removed_fields = rows[len(rows) // 3]
    removed = candle_view_decoder.decode(removed_fields[STREAM_FIELD])
    for other_id, other in rows:  # every revision of that candle
        v = candle_view_decoder.decode(other[STREAM_FIELD])
        if (v.symbol, v.interval, v.timestamp) == (
            removed.symbol,
            removed.interval,
            removed.timestamp,
        ):
            client.xdel(aggregated.klines(0), other_id)
    bad = _ops(redis_url, "ops", "verify")
    assert bad.returncode == 1
    assert f"{compared - 1} compared" not in bad.stdout
    assert "1 differ, 1 missing from the candle streams" in bad.stdout
    assert f"symbol='{view.symbol}'" in bad.stdout and f"timestamp={view.timestamp}" in bad.stdout
    assert f"MISSING CandleView(symbol='{removed.symbol}'" in bad.stdout
    # a range that excludes both changes is clean again
    first = min(view.timestamp, removed.timestamp)
    clean = _ops(redis_url, "ops", "verify", "--to", str(first - 300_000))
    assert clean.returncode == 0, clean.stdout
    client.close()


def test_status_shows_owners_streams_lag_and_newest_candles(
    redis_url: str, aggregated: Keys
) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set(aggregated.lease("ingest", 0), "ingest:hostA:4242:abcd", px=5000)
    client.hset(
        aggregated.status("publish"),
        "hostB-publish-0",
        b'{"replica":"hostB-publish-0","consumers":{"websocket":12},"websocket_clients":3,'
        b'"expires_ms":1}',
    )
    out = _ops(redis_url, "ops", "status")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "pipeline 'ops': 1 shards, intervals 1s,1m,5m, mode trades, category linear" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("0 "))
    assert "hostA:4242" in row and "(none)" in row  # ingest owner; no aggregate owner now
    assert str(client.xlen(aggregated.trades(0))) in row
    assert str(client.xlen(aggregated.klines(0))) in row
    assert " 0 ms" in row  # the checkpoint covers the whole trade stream
    assert "hostB-publish-0: websocket 12 ms behind; 3 WebSocket clients (stale" in text
    for label in ("1s", "1m", "5m"):
        assert any(line.strip().startswith(f"{label} ") for line in text.splitlines())
    client.close()
