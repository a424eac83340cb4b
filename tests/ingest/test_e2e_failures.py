"""Ingest processes under failure: kill -9 of a replica, bad settings, Redis down, bad frames."""

from __future__ import annotations

import collections
import subprocess
import time
import urllib.request
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
from tests.support import replies
from tests.support.procs import Proc
from tests.support.redisproc import RedisProcess, free_port
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


def _lease_owners(client: redis.Redis) -> dict[int, str]:
    owners = {}
    for shard in range(3):
        value = replies.maybe(client.get(KEYS.lease("ingest", shard)))
        if value is not None:
            owners[shard] = value.decode()
    return owners


def _pid_of(token: str) -> int:
    return int(token.split(":")[2])


def _owned_by(client: redis.Redis, *pids: int) -> bool:
    """Every shard has a lease, and the owners are exactly these processes."""
    owners = _lease_owners(client)
    return len(owners) == 3 and {_pid_of(t) for t in owners.values()} == set(pids)


def _two_replicas(
    tmp_path: Path, redis_url: str, standby_s: str
) -> tuple[Sim, Proc, Proc, redis.Redis]:
    """Two ingest replicas on three shards, each owning some, with trades flowing."""
    sim = start_simulator(tmp_path, "--symbols", "200", "--rate", "1000")
    env = ingest_env(sim, redis_url, STREAMER_INGEST_STANDBY_S=standby_s)
    a = start_ingest(tmp_path, env, "ingest-a")
    b = start_ingest(tmp_path, env, "ingest-b")
    client = redis.Redis.from_url(redis_url)
    wait_until(lambda: _owned_by(client, a.pid, b.pid), 20, "both replicas to own shards")
    wait_until(lambda: len(sim.trades()) > 1500, 20, "trades flowing")
    return sim, a, b, client


def test_kill9_survivor_takes_the_shards_and_records_the_gap(
    tmp_path: Path, redis_url: str
) -> None:
    sim, a, b, client = _two_replicas(tmp_path, redis_url, standby_s="0")
    victim_shards = [k for k, t in _lease_owners(client).items() if _pid_of(t) == a.pid]
    killed_ms = time.time_ns() // 1_000_000
    a.kill9()
    started = time.monotonic()
    wait_until(lambda: _owned_by(client, b.pid), 10, "the survivor to own every shard")
    took_s = time.monotonic() - started
    # What this protects: the survivor takes over when the dead replica's lease expires (1.5 s
    # here, + replica expiry + one claim period, ~3 s idle), not by something slower: the 30 s
    # dead-connection timeout, a restart. 12 s leaves room for a loaded 2-core machine.
    assert took_s < 12.0, took_s

    def gaps_written() -> bool:
        streams = read_streams(redis_url)
        return all(any(g.reason == "unowned" for g in streams.gaps[k]) for k in victim_shards)

    wait_until(gaps_written, 15, "unowned gaps in the taken-over shards")
    sent_before_stop = len(sim.trades())
    wait_until(lambda: len(sim.trades()) > sent_before_stop + 1000, 20, "more trades")
    # The survivor asks recent-trade for every symbol of every gap (ingest.repair) while the
    # exchange still answers.
    wait_until(
        lambda: not any(read_streams(redis_url).unrepaired(k) for k in range(3)), 30, "repairs"
    )
    assert sim.proc.stop() == 0
    expected = len(sim.trades())
    streams = read_streams(redis_url)
    windows = {
        k: [(g.from_ms, g.to_ms) for g in streams.gaps[k] if g.reason == "unowned"]
        for k in victim_shards
    }
    traded = {str(t["symbol"]) for t in sim.trades()}
    for k, spans in windows.items():
        # A start-up rebalance (a graceful hand-back) may leave a short window too; the kill
        # leaves exactly one that covers the moment of the kill.
        covering = [
            g
            for g in streams.gaps[k]
            if g.reason == "unowned" and g.from_ms <= killed_ms <= g.to_ms
        ]
        assert len(covering) == 1, (k, spans, killed_ms)
        gap = covering[0]
        assert gap.to_ms - gap.from_ms < 10_000
        assert {s for s in traded if shard_of(s, 3) == k} <= set(gap.symbols)
        assert all(shard_of(s, 3) == k for s in gap.symbols)

    def missing_outside_gaps() -> list[tuple[int, str, int, str]]:
        """(shard, symbol, trade time, id) of the ledger trades outside the windows not written."""
        written = set(read_streams(redis_url).trade_keys())
        missing = []
        for t in sim.trades():
            symbol, shard = str(t["symbol"]), shard_of(str(t["symbol"]), 3)
            in_gap = any(f <= int(t["T"]) <= to for f, to in windows.get(shard, []))
            if not in_gap and (shard, symbol, str(t["i"])) not in written:
                missing.append((shard, symbol, int(t["T"]), str(t["i"])))
        return missing

    try:
        wait_until(lambda: not missing_outside_gaps(), 20, f"the {expected} ledger trades")
    except AssertionError:
        gaps = {k: [(g.reason, g.from_ms, g.to_ms) for g in streams.gaps[k]] for k in range(3)}
        missing = missing_outside_gaps()
        raise AssertionError(
            f"{len(missing)} trades outside the unowned windows not written, e.g. {missing[:5]};"
            f" killed at {killed_ms}; gaps {gaps}"
        ) from None
    assert b.stop() == 0
    streams = read_streams(redis_url)
    counts = collections.Counter(streams.trade_keys())
    assert [k for k, n in counts.items() if n > 1] == []
    # And inside it: the trades the victim had received but not written, and those nobody
    # received, came back from recent-trade (each symbol's 1000 reach back past the gap).
    assert (
        set(ledger_keys(sim))
        <= set(counts)
        <= set(ledger_keys(sim)) | set(ledger_keys(sim, missed=True))
    )
    for k in victim_shards:
        gap = next(g for g in streams.gaps[k] if g.from_ms <= killed_ms <= g.to_ms)
        reports = [
            r for r in streams.repairs[k] if (r.from_ms, r.to_ms) == (gap.from_ms, gap.to_ms)
        ]
        assert {s for r in reports for s in r.complete} == set(gap.symbols)
    client.close()


