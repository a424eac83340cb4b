"""`python -m ingest replay FILE...` into a real redis-server."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import redis

from common.keys import Keys
from common.sharding import shard_of
from common.wire import ClockEntry, TradesEntry, entry_decoder
from tests.support.procs import TESTDATA, python_module

pytestmark = pytest.mark.redis

KEYS = Keys("replay")


def _replay(tmp_path: Path, redis_url: str, *args: str, **env: str) -> tuple[int, str]:
    proc = python_module(
        "ingest",
        "replay",
        *args,
        env={
            "STREAMER_REDIS_URL": redis_url,
            "STREAMER_REDIS_PREFIX": "replay",
            "STREAMER_SHARDS": "2",
            **env,
        },
        log_path=tmp_path / "replay.log",
    )
    try:
        code = proc.popen.wait(60)
    except subprocess.TimeoutExpired:
        proc.popen.kill()
        raise
    return code, proc.output()


def _entries(redis_url: str, shard: int) -> list[object]:
    client = redis.Redis.from_url(redis_url)
    rows = client.xrange(KEYS.trades(shard))
    client.close()
    return [entry_decoder.decode(fields[b"data"]) for _, fields in rows]


def _need_testdata() -> None:
    if not TESTDATA.exists():
        pytest.skip(f"{TESTDATA} is absent (real Bybit captures are not in the repo)")


def test_archive_and_capture_merge_in_trade_time_order(tmp_path: Path, redis_url: str) -> None:
    _need_testdata()
    archive = TESTDATA / "liquidity-migration__bybit-trades.csv"
    capture = TESTDATA / "cryptofeed__BYBIT.jsonl.zst"
    code, output = _replay(tmp_path, redis_url, str(capture), str(archive), "--clock-ms", "1000")
    assert code == 0, output
    assert "replayed 391 trades from 2 file(s)" in output
    assert "100.0% 391/391 trades" in output  # the progress bar's last state
    trades = []
    for shard in range(2):
        entries = _entries(redis_url, shard)
        last_time = 0
        for entry in entries:
            if isinstance(entry, TradesEntry):
                assert shard_of(entry.symbol, 2) == shard
                assert entry.trades[0].time_ms >= last_time
                last_time = entry.trades[-1].time_ms
                trades.extend(entry.trades)
            else:
                assert isinstance(entry, ClockEntry)
                # a clock entry never claims a time before a trade already written
                assert entry.time_ms >= last_time
                last_time = entry.time_ms
        assert any(isinstance(e, ClockEntry) for e in entries)
    assert len(trades) == 327 + 64
    assert len({t.trade_id for t in trades}) == 391
    csv_trade = next(t for t in trades if t.trade_id == "08ff9568-cb50-55d6-b497-13727eec09dc")
    assert (csv_trade.time_ms, csv_trade.price, csv_trade.size) == (
        1585180700064,
        "6698.5",
        "0.042",
    )
    client = redis.Redis.from_url(redis_url)
    assert client.hget(KEYS.meta(), "mode") == b"trades"
    client.close()


def test_replay_refuses_shards_a_live_ingest_holds(tmp_path: Path, redis_url: str) -> None:
    _need_testdata()
    client = redis.Redis.from_url(redis_url)
    client.set(KEYS.lease("ingest", shard_of("BTCUSDT", 2)), "ingest:live", px=60_000)
    code, output = _replay(
        tmp_path, redis_url, str(TESTDATA / "liquidity-migration__bybit-trades.csv")
    )
    assert code == 2
    assert "a live ingest holds shard(s)" in output
    assert client.exists(KEYS.trades(shard_of("BTCUSDT", 2))) == 0
    client.close()


def test_unknown_format_is_one_line(tmp_path: Path, redis_url: str) -> None:
    path = tmp_path / "trades.parquet"
    path.write_bytes(b"x")
    code, output = _replay(tmp_path, redis_url, str(path))
    assert code == 2
    assert output.strip() == (
        f"error: {path}: unknown format; allowed: .csv, .csv.gz, .jsonl, .jsonl.zst"
    )
