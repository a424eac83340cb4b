"""The whole pipeline with the postgres consumer on: the simulator as the exchange, ingest,
aggregate and publish as real processes, publish killed with -9 three times and PostgreSQL
stopped and started during the run. Then every candle of every candle stream (latest revision)
is its row in the table, exactly, and there is no other row. Once with one publish replica, once
with two (each killed in turn: the other takes its shards over)."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from tests.publish.postgres.helpers import expected_rows, table_rows
from tests.support import replies
from tests.support.pgproc import PostgresProcess
from tests.support.pipeline import Pipeline, start_pipeline
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgres]


def stream_raws(pipe: Pipeline) -> list[bytes]:
    client = pipe.client()
    raws = [
        f[b"data"]
        for k in range(pipe.shards)
        for _, f in replies.entries(client.xrange(pipe.keys.klines(k)))
    ]
    client.close()
    return raws


def stream_ends(pipe: Pipeline) -> dict[str, str]:
    client = pipe.client()
    ends = {}
    for k in range(pipe.shards):
        last = replies.entries(client.xrevrange(pipe.keys.klines(k), count=1))
        if last:
            ends[pipe.keys.klines(k)] = last[0][0].decode()
    client.close()
    return ends


def positions(dsn: str) -> dict[str, str]:
    try:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            return dict(conn.execute("SELECT stream, entry_id FROM candles_positions").fetchall())
    except psycopg.Error:
        return {}


def rows_written(dsn: str) -> int:
    try:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            found = conn.execute("SELECT count(*) FROM candles").fetchone()
    except psycopg.Error:
        return 0
    time.sleep(0.1)  # each look is a new connection: ten a second is plenty
    return int(found[0]) if found else 0


def caught_up(pipe: Pipeline, dsn: str) -> bool:
    stored = positions(dsn)
    done = all(stored.get(stream) == last for stream, last in stream_ends(pipe).items())
    if not done:
        time.sleep(0.1)
    return done


def writes_shards(pipe: Pipeline, name: str) -> bool:
    """The replica's current run holds shard leases (its log since its last start says so)."""
    run = pipe.procs[name].output().rsplit("publishing 3 shards to postgres", 1)[-1]
    return run.count("postgres: writing shards") > run.count("postgres: leases on shards")


@pytest.mark.parametrize("replicas", [1, 2])
def test_the_table_equals_the_candle_streams_after_kill9_and_a_postgres_restart(
    tmp_path: Path, redis_url: str, own_pg: PostgresProcess, replicas: int
) -> None:
    dsn = own_pg.create_database("klines")
    pipe = start_pipeline(
        tmp_path, redis_url, ("--symbols", "20", "--rate", "300"), shards=3, intervals="1s,5s",
        STREAMER_ENABLED_CONSUMERS="postgres", STREAMER_POSTGRES_DSN=dsn,
        STREAMER_POSTGRES_BATCH="200", STREAMER_POSTGRES_CONNECT_TIMEOUT_S="2",
    )  # fmt: skip
    names = [f"publish-{i}" for i in range(replicas)]
    try:
        for name in names:
            pipe.start("publish", name, STREAMER_PUBLISH_REPLICA=name)
        pipe.start("aggregate", "aggregate")
        pipe.start("ingest", "ingest")
        written = 0
        for kill in range(3):
            wait_until(lambda n=written: rows_written(dsn) > n + 100, 90, "candles in the table")  # type: ignore[misc]  # default-bound lambda: waiting.py
            victim = wait_until(
                lambda: next((n for n in names if writes_shards(pipe, n)), None), 30, "a writer"
            )
            pipe.procs[victim].kill9()
            if replicas == 2:  # the other replica takes the shards over at once
                other = next(n for n in names if n != victim)
                wait_until(lambda o=other: writes_shards(pipe, o), 30, f"{other} to take over")  # type: ignore[misc]  # default-bound lambda: waiting.py
            if kill == 1:
                own_pg.stop()
                wait_until(lambda: len(stream_raws(pipe)) > 200, 30, "candles while it is away")
                own_pg.start()
            pipe.restart(victim)
            written = rows_written(dsn)
        wait_until(lambda n=written: rows_written(dsn) > n + 100, 90, "candles after the last kill")  # type: ignore[misc]  # default-bound lambda: waiting.py
        assert pipe.sim.proc.stop() == 0
        assert pipe.procs["ingest"].stop() == 0
        assert pipe.procs["aggregate"].stop() == 0
        wait_until(lambda: caught_up(pipe, dsn), 90, "every candle stream in PostgreSQL")
        raws = stream_raws(pipe)
        assert table_rows(dsn) == expected_rows(raws)
        assert len(expected_rows(raws)) > 400
        for name in names:
            assert pipe.procs[name].stop() == 0
    finally:
        pipe.stop_all()