def test_kill9_with_a_hot_standby_loses_nothing(tmp_path: Path, redis_url: str) -> None:
    """The survivor was subscribed to the victim's symbols all along: it writes what the victim
    had not, every ledger trade is in the streams exactly once, and no unowned gap is needed."""
    sim, a, b, client = _two_replicas(tmp_path, redis_url, standby_s="10")

    def b_stands_by_for_a() -> bool:
        owners = _lease_owners(client)
        a_shards = [k for k, token in owners.items() if _pid_of(token) == a.pid]
        out = b.output()
        standing_by = all(f"shard {k}: on standby" in out for k in a_shards)
        return standing_by and _owned_by(client, a.pid, b.pid)

    # Not the subscriptions' timing but their acks: a failover before them is a cold takeover.
    wait_until(b_stands_by_for_a, 20, "the survivor to stand by for the victim's shards")
    wait_until(lambda: len(sim.trades()) > 2500, 20, "more trades")
    killed_ms = time.time_ns() // 1_000_000
    a.kill9()
    wait_until(lambda: _owned_by(client, b.pid), 10, "the survivor to own every shard")
    b.wait_output("taken over from standby", 10)
    sent_before_stop = len(sim.trades())
    wait_until(lambda: len(sim.trades()) > sent_before_stop + 1000, 20, "more trades")
    assert sim.proc.stop() == 0
    # A shard's record begins with its first clock entry ("everything received before this is
    # in the stream"). The replicas start together: a trade sent before then may have reached
    # only the replica that subscribed first while the other took the new stream.
    began = {k: clocks[0].time_ms for k, clocks in read_streams(redis_url).clocks.items()}
    sent = sim.trades()
    expected = {
        (shard_of(str(t["symbol"]), 3), str(t["symbol"]), str(t["i"]))
        for t in sent
        if int(t["sent_ms"]) > began[shard_of(str(t["symbol"]), 3)]
    }
    assert len(expected) > 3000  # the start leaves out a few at most

    def all_written() -> bool:
        return set(read_streams(redis_url).trade_keys()) >= expected

    try:
        wait_until(all_written, 60, f"all {len(expected)} ledger trades in the streams")
    except AssertionError:
        lacking = expected - set(read_streams(redis_url).trade_keys())
        by_id = {str(t["i"]): t for t in sent}
        times = sorted(int(str(by_id[i]["T"])) - killed_ms for _, _, i in lacking)
        raise AssertionError(
            f"{len(lacking)} ledger trades not in the streams, at ms from the kill: "
            f"{times[:5]}..{times[-5:]}\nsurvivor:\n{b.output()[-4000:]}"
        ) from None
    assert b.stop() == 0
    streams = read_streams(redis_url)
    counts = collections.Counter(streams.trade_keys())
    assert [k for k, n in counts.items() if n > 1] == []
    assert expected <= set(counts) <= set(ledger_keys(sim))
    unowned_at_kill = [
        g for k in range(3) for g in streams.gaps[k]
        if g.reason == "unowned" and g.from_ms <= killed_ms <= g.to_ms
    ]  # fmt: skip
    assert unowned_at_kill == []
    client.close()


