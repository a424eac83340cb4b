"""`python -m ops verify` and `python -m ops status` against a real aggregator's output."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
import redis

from common.keys import Keys
from common.wire import (
    STREAM_FIELD,
    ClockEntry,
    GapEntry,
    TradesEntry,
    candle_view_decoder,
    entry_decoder,
    entry_encoder,
)
from tests.aggregate.test_service import START_MS, checkpoint_id, env, fill, prepared_entries
from tests.support import replies
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
    rows = replies.entries(client.xrange(aggregated.klines(0)))
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
    assert out.returncode == 1, out.stderr  # not healthy: no aggregate owner, a stale publisher
    text = out.stdout
    assert "NOT healthy:\n  shard 0: no aggregate owner\n" in text
    assert "publish replica hostB-publish-0: status not refreshed" in text
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


def test_status_json_and_its_exit_code_say_whether_the_pipeline_is_healthy(
    redis_url: str, aggregated: Keys
) -> None:
    client = redis.Redis.from_url(redis_url)
    for stage in ("ingest", "aggregate"):
        client.set(aggregated.lease(stage, 0), f"{stage}:hostA:1:abcd", px=60_000)
    fresh_ms = int(time.time() * 1000) + 60_000
    client.hset(aggregated.status("publish"), "p0", json.dumps(
        {"replica": "p0", "consumers": {"websocket": 12}, "websocket_clients": 1,
         "expires_ms": fresh_ms}))  # fmt: skip
    out = _ops(redis_url, "ops", "status", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    status = json.loads(out.stdout)
    assert status["healthy"] is True and status["problems"] == []
    assert status["shards"][0]["aggregate_lag_ms"] == 0
    assert set(status["newest"]) == {"1s", "1m", "5m"}
    assert status["publishers"][0]["consumers"] == {"websocket": 12}
    client.hset(aggregated.status("publish"), "p0", json.dumps(
        {"replica": "p0", "consumers": {"websocket": 120_000}, "websocket_clients": 1,
         "expires_ms": fresh_ms}))  # fmt: skip
    out = _ops(redis_url, "ops", "status", "--json")
    assert out.returncode == 1
    assert json.loads(out.stdout)["problems"] == [
        "publish replica p0: websocket is 120000 ms behind"
    ]
    client.close()


def _candle(symbol: str, interval_ms: int, label: str, open_ms: int) -> bytes:
    return json.dumps({"symbol": symbol, "interval": interval_ms, "interval_label": label,
                       "timestamp": open_ms, "closed": True}).encode()  # fmt: skip


def test_status_finds_the_newest_candle_of_every_interval_far_behind_the_tail(
    redis_url: str,
) -> None:
    """The newest 1h candle was written 5,000 entries before the tail: it is found at the last
    1h boundaries, not by reading the whole stream."""
    client = redis.Redis.from_url(redis_url)
    keys = Keys("far")
    hour = 1_786_309_200_000  # a UTC hour boundary
    client.hset(keys.meta(), mapping={"shards": 1, "intervals": "1s,1m,1h", "mode": "trades",
                                      "category": "linear"})  # fmt: skip
    stream = keys.klines(0)
    client.xadd(stream, {STREAM_FIELD: _candle("BTCUSDT", 3_600_000, "1h", hour - 3_600_000)},
                id=f"{hour + 90}-0")  # fmt: skip
    pipe = client.pipeline(transaction=False)
    for i in range(1, 5001):  # 1s candles, one a second, and a 1m candle each minute
        at = hour + i * 1000
        pipe.xadd(stream, {STREAM_FIELD: _candle("ETHUSDT", 1000, "1s", at - 1000)}, id=f"{at}-1")
        if i % 60 == 0:
            pipe.xadd(stream, {STREAM_FIELD: _candle("ETHUSDT", 60_000, "1m", at - 60_000)},
                      id=f"{at}-2")  # fmt: skip
    pipe.execute()
    out = _ops(redis_url, "far", "status", "--json")
    newest = json.loads(out.stdout)["newest"]
    assert newest == {
        "1h": {"timestamp": hour - 3_600_000, "symbol": "BTCUSDT"},
        "1m": {"timestamp": hour + 4_980_000 - 60_000, "symbol": "ETHUSDT"},
        "1s": {"timestamp": hour + 4_999_000, "symbol": "ETHUSDT"},
    }
    client.close()


@pytest.mark.parametrize("args", [("status",), ("status", "--json"), ("verify",)])
def test_ops_with_redis_down_is_one_line_and_exit_1(args: tuple[str, ...]) -> None:
    from tests.support.redisproc import free_port

    out = _ops(f"redis://:hunter2@127.0.0.1:{free_port()}/0", "x", *args)
    assert out.returncode == 1
    assert out.stdout == ""
    (line,) = out.stderr.splitlines()
    assert line.startswith("error: Redis at redis://:***@127.0.0.1:") and "hunter2" not in line


def _entry_ms(payload: bytes) -> int:
    entry = entry_decoder.decode(payload)
    if isinstance(entry, TradesEntry):
        return entry.trades[0].time_ms
    if isinstance(entry, ClockEntry):
        return entry.time_ms
    assert isinstance(entry, GapEntry)
    return entry.to_ms


def test_verify_from_to_reads_only_the_range(redis_url: str, tmp_path: Path) -> None:
    """Trade entries with ids at their trade times (as live), after 20 MB of older entries:
    a verify of a few seconds of it reads none of those."""
    client = redis.Redis.from_url(redis_url)
    keys = Keys("range")
    pipe = client.pipeline(transaction=False)
    old = entry_encoder.encode(ClockEntry(START_MS - 86_400_000)) + b" " * 1000
    for i in range(20_000):
        pipe.xadd(keys.trades(0), {STREAM_FIELD: old}, id=f"{START_MS - 86_400_000 + i}-0")
    pipe.execute()
    last_ms, seq = 0, 0
    pipe = client.pipeline(transaction=False)
    for payload in prepared_entries(3000):
        at = max(_entry_ms(payload), last_ms)
        seq = seq + 1 if at == last_ms else 0
        last_ms = at
        pipe.xadd(keys.trades(0), {STREAM_FIELD: payload}, id=f"{at}-{seq}")
    last = pipe.execute()[-1].decode()
    client.hset(keys.meta(), mapping={"shards": 1, "intervals": "1s,1m,5m", "mode": "trades",
                                      "category": "linear"})  # fmt: skip
    proc = python_module("aggregate", env=env(redis_url, "range"), log_path=tmp_path / "agg.log")
    wait_until(lambda: checkpoint_id(client, keys, proc) == last, 60, "the aggregator to finish")
    assert proc.stop() == 0
    sent_before = client.info("stats")["total_net_output_bytes"]
    out = _ops(redis_url, "range", "verify", "--from", str(START_MS + 5_000),
               "--to", str(START_MS + 15_000))  # fmt: skip
    sent = client.info("stats")["total_net_output_bytes"] - sent_before
    assert out.returncode == 0, out.stdout + out.stderr
    assert int(out.stdout.split()[1]) > 100 and " 0 differ, 0 missing" in out.stdout
    assert sent < 10_000_000, f"verify read {sent} bytes, the 20 MB before the range too"
    client.close()


def test_verify_in_klines_mode_says_it_compares_nothing(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.hset(Keys("km").meta(), mapping={"shards": 1, "mode": "klines"})
    out = _ops(redis_url, "km", "verify")
    assert out.returncode == 0
    assert (
        out.stdout.startswith("klines mode: the candles are Bybit's own")
        and "nothing compared" in out.stdout
    )
    client.close()
