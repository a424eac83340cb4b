"""The real capture through the commands a user runs: `python -m ingest replay <capture>`, then
`python -m aggregate`, real processes on a real redis-server, one per category of the capture.

All six rows of the testdata README are reached, written as in-progress snapshots
(STREAMER_KLINE_UPDATES_MS; replay leaves the last candle open, as the capture ends at 21:27:42).
Five series have no 21:26 trade in the capture: without the `seed` entry replay writes from
Bybit's confirmed 21:26 kline, their 21:27 candle would be the skipped partial first candle of a
cold start. The expected rows are the testdata README's (tests/aggregate/capture.py TABLE).
"""

from __future__ import annotations

import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
import redis

from aggregate import checkpoint
from common.keys import Keys
from common.wire import STREAM_FIELD, CandleView, candle_view_decoder
from tests.aggregate.capture import MINUTE_2127, TABLE, require_capture
from tests.support import replies
from tests.support.procs import TESTDATA, python_module
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

KEYS = Keys("capture")
CAPTURE_ZST = TESTDATA / "cryptofeed__BYBIT.jsonl.zst"


def env(redis_url: str, category: str) -> dict[str, str]:
    return {
        "STREAMER_REDIS_URL": redis_url,
        "STREAMER_REDIS_PREFIX": KEYS.prefix,
        "STREAMER_SHARDS": "1",
        "STREAMER_BYBIT_CATEGORY": category,
        "STREAMER_KLINE_INTERVALS": "1m",
        "STREAMER_KLINE_UPDATES_MS": "1000",
    }


def run_commands(tmp_path: Path, redis_url: str, category: str) -> list[CandleView]:
    """Replay, then aggregate until its head is the stream's last entry; every candle written."""
    replay = python_module(
        "ingest", "replay", str(CAPTURE_ZST), env=env(redis_url, category),
        log_path=tmp_path / f"replay-{category}.log",
    )  # fmt: skip
    try:
        assert replay.popen.wait(120) == 0, replay.output()
    except subprocess.TimeoutExpired:
        replay.popen.kill()
        raise
    client = redis.Redis.from_url(redis_url)
    [(last_id, _)] = replies.entries(client.xrevrange(KEYS.trades(0), count=1))
    aggregate = python_module(
        "aggregate", env=env(redis_url, category), log_path=tmp_path / f"aggregate-{category}.log"
    )

    def caught_up() -> bool:
        assert aggregate.popen.poll() is None, aggregate.output()
        raw = client.hget(KEYS.state(0), checkpoint.HEAD)
        return raw is not None and checkpoint.head_decoder.decode(raw).last_id == last_id.decode()

    wait_until(caught_up, 60, f"aggregate to reach the replayed stream's end ({category})")
    assert aggregate.stop() == 0, aggregate.output()
    views = [
        candle_view_decoder.decode(fields[STREAM_FIELD])
        for key in (KEYS.klines(0), KEYS.updates(0))
        for _, fields in replies.entries(client.xrange(key))
    ]
    client.delete(*client.keys(f"{KEYS.prefix}*"))  # the next category starts afresh
    client.close()
    return views


def test_replay_then_aggregate_reaches_the_six_rows(tmp_path: Path, redis_url: str) -> None:
    """Every README row, written as an in-progress snapshot (STREAMER_KLINE_UPDATES_MS) of the
    21:27 candle: the one that holds exactly the row's `n` trades, equal to the row. Linear
    BTCUSDT opens at its own captured 21:26 trade; the five others at the close of Bybit's
    confirmed 21:26 kline in the capture, which replay writes as a `seed` entry."""
    require_capture()
    reached = []
    for category in ("linear", "spot"):
        views = run_commands(tmp_path, redis_url, category)
        minute = [v for v in views if v.interval == 60_000 and v.timestamp == MINUTE_2127]
        for row in TABLE:
            if row.category != category:
                continue
            mine = [v for v in minute if v.symbol == row.symbol and v.trade_count == row.n]
            assert mine, (
                f"{category} {row.symbol}: no snapshot of the 21:27 candle with {row.n} trades"
            )
            for snapshot in mine:
                assert not snapshot.closed  # the capture ends at 21:27:42
                assert (snapshot.open, snapshot.high, snapshot.low, snapshot.close) == tuple(
                    map(Decimal, row.ohlc)
                ), f"{category} {row.symbol}"
                assert (snapshot.volume, snapshot.turnover) == (
                    Decimal(row.volume),
                    Decimal(row.turnover),
                ), f"{category} {row.symbol}"
            reached.append((category, row.symbol))
    assert len(reached) == len(TABLE) == 6