def _run(env: dict[str, str], tmp_path: Path, timeout_s: float = 30) -> tuple[int, str, float]:
    from tests.support.procs import python_module

    started = time.monotonic()
    proc = python_module("ingest", env=env, log_path=tmp_path / "ingest-run.log")
    try:
        code = proc.popen.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.popen.kill()
        raise AssertionError(f"ingest did not exit:\n{proc.output()}") from None
    return code, proc.output(), time.monotonic() - started


def test_unknown_symbols_stop_the_process_with_one_line(tmp_path: Path) -> None:
    sim = start_simulator(tmp_path, "--symbol-list", "BTCUSDT,ETHUSDT,SOLUSDT")
    env = ingest_env(
        sim,
        f"redis://127.0.0.1:{free_port()}/0",  # never reached: symbols are checked first
        STREAMER_BYBIT_LOAD_ALL_SYMBOLS="false",
        STREAMER_BYBIT_SYMBOLS="BTCUSDT,BTCUSD,NOPEUSDT",
    )
    code, output, _ = _run(env, tmp_path)
    sim.proc.stop()
    assert code == 2
    assert output.strip().splitlines() == [
        "error: STREAMER_BYBIT_SYMBOLS: not trading on linear: "
        "BTCUSD: unknown (did you mean BTCUSDT?); NOPEUSDT: unknown"
    ]


def test_unreachable_rest_url_is_one_line_and_a_quick_exit(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "STREAMER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "STREAMER_BYBIT_REST_URL": f"http://127.0.0.1:{port}",
        "STREAMER_BYBIT_WS_URL": f"ws://127.0.0.1:{port}/v5/public/linear",
        "STREAMER_BYBIT_SYMBOLS": "BTCUSDT",
    }
    code, output, took_s = _run(env, tmp_path)
    assert code == 1
    # What this protects: a refused connection ends the process at once, with no retry loop
    # (a process start takes a few seconds on a loaded machine; _run gives up at 30 s).
    assert took_s < 20, took_s
    lines = output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        f"error: cannot load Bybit's instruments: GET http://127.0.0.1:{port}/v5/market/"
        "instruments-info?category=linear&limit=1000: "
    )
    assert "refused" in lines[0].lower()


def test_wrong_ws_path_is_fatal(tmp_path: Path, redis_url: str) -> None:
    sim = start_simulator(tmp_path, "--symbols", "5")
    env = ingest_env(sim, redis_url, STREAMER_BYBIT_WS_URL=sim.ws_url.replace("/v5/", "/v9/"))
    code, output, _ = _run(env, tmp_path)
    sim.proc.stop()
    assert code == 1
    assert "giving up" in output and "/v9/public/linear" in output


def test_unreachable_redis_at_start_waits_and_comes_up_with_it(tmp_path: Path) -> None:
    sim = start_simulator(tmp_path, "--symbols", "20", "--rate", "500")
    port = free_port()
    env = ingest_env(sim, f"redis://127.0.0.1:{port}/0")
    ingest = start_ingest(tmp_path, env)
    ingest.wait_output(f"redis at redis://127.0.0.1:{port}/0 unavailable", 20)
    ingest.wait_output("retrying in", 5)
    server = RedisProcess(tmp_path / "late-redis", port=port).start()
    try:
        url = server.url
        wait_until(
            lambda: sum(len(v) for v in read_streams(url).trades.values()) > 50,
            30,
            "trades once Redis is up",
        )
        assert ingest.stop() == 0
    finally:
        sim.proc.stop()
        server.stop()


