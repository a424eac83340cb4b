"""Simulator (delayed deliveries) -> `python -m ingest` -> `python -m aggregate`, real processes.

Every candle written equals the one computed from the simulator's ledger (final revisions), and
an aggregator killed with kill -9 several times writes the same candle stream as one that was
never interrupted, reading the same trade streams.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import redis

from aggregate import checkpoint
from common.intervals import parse_intervals
from common.keys import Keys
from common.wire import STREAM_FIELD, CandleView, candle_view_decoder
from tests.ingest.e2e_support import Sim, ingest_env, start_ingest, start_simulator
from tests.support import replies
from tests.support.expected import LedgerTrade, check_series
from tests.support.procs import Proc, python_module
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

SHARDS = 2
INTERVALS = parse_intervals("1s,5s")
LATENCY_MS = 80


def aggregate_env(redis_url: str, prefix: str) -> dict[str, str]:
    return {
        "STREAMER_REDIS_URL": redis_url,
        "STREAMER_REDIS_PREFIX": prefix,
        "STREAMER_SHARDS": str(SHARDS),
        "STREAMER_SHARD_IDS": "0,1",
        "STREAMER_KLINE_INTERVALS": "1s,5s",
        "STREAMER_AGGREGATOR_BATCH": "20",
        "STREAMER_KLINE_REVISION_WINDOW_S": "30",
        "STREAMER_SHUTDOWN_TIMEOUT_S": "5",
    }


def stream_time(client: redis.Redis, keys: Keys, shard: int) -> int:
    raw = client.hget(keys.state(shard), checkpoint.HEAD)
    return -1 if raw is None else checkpoint.head_decoder.decode(raw).now_ms


def last_entry(client: redis.Redis, keys: Keys, shard: int) -> str:
    rows = replies.entries(client.xrevrange(keys.trades(shard), count=1))
    return rows[0][0].decode() if rows else ""


def caught_up(client: redis.Redis, keys: Keys, proc: Proc) -> bool:
    if proc.popen.poll() is not None:
        raise AssertionError(f"aggregate exited:\n{proc.output()}")
    for shard in range(SHARDS):
        raw = client.hget(keys.state(shard), checkpoint.HEAD)
        if raw is None or checkpoint.head_decoder.decode(raw).last_id != last_entry(
            client, keys, shard
        ):
            return False
    return True


def candles(client: redis.Redis, keys: Keys) -> dict[int, list[bytes]]:
    return {
        shard: [
            fields[STREAM_FIELD] for _, fields in replies.entries(client.xrange(keys.klines(shard)))
        ]
        for shard in range(SHARDS)
    }


def final_revisions(payloads: dict[int, list[bytes]]) -> dict[tuple[str, int, int], CandleView]:
    out: dict[tuple[str, int, int], CandleView] = {}
    for entries in payloads.values():
        for data in entries:
            view = candle_view_decoder.decode(data)
            key = (view.symbol, view.interval, view.timestamp)
            assert key not in out or out[key].revision == view.revision - 1
            out[key] = view
    return out


def run_pipeline(
    tmp_path: Path, redis_url: str, kills: int
) -> tuple[Sim, dict[int, list[bytes]], int]:
    client = redis.Redis.from_url(redis_url)
    sim = start_simulator(
        tmp_path, "--symbols", "20", "--rate", "600", "--delay", "uniform:0:400",
        "--delay-rate", "0.2", "--quiet-fraction", "0",
    )  # fmt: skip
    ingest = start_ingest(
        tmp_path, ingest_env(sim, redis_url, STREAMER_SHARDS=str(SHARDS), STREAMER_SHARD_IDS="0,1")
    )
    keys = Keys("streamer")
    agg = python_module("aggregate", env=aggregate_env(redis_url, "streamer"),
                        log_path=tmp_path / "aggregate0.log")  # fmt: skip
    for n in range(kills):
        goal = len(sim.trades()) + 800
        wait_until(lambda goal=goal: len(sim.trades()) >= goal, 30, "more trades")  # type: ignore[misc]  # default-bound lambda: waiting.py
        agg.kill9()
        agg = python_module("aggregate", env=aggregate_env(redis_url, "streamer"),
                            log_path=tmp_path / f"aggregate{n + 1}.log")  # fmt: skip
    wait_until(lambda: len(sim.trades()) >= 3000, 40, "3000 trades sent")
    assert sim.proc.stop() == 0
    sent = len(sim.trades())
    last_t = max(int(t["T"]) for t in sim.trades())

    def done() -> bool:
        written = sum(len(e) for e in ingested(client, keys))
        times = [stream_time(client, keys, shard) for shard in range(SHARDS)]
        return written >= sent and min(times) > last_t + 5_000 + 2 * LATENCY_MS

    wait_until(done, 40, "ingest and aggregate past the last trade")
    assert ingest.stop() == 0
    wait_until(lambda: caught_up(client, keys, agg), 20, "aggregate at the end of the streams")
    agg.wait_output("aggregate started")
    assert agg.stop() == 0
    until_ms = min(stream_time(client, keys, shard) for shard in range(SHARDS))
    return sim, candles(client, keys), until_ms


def ingested(client: redis.Redis, keys: Keys) -> list[list[str]]:
    from common.wire import TradesEntry, entry_decoder

    out = []
    for shard in range(SHARDS):
        ids: list[str] = []
        for _, fields in replies.entries(client.xrange(keys.trades(shard))):
            entry = entry_decoder.decode(fields[STREAM_FIELD])
            if isinstance(entry, TradesEntry):
                ids.extend(t.trade_id for t in entry.trades)
        out.append(ids)
    return out


def check_against_ledger(sim: Sim, payloads: dict[int, list[bytes]], until_ms: int) -> None:
    """Every series of the ledger, from its second candle to the last one closed, and nothing
    else; the last revisions equal the ledger's candles."""
    trades = [
        LedgerTrade(str(t["symbol"]), int(str(t["T"])), Decimal(str(t["p"])),
                    Decimal(str(t["v"])), t["S"] == "Buy", str(t["i"]))
        for t in sim.trades()
    ]  # fmt: skip
    # 20 symbols over the >= 5 s of 3000 trades at 600/s, and the 5 s after the last trade
    check_series(trades, INTERVALS, final_revisions(payloads), until_ms - LATENCY_MS,
                 {1000: 20 * 8, 5000: 20 * 1})  # fmt: skip


