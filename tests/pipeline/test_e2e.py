"""The whole pipeline, real processes end to end: exchange trades → candles in users' hands."""

from __future__ import annotations

import collections
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.wire import CandleView
from tests.support import replies
from tests.support.cluster import RedisCluster
from tests.support.expected import check_series
from tests.support.pipeline import (
    Pipeline,
    latest,
    pubsub_collector,
    start_pipeline,
    wait_for_ws,
    websocket_collector,
)
from tests.support.redisproc import free_port
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


def trades_written(pipe: Pipeline) -> int:
    client = pipe.client()
    total = 0
    for shard in range(pipe.shards):
        for _, fields in replies.entries(client.xrange(pipe.keys.trades(shard))):
            if fields[b"data"].startswith(b'{"type":"trades"'):
                total += fields[b"data"].count(b'","Buy","') + fields[b"data"].count(b'","Sell","')
    client.close()
    return total


def check_against_ledger(
    pipe: Pipeline, candles: list[CandleView], floors: dict[int, int]
) -> dict[int, int]:
    """Every candle written once per revision; the last revisions equal the ledger's series."""
    revisions = collections.Counter(
        (c.symbol, c.interval, c.timestamp, c.revision) for c in candles
    )
    assert [k for k, n in revisions.items() if n > 1] == []
    trades = pipe.ledger_trades()
    until_ms = pipe.closed_by_ms(trades)
    return check_series(trades, pipe.parsed_intervals(), latest(candles), until_ms, floors)


@pytest.fixture(params=["redis", "cluster"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, bool]]:
    """A plain Redis (the session's), or a local three-node Redis Cluster."""
    if request.param == "redis":
        yield request.getfixturevalue("redis_url"), False
        return
    cluster = RedisCluster(tmp_path / "cluster").start()
    yield cluster.url, True
    cluster.stop()


def test_candles_reach_websocket_and_pubsub_users_exactly(
    tmp_path: Path, backend: tuple[str, bool]
) -> None:
    redis_url, is_cluster = backend
    pipe = start_pipeline(
        tmp_path, redis_url, ("--symbols", "30", "--rate", "400"), shards=3, intervals="1s,2s,5s",
        STREAMER_REDIS_CLUSTER=str(is_cluster).lower(),
    )  # fmt: skip
    ports = {stage: free_port() for stage in ("ingest", "aggregate", "publish")}
    try:
        pipe.start("publish", "publish", STREAMER_METRICS_PORT=str(ports["publish"]))
        wait_for_ws(pipe.ws_port)
        ws = websocket_collector(pipe.ws_port)
        pubsub = pubsub_collector(redis_url, "pipeline-klines")
        pipe.start("aggregate", "aggregate", STREAMER_METRICS_PORT=str(ports["aggregate"]))
        pipe.start("ingest", "ingest", STREAMER_METRICS_PORT=str(ports["ingest"]))
        wait_until(lambda: len(pipe.sim.trades()) > 6000, 60, "6000 trades sent")
        for port in ports.values():  # what supervisord and compose health checks poll
            assert _get(port, "/health")[0] == 200
        assert pipe.sim.proc.stop() == 0
        sent = len(pipe.sim.trades())
        wait_until(lambda: trades_written(pipe) >= sent, 30, f"{sent} trades in the streams")
        last_t = max(t.time_ms for t in pipe.ledger_trades())
        boundary = last_t - last_t % 5000 + 5000

        def closed_past_end() -> bool:
            return any(
                c.interval == 5000 and c.timestamp >= boundary for c in pipe.stream_candles()
            )

        wait_until(closed_past_end, 40, "candles after the last trade's 5s candle")
        stream = pipe.stream_candles()
        wait_until(lambda: len(ws.raws) >= len(stream), 20, "the WebSocket client to catch up")
        wait_until(lambda: len(pubsub.raws) >= len(stream), 20, "the subscriber to catch up")
        # 27 trading symbols (a tenth are quiet) over the >= 15 s of 6000 trades at 400/s
        check_against_ledger(pipe, stream, {1000: 27 * 12, 2000: 27 * 6, 5000: 27 * 2})
        by_key = {(c.symbol, c.interval, c.timestamp, c.revision) for c in stream}
        for collector in (ws, pubsub):
            views = collector.views()[: len(stream)]
            assert {(c.symbol, c.interval, c.timestamp, c.revision) for c in views} == by_key
            assert len(views) == len(stream)
        check_metrics(ports)
        ws.stop()
        pubsub.stop()
    finally:
        pipe.stop_all()


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def _value(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def check_metrics(ports: dict[str, int]) -> None:
    """Every stage serves Prometheus metrics with the figures an operator watches."""
    ingest = _get(ports["ingest"], "/metrics")[1]
    aggregate = _get(ports["aggregate"], "/metrics")[1]
    publish = _get(ports["publish"], "/metrics")[1]
    assert _value(ingest, "streamer_ingest_trades_total") > 5000
    assert 0 <= _value(ingest, "streamer_ingest_trade_lag_seconds") < 10
    for name in ("reconnects", "gaps", "dropped_trades", "redis_errors", "malformed"):
        assert f"# TYPE streamer_ingest_{name}_total counter" in ingest
    assert _value(aggregate, "streamer_aggregate_candles_total") > 500
    assert _value(aggregate, "streamer_aggregate_trades_total") > 5000
    for name in ("late", "dropped", "revisions"):
        assert f"# TYPE streamer_aggregate_{name}_total counter" in aggregate
    assert "streamer_aggregate_stream_lag_seconds{" in aggregate
    assert _value(aggregate, 'streamer_candle_delay_seconds_count{interval="1s"}') > 100
    assert "process_resident_memory_bytes " in aggregate
    assert _value(publish, "streamer_publish_ws_clients") == 1
    assert _value(publish, 'streamer_publish_candles_total{consumer="websocket"}') > 500
    # the exchange is gone (the simulator was stopped): ingest reports itself unhealthy
    assert _get(ports["ingest"], "/health")[0] == 503