def _metric(port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_malformed_frames_are_counted_and_keep_the_connection(
    tmp_path: Path, redis_url: str
) -> None:
    sim = start_simulator(tmp_path, "--symbols", "30", "--rate", "800", "--malformed-rate", "0.2")
    metrics_port = free_port()
    env = ingest_env(sim, redis_url, STREAMER_METRICS_PORT=str(metrics_port))
    ingest = start_ingest(tmp_path, env)
    wait_until(lambda: len(sim.trades()) > 1500, 30, "trades sent")
    wait_until(lambda: _metric(metrics_port, "streamer_ingest_malformed_total") >= 20, 20, "bad")
    health = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/health", timeout=5)
    assert health.status == 200
    assert _metric(metrics_port, "streamer_ingest_reconnects_total") == 0
    assert sim.proc.stop() == 0
    expected = {(str(t["symbol"]), str(t["i"])) for t in sim.trades()}
    wait_until(
        lambda: {(s, i) for _, s, i in read_streams(redis_url).trade_keys()} >= expected,
        20,
        "every trade despite the bad frames",
    )
    assert ingest.stop() == 0
    assert "malformed frame" in ingest.output()
    written = read_streams(redis_url).trade_keys()
    assert len(written) == len(set(written)) == len(expected)


def test_redis_down_past_the_lease_time_buffers_and_writes_after(
    tmp_path: Path, own_redis: RedisProcess
) -> None:
    sim = start_simulator(tmp_path, "--symbols", "20", "--rate", "400")
    env = ingest_env(sim, own_redis.url, STREAMER_LEASE_TTL_MS="1000")
    ingest = start_ingest(tmp_path, env)
    url, port = own_redis.url, own_redis.port
    wait_until(lambda: sum(len(v) for v in read_streams(url).trades.values()) > 100, 20, "trades")
    own_redis.kill()
    down_ms = time.time_ns() // 1_000_000
    wait_until(lambda: ingest.output().count("buffering meanwhile") == 3, 20, "all shards kept")
    back = RedisProcess(own_redis.workdir, port=port).start()
    back_ms = time.time_ns() // 1_000_000
    try:
        ingest.wait_output("lease back after the Redis outage", 20)
        wait_until(lambda: len(sim.trades()) > 0 and _sent_after(sim, back_ms + 500), 20, "more")
        assert sim.proc.stop() == 0
        during = {
            (str(t["symbol"]), str(t["i"]))
            for t in sim.trades()
            if int(t["sent_ms"]) > down_ms + 100
        }
        assert len(during) > 300

        def all_there() -> bool:
            return {(s, i) for _, s, i in read_streams(url).trade_keys()} >= during

        wait_until(all_there, 20, "the trades received while Redis was down")
        streams = read_streams(url)
        assert all(g.reason != "buffer-overflow" for k in range(3) for g in streams.gaps[k])
        written = streams.trade_keys()
        assert len(written) == len(set(written))
        assert ingest.stop() == 0
    finally:
        back.stop()


def _sent_after(sim: Sim, ms: int) -> bool:
    return int(sim.trades()[-1]["sent_ms"]) > ms


def test_a_silent_connection_is_declared_dead_and_replaced(tmp_path: Path, redis_url: str) -> None:
    import signal

    sim = start_simulator(tmp_path, "--symbols", "20", "--rate", "300")
    env = ingest_env(
        sim,
        redis_url,
        STREAMER_BYBIT_SOCKET_POOL_SIZE="1",
        STREAMER_BYBIT_PING_INTERVAL_S="0.3",
        STREAMER_BYBIT_DEAD_AFTER_S="1",
    )
    ingest = start_ingest(tmp_path, env)
    wait_until(lambda: sum(len(v) for v in read_streams(redis_url).trades.values()) > 50, 20, "x")
    sim.proc.signal(signal.SIGSTOP)  # the exchange goes silent: no data, no pong, no close
    try:
        ingest.wait_output("no data and no pong", 10)
    finally:
        sim.proc.signal(signal.SIGCONT)
    wait_until(
        lambda: any(
            g.reason == "reconnect" for k in range(3) for g in read_streams(redis_url).gaps[k]
        ),
        20,
        "a reconnect gap once the exchange answers again",
    )
    sent = len(sim.trades())
    wait_until(lambda: len(sim.trades()) > sent + 100, 20, "trades again")
    assert sim.proc.stop() == 0
    assert ingest.stop() == 0
