"""Ingest as a real process against the simulator: every ledger trade exactly once."""

from __future__ import annotations

import collections
import time
from pathlib import Path

import pytest
import redis

from common.sharding import shard_of
from tests.ingest.e2e_support import (
    KEYS,
    Sim,
    ingest_env,
    ledger_keys,
    read_streams,
    start_ingest,
    start_simulator,
)
from tests.support.gaps import covered
from tests.support.procs import Proc
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


def _written(redis_url: str) -> int:
    return sum(len(e.trades) for s in read_streams(redis_url).trades.values() for e in s)


def _finish(sim: Sim, ingests: list[Proc], redis_url: str) -> None:
    """Stop the exchange first, wait until ingest wrote what it sent, then stop ingest."""
    assert sim.proc.stop() == 0
    expected = len(sim.trades())
    try:
        wait_until(lambda: _written(redis_url) >= expected, 20, f"{expected} trades in the streams")
    finally:
        for proc in ingests:
            assert proc.stop() == 0, proc.output()


def _assert_exactly_once(sim: Sim, redis_url: str) -> None:
    written = read_streams(redis_url).trade_keys()
    counts = collections.Counter(written)
    duplicates = [k for k, n in counts.items() if n > 1]
    assert duplicates == []
    expected = ledger_keys(sim)
    assert len(expected) > 1000
    # Every trade sent, each in the shard crc32(symbol) % 3 names; beyond them only trades
    # nobody was subscribed to that a gap repair fetched back (ingest.repair).
    assert set(expected) <= set(written) <= set(expected) | set(ledger_keys(sim, missed=True))


def test_every_ledger_trade_once_in_its_shard(tmp_path: Path, redis_url: str) -> None:
    sim = start_simulator(tmp_path, "--symbols", "200", "--rate", "1500")
    env = ingest_env(sim, redis_url)
    ingests = [start_ingest(tmp_path, env, "ingest-a"), start_ingest(tmp_path, env, "ingest-b")]
    client = redis.Redis.from_url(redis_url)
    wait_until(lambda: len(sim.trades()) > 4000, 30, "4000 trades sent")
    _finish(sim, ingests, redis_url)
    _assert_exactly_once(sim, redis_url)
    streams = read_streams(redis_url)
    assert all(len(streams.clocks[k]) > 5 for k in range(3))
    # Each owner says which symbols its shard serves, before its first trade of the shard.
    for k in range(3):
        assert streams.symbols[k]
        assert all(shard_of(s, 3) == k for e in streams.symbols[k] for s in e.symbols)
    listed = {s for k in range(3) for s in streams.symbols[k][-1].symbols}
    assert len(listed) == 200 and {str(t["symbol"]) for t in sim.trades()} <= listed
    assert client.hgetall(KEYS.meta()) == {
        b"shards": b"3",
        b"intervals": b"1m,5m,1h",
        b"mode": b"trades",
        b"category": b"linear",
    }
    for entries in streams.trades.values():
        for entry in entries[:50]:
            times = [t.time_ms for t in entry.trades]
            assert times == sorted(times) and entry.received_ms >= times[-1] - 5
    client.close()


def test_connection_drops_lose_only_the_dropped_windows_with_gaps(
    tmp_path: Path, redis_url: str
) -> None:
    sim = start_simulator(tmp_path, "--symbols", "200", "--rate", "1500", "--drop-every-s", "1.5")
    env = ingest_env(sim, redis_url)
    ingest = start_ingest(tmp_path, env)
    wait_until(lambda: len(sim.drops()) >= 3, 40, "three drop windows")
    wait_until(lambda: len(sim.trades()) > 4000, 30, "4000 trades sent")
    _finish(sim, [ingest], redis_url)
    _assert_exactly_once(sim, redis_url)
    streams = read_streams(redis_url)
    symbols_of_shard: dict[int, set[str]] = collections.defaultdict(set)
    for shard, symbol, _ in ledger_keys(sim):
        symbols_of_shard[shard].add(symbol)
    for from_ms, to_ms in sim.drops():
        # Every window, the last ones too: ingest reports a window when its connection is back
        # in service or, if the exchange stopped first, at its shard's hand-back on the stop.
        for shard in range(3):
            # A drop that comes while a connection is still reconnecting from the one before is
            # reported by two consecutive gap entries: their union must cover the window.
            for symbol in symbols_of_shard[shard]:
                windows = [
                    (g.from_ms, g.to_ms, g.reason)
                    for g in streams.gaps[shard]
                    if g.reason == "reconnect" and symbol in g.symbols
                ]
                assert covered(from_ms, to_ms, windows), (shard, symbol, from_ms, to_ms, windows)
    assert "connection lost" in ingest.output()


def test_a_stop_with_the_exchange_down_writes_its_last_gaps_and_releases_the_leases(
    tmp_path: Path, redis_url: str
) -> None:
    """The exchange goes away, then ingest is stopped: every connection's window is still
    open, so each shard's hand-back reports it (up to the hand-back, while the lease is ours),
    and the leases are released, not left to expire. Before, the writer had stopped by then:
    those gap entries were never written, the hand-back waited for them until the drain's
    timeout cancelled it, and the leases stayed held for their whole TTL."""
    sim = start_simulator(tmp_path, "--symbols", "60", "--rate", "600")
    env = ingest_env(sim, redis_url, STREAMER_LEASE_TTL_MS="20000")
    ingest = start_ingest(tmp_path, env)
    client = redis.Redis.from_url(redis_url)
    wait_until(lambda: len(sim.trades()) > 600, 30, "600 trades sent")
    wait_until(lambda: all(read_streams(redis_url).trades.values()), 20, "trades in every shard")
    assert sim.proc.stop() == 0
    wait_until(lambda: ingest.output().count("connection lost") >= 3, 20, "the connections lost")
    stop_ms = time.time_ns() // 1_000_000
    assert ingest.stop() == 0, ingest.output()
    assert [client.get(KEYS.lease("ingest", k)) for k in range(3)] == [None, None, None]
    streams = read_streams(redis_url)
    for shard in range(3):
        served = set(streams.symbols[shard][-1].symbols)
        assert served
        to_the_stop = {
            symbol
            for gap in streams.gaps[shard]
            if gap.reason == "reconnect" and gap.to_ms >= stop_ms
            for symbol in gap.symbols
        }
        assert to_the_stop == served, (shard, sorted(served - to_the_stop))
    assert "drain took longer" not in ingest.output()
    client.close()