def test_candles_equal_the_ledger_and_survive_kill9(tmp_path: Path, redis_url: str) -> None:
    sim, payloads, until_ms = run_pipeline(tmp_path, redis_url, kills=3)
    check_against_ledger(sim, payloads, until_ms)
    views = [candle_view_decoder.decode(d) for entries in payloads.values() for d in entries]
    assert any(v.revision > 0 for v in views)  # delayed deliveries did arrive after closing

    # The same trade streams through an aggregator never interrupted: the same candle stream.
    client = redis.Redis.from_url(redis_url)
    source, copy = Keys("streamer"), Keys("calm")
    for shard in range(SHARDS):
        pipe = client.pipeline(transaction=False)
        for entry_id, fields in replies.entries(client.xrange(source.trades(shard))):
            # dict(...items()): a dict typed as redis-py takes it (dicts are invariant)
            pipe.xadd(copy.trades(shard), dict(fields.items()), id=entry_id)
        pipe.execute()
    calm = python_module("aggregate", env=aggregate_env(redis_url, "calm"),
                         log_path=tmp_path / "calm.log")  # fmt: skip
    wait_until(lambda: caught_up(client, copy, calm), 30, "the calm aggregator")
    calm.wait_output("aggregate started")
    assert calm.stop() == 0
    assert candles(client, copy) == payloads
