"""`python -m ingest replay FILE...` into a real redis-server."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import redis

from common.keys import Keys
from common.sharding import shard_of
from common.wire import Category, ClockEntry, SeedEntry, TradesEntry, entry_decoder
from ingest.replay_sources import Seed, read_capture
from tests.aggregate.capture import MINUTE_2127, TABLE
from tests.support import replies
from tests.support.procs import TESTDATA, need_testdata, python_module

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
    rows = replies.entries(client.xrange(KEYS.trades(shard)))
    client.close()
    return [entry_decoder.decode(fields[b"data"]) for _, fields in rows]


def _need_testdata() -> None:
    need_testdata("liquidity-migration__bybit-trades.csv", "cryptofeed__BYBIT.jsonl.zst")


def test_archive_and_capture_merge_in_trade_time_order(tmp_path: Path, redis_url: str) -> None:
    _need_testdata()
    archive = TESTDATA / "liquidity-migration__bybit-trades.csv"
    capture = TESTDATA / "cryptofeed__BYBIT.jsonl.zst"
    code, output = _replay(tmp_path, redis_url, str(capture), str(archive), "--clock-ms", "1000")
    assert code == 0, output
    assert "replayed 391 trades from 2 file(s)" in output
    # not a terminal: the progress is a log line (every 10 s, and at the end)
    assert re.search(r"replay: 391 trades, [\d,]+ trades/s, 100.0% of the input read", output)
    trades = []
    seeds: dict[str, tuple[int, str]] = {}
    for shard in range(2):
        entries = _entries(redis_url, shard)
        last_time = 0
        for entry in entries:
            if isinstance(entry, TradesEntry):
                assert shard_of(entry.symbol, 2) == shard
                assert entry.trades[0].time_ms >= last_time
                last_time = entry.trades[-1].time_ms
                trades.extend(entry.trades)
            elif isinstance(entry, SeedEntry):
                # before every trade of its symbol, and of its candle
                assert entry.start_ms >= last_time
                assert not any(
                    isinstance(e, TradesEntry) and e.symbol == entry.symbol
                    for e in entries[: entries.index(entry)]
                )
                seeds[entry.symbol] = (entry.start_ms, entry.close)
            else:
                assert isinstance(entry, ClockEntry)
                # a clock entry never claims a time before a trade already written
                assert entry.time_ms >= last_time
                last_time = entry.time_ms
        assert any(isinstance(e, ClockEntry) for e in entries)
    assert len(trades) == 327 + 64
    # The linear series without a 21:26 trade open at Bybit's confirmed 21:26 close (the
    # testdata README's "prev close"); BTCUSDT has its own 21:26 trade, spot is another category.
    assert seeds == {
        row.symbol: (MINUTE_2127, row.prev_close)
        for row in TABLE
        if row.category == "linear" and row.symbol != "BTCUSDT"
    }
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


def test_a_capture_seeds_only_symbols_whose_next_candle_it_holds_whole(tmp_path: Path) -> None:
    """A confirmed kline ending at E seeds its symbol only when the capture subscribed to the
    symbol's trades before E and holds none of its trades older than E; a snapshot (not
    confirmed) never does."""
    e = 1_786_310_820_000
    lines = [
        {"t": "connect", "conn": "c", "ts": (e - 5000) / 1000, "addr": "wss://x/v5/public/linear"}
    ]

    def send(symbol: str, at_ms: int) -> None:
        data = json.dumps({"op": "subscribe", "args": [f"publicTrade.{symbol}"]})
        lines.append({"t": "send", "conn": "c", "ts": at_ms / 1000, "data": data})

    def recv(at_ms: int, frame: dict[str, object]) -> None:
        lines.append({"t": "recv", "conn": "c", "ts": at_ms / 1000, "data": json.dumps(frame)})

    def kline(symbol: str, close: str, confirm: bool) -> dict[str, object]:
        item = {"start": e - 60_000, "end": e - 1, "interval": "1", "open": close,
                "close": close, "high": close, "low": close, "volume": "1", "turnover": "1",
                "confirm": confirm, "timestamp": e + 100}  # fmt: skip
        return {"topic": f"kline.1.{symbol}", "data": [item], "ts": e + 100, "type": "snapshot"}

    def trade(symbol: str, at_ms: int) -> dict[str, object]:
        item = {"T": at_ms, "s": symbol, "S": "Buy", "v": "1", "p": "5", "i": f"{symbol}{at_ms}"}
        return {"topic": f"publicTrade.{symbol}", "data": [item], "ts": at_ms, "type": "snapshot"}

    for symbol in ("AUSDT", "BUSDT", "DUSDT"):
        send(symbol, e - 1000)
    send("CUSDT", e + 50)  # subscribed after E: the capture may miss its first trades
    recv(e - 300, trade("BUSDT", e - 400))  # a trade before E: its own candle gives the close
    recv(e + 20, trade("AUSDT", e + 10))  # trades of the candle may come before the confirm
    for symbol, confirm in (("AUSDT", True), ("BUSDT", True), ("CUSDT", True), ("DUSDT", False)):
        recv(e + 150, kline(symbol, "7.5", confirm))
    path = tmp_path / "capture.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))

    items = list(read_capture(path, Category.LINEAR))
    assert [(type(i).__name__, i.symbol, i.time_ms) for i in items] == [
        ("Record", "BUSDT", e - 400),
        ("Seed", "AUSDT", e),  # before the candle's trade that was received first
        ("Record", "AUSDT", e + 10),
    ]
    assert isinstance(items[1], Seed) and items[1].close == "7.5"
