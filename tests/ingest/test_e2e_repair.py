"""Gap repair end to end, ingest against the simulator: what the exchange's drops kept from
ingest comes back from recent-trade, once, in its shard, with a repair entry saying so; on spot
(60 trades an answer) a busy symbol's answer does not reach back and says so."""

from __future__ import annotations

import collections
import os
import signal
from pathlib import Path

import pytest

from common.sharding import shard_of
from tests.ingest.e2e_support import (
    Sim,
    Streams,
    ingest_env,
    ledger_keys,
    read_streams,
    start_ingest,
    start_simulator,
)
from tests.support.procs import Proc
from tests.support.redisproc import RedisProcess
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


Gap = tuple[int, int, int]  # shard, from, to


def _run_with_drops(sim: Sim, ingest: Proc, redis_url: str, drops: int) -> tuple[Streams, set[Gap]]:
    """Until `drops` drops are reported and the gaps written by then are repaired; then the
    exchange stops. Returns the streams and those gaps (later ones may be unrepaired)."""
    wait_until(lambda: len(sim.drops()) >= drops, 40, f"{drops} drops")
    last_from_ms = sim.drops()[drops - 1][0]

    def reported() -> Streams | None:
        streams = read_streams(redis_url)
        done = all(any(g.to_ms >= last_from_ms for g in streams.gaps[k]) for k in range(3))
        return streams if done else None

    streams = wait_until(reported, 20, "their gap entries")
    gaps = {(k, g.from_ms, g.to_ms) for k in range(3) for g in streams.gaps[k]}

    def repaired() -> Streams | None:
        now = read_streams(redis_url)
        left = {(k, f, t) for k in range(3) for _, f, t in now.unrepaired(k)}
        return None if left & gaps else now

    wait_until(repaired, 30, "those gaps repaired")
    assert sim.proc.stop() == 0
    assert ingest.stop() == 0
    return read_streams(redis_url), gaps


def test_drops_come_back_from_recent_trade_with_fixed_shards(
    tmp_path: Path, redis_url: str
) -> None:
    sim = start_simulator(tmp_path, "--symbols", "60", "--rate", "600", "--drop-every-s", "2.5")
    env = ingest_env(sim, redis_url, STREAMER_SHARD_IDS="0,1,2")
    ingest = start_ingest(tmp_path, env)
    streams, gaps = _run_with_drops(sim, ingest, redis_url, 3)
    written = streams.trade_keys()
    assert [k for k, n in collections.Counter(written).items() if n > 1] == []
    sent, missed = set(ledger_keys(sim)), set(ledger_keys(sim, missed=True))
    assert sent <= set(written) <= sent | missed
    # Every trade a drop kept from ingest inside those gaps is back.
    owed = {
        (k, str(t["symbol"]), str(t["i"]))
        for t in sim.missed()
        for k, f, to in gaps
        if k == shard_of(str(t["symbol"]), 3) and f <= int(str(t["T"])) <= to
    }
    assert len(owed) > 50
    assert owed <= set(written), f"{len(owed - set(written))} of {len(owed)} not repaired"
    # Each gap's symbols are reported, every one of them complete (1000 trades reach back).
    for k, f, to in gaps:
        symbols = {s for g in streams.gaps[k] if (g.from_ms, g.to_ms) == (f, to) for s in g.symbols}
        reports = [r for r in streams.repairs[k] if (r.from_ms, r.to_ms) == (f, to)]
        assert {s for r in reports for s in r.symbols} == symbols
        assert {s for r in reports for s in r.complete} == symbols
    assert "gap repair of shard" in ingest.output()


def test_on_spot_a_busy_symbol_is_not_complete(tmp_path: Path, redis_url: str) -> None:
    """Spot answers hold 60 trades: the busiest symbols' go back less far than the drop (and
    the repair's wait); they are written but reported incomplete, the quiet ones complete."""
    sim = start_simulator(
        tmp_path, "--category", "spot", "--symbols", "8", "--rate", "500", "--drop-every-s", "3"
    )
    env = ingest_env(sim, redis_url, STREAMER_BYBIT_CATEGORY="spot")
    ingest = start_ingest(tmp_path, env)
    streams, _ = _run_with_drops(sim, ingest, redis_url, 2)
    complete = {s for k in range(3) for r in streams.repairs[k] for s in r.complete}
    reported = {s for k in range(3) for r in streams.repairs[k] for s in r.symbols}
    busy = collections.Counter(str(t["symbol"]) for t in sim.trades()).most_common(1)[0][0]
    assert busy in reported - complete
    assert complete, "the quiet symbols' answers reach back"
    written = set(streams.trade_keys())
    sent, missed = set(ledger_keys(sim)), set(ledger_keys(sim, missed=True))
    assert sent <= written <= sent | missed and written & missed


def test_a_buffer_overflow_while_redis_stalls_comes_back_from_recent_trade(
    tmp_path: Path, own_redis: RedisProcess
) -> None:
    """Redis frozen (SIGSTOP) for ~2 s of trading: ingest's buffer (100 items here) drops its
    oldest, writes a buffer-overflow gap once Redis answers again, and the repair fetches the
    dropped trades back from recent-trade: every trade the exchange sent is written, once."""
    sim = start_simulator(tmp_path, "--symbols", "30", "--rate", "400")
    env = ingest_env(
        sim, own_redis.url, STREAMER_SHARD_IDS="0,1,2", STREAMER_INGEST_BUFFER_MAX="100",
        STREAMER_LEASE_TTL_MS="30000",  # the leases outlive the stall: no `unowned` gap here
    )  # fmt: skip
    ingest = start_ingest(tmp_path, env)
    try:
        wait_until(lambda: len(read_streams(own_redis.url).trade_keys()) > 200, 30, "trades")
        assert own_redis.proc is not None
        sent_before = len(sim.trades())
        os.kill(own_redis.proc.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: len(sim.trades()) > sent_before + 800, 20, "2 s of trades")
        finally:
            os.kill(own_redis.proc.pid, signal.SIGCONT)

        def repaired() -> Streams | None:
            streams = read_streams(own_redis.url)
            overflows = [g for k in range(3) for g in streams.gaps[k]
                         if g.reason == "buffer-overflow"]  # fmt: skip
            left = [u for k in range(3) for u in streams.unrepaired(k)]
            return streams if overflows and not left else None

        wait_until(repaired, 60, "the buffer-overflow gap repaired")
    finally:
        assert sim.proc.stop() == 0
        assert ingest.stop() == 0
    streams = read_streams(own_redis.url)
    written = streams.trade_keys()
    assert [k for k, n in collections.Counter(written).items() if n > 1] == []
    assert set(written) <= set(ledger_keys(sim))
    overflows = {(k, g.from_ms, g.to_ms, tuple(g.symbols)) for k in range(3)
                 for g in streams.gaps[k] if g.reason == "buffer-overflow"}  # fmt: skip
    owed = {
        (k, str(t["symbol"]), str(t["i"]))
        for t in sim.trades()
        for k, f, to, symbols in overflows
        if str(t["symbol"]) in symbols and f <= int(str(t["T"])) <= to
    }
    assert len(owed) > 100  # the overflow dropped trades, and they are owed back
    assert owed <= set(written), f"{len(owed - set(written))} of {len(owed)} not repaired"
    for k, f, to, symbols in overflows:
        reports = [r for r in streams.repairs[k] if (r.from_ms, r.to_ms) == (f, to)]
        assert {s for r in reports for s in r.complete} == set(symbols)
    assert "buffer" in ingest.output()
