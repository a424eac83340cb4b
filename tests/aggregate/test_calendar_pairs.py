"""`7d,1w` and `30d,1M`: two intervals of one nominal length each, different candles, through the
commands users run: `python -m ingest replay` -> `python -m aggregate` -> `python -m publish`.

Expected candles come from `datetime` (epoch-aligned 7 and 30 days, Monday weeks, calendar
months) and Decimal sums over the trades written here, not from `Interval`.
"""

from __future__ import annotations

import subprocess
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import redis

from aggregate import checkpoint
from common.keys import Keys
from common.wire import STREAM_FIELD, candle_view_decoder
from tests.support import replies
from tests.support.procs import python_module
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

SYMBOL = "BTCUSDT"
FIRST = datetime(2024, 1, 3, 5, tzinfo=UTC)  # a Wednesday: neither a week's nor 7d's boundary
TRADES = 4 * 110  # every 6 hours for 110 days
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _trades() -> list[tuple[datetime, Decimal, Decimal]]:
    return [
        (FIRST + timedelta(hours=6 * i), Decimal(40000 + (i * 37) % 900), Decimal(i % 7 + 1) / 10)
        for i in range(TRADES)
    ]


def _open(label: str, t: datetime) -> datetime:
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    if label == "1w":
        return day - timedelta(days=day.weekday())
    if label == "1M":
        return day.replace(day=1)
    days = (day - EPOCH).days
    return EPOCH + timedelta(days=days - days % int(label[:-1]))


def _ms(t: datetime) -> int:
    return int(t.timestamp()) * 1000


def test_seven_days_and_a_week_thirty_days_and_a_month(tmp_path: Path, redis_url: str) -> None:
    trades = _trades()
    csv = tmp_path / f"{SYMBOL}.csv"
    lines = ["timestamp,symbol,side,size,price,tickDirection,trdMatchID"]
    lines += [
        f"{int(t.timestamp())},{SYMBOL},Buy,{size},{price},PlusTick,id-{i}"
        for i, (t, price, size) in enumerate(trades)
    ]
    csv.write_text("\n".join(lines) + "\n")
    env = {
        "STREAMER_REDIS_URL": redis_url,
        "STREAMER_REDIS_PREFIX": "pairs",
        "STREAMER_SHARDS": "1",
        "STREAMER_SHARD_IDS": "0",
        "STREAMER_KLINE_INTERVALS": "1M,7d,1w,30d",
        "STREAMER_PUBLISH_REPLICA": "t",
    }
    keys = Keys("pairs")
    client = redis.Redis.from_url(redis_url)
    publish = python_module("publish", "console", env=env, log_path=tmp_path / "publish.log")
    wait_until(  # its position is stored at the tail: it misses nothing written from now on
        lambda: client.exists(keys.publish_position("console:t", 0)) or publish.popen.poll(),
        60,
        "publish to start",
    )
    replay = python_module("ingest", "replay", str(csv), env=env, log_path=tmp_path / "replay.log")
    try:
        assert replay.popen.wait(120) == 0, replay.output()
    except subprocess.TimeoutExpired:
        replay.popen.kill()
        raise
    last = replies.entries(client.xrevrange(keys.trades(0), count=1))[0][0].decode()
    aggregate = python_module("aggregate", env=env, log_path=tmp_path / "aggregate.log")

    def head() -> str:
        assert aggregate.popen.poll() is None, aggregate.output()
        raw = client.hget(keys.state(0), checkpoint.HEAD)
        return "" if raw is None else checkpoint.head_decoder.decode(raw).last_id

    wait_until(lambda: head() == last, 90, "aggregate to read the replay")
    assert aggregate.stop() == 0

    # (volume, trade count, turnover) per (label, open)
    expected: dict[tuple[str, int], tuple[Decimal, int, Decimal]] = {}
    for t, price, size in trades:
        for label in ("7d", "1w", "30d", "1M"):
            key = (label, _ms(_open(label, t)))
            volume, count, turnover = expected.get(key, (Decimal(0), 0, Decimal(0)))
            expected[key] = (volume + size, count + 1, turnover + size * price)
    written = [
        candle_view_decoder.decode(fields[STREAM_FIELD])
        for _, fields in replies.entries(client.xrange(keys.klines(0)))
    ]
    seen: dict[str, list[int]] = defaultdict(list)
    for c in written:
        assert c.revision == 0 and not c.gap
        assert (c.volume, c.trade_count, c.turnover) == expected[(c.interval_label, c.timestamp)]
        seen[c.interval_label].append(c.timestamp)
    # Every complete candle (not the first, partial, nor the last, still open) is there.
    for label in ("7d", "1w", "30d", "1M"):
        opens = sorted({o for (lb, o) in expected if lb == label})
        assert seen[label] == opens[1:-1], label
    assert len(seen["7d"]) >= 13 and len(seen["1M"]) >= 2
    assert set(seen["7d"]).isdisjoint(seen["1w"])  # Thursdays (epoch) vs Mondays
    assert "Traceback" not in aggregate.output() + replay.output()

    def printed() -> bool:
        assert publish.popen.poll() is None, publish.output()
        out = publish.output()
        return all(out.count(f"interval_label={lb} ") == len(seen[lb]) for lb in seen)

    wait_until(printed, 60, "publish to print every candle of the four intervals")
    assert publish.stop() == 0
