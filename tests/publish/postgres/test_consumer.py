"""`python -m publish postgres` as a real process on a private PostgreSQL, fed by XADD into the
candle streams: kill -9 at any moment, a database restart, an outage, a late revision, a table
that does not fit. Afterwards the table equals the streams: every candle (latest revision) is its
row, exactly, and there is no other row."""

from __future__ import annotations

import random
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from common.keys import Keys
from tests.publish.helpers import PREFIX, xadd_candles
from tests.publish.postgres.helpers import candle, expected_rows, table_rows
from tests.support import replies
from tests.support.pgproc import PostgresProcess
from tests.support.procs import Proc, python_module
from tests.support.redisproc import free_port
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgres]

SHARDS = 2
T0 = 1_786_310_820_000


class Publisher:
    """One publish replica with the postgres consumer, restartable under the same name."""

    def __init__(self, tmp: Path, redis_url: str, dsn: str, name: str = "a") -> None:
        self.tmp, self.name = tmp, name
        self.metrics_port = free_port()
        self.env = {
            "STREAMER_REDIS_URL": redis_url, "STREAMER_REDIS_PREFIX": PREFIX,
            "STREAMER_SHARDS": str(SHARDS), "STREAMER_PUBLISH_REPLICA": name,
            "STREAMER_ENABLED_CONSUMERS": "postgres", "STREAMER_POSTGRES_DSN": dsn,
            "STREAMER_POSTGRES_BATCH": "300", "STREAMER_POSTGRES_CONNECT_TIMEOUT_S": "2",
            "STREAMER_METRICS_PORT": str(self.metrics_port), "STREAMER_SHUTDOWN_TIMEOUT_S": "10",
        }  # fmt: skip
        self.proc: Proc | None = None
        self.runs = 0

    def start(self) -> Publisher:
        self.runs += 1
        log = self.tmp / f"publish-{self.name}-{self.runs}.log"
        self.proc = python_module("publish", env=self.env, log_path=log)
        return self

    def health(self) -> int:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/health", timeout=5
            ) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0


@pytest.fixture
def publishers() -> Iterator[list[Publisher]]:
    started: list[Publisher] = []
    yield started
    for pub in started:
        if pub.proc is not None and pub.proc.popen.poll() is None:
            pub.proc.stop()


def stream_candles(client: redis.Redis) -> list[bytes]:
    keys = Keys(PREFIX)
    return [
        f[b"data"] for k in range(SHARDS) for _, f in replies.entries(client.xrange(keys.klines(k)))
    ]


def last_ids(client: redis.Redis) -> dict[str, str]:
    keys = Keys(PREFIX)
    out = {}
    for k in range(SHARDS):
        last = replies.entries(client.xrevrange(keys.klines(k), count=1))
        if last:
            out[keys.klines(k)] = last[0][0].decode()
    return out


def positions(dsn: str) -> dict[str, str]:
    try:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            return dict(conn.execute("SELECT stream, entry_id FROM candles_positions").fetchall())
    except psycopg.Error:
        return {}


def caught_up(dsn: str, client: redis.Redis) -> bool:
    """Every candle stream's newest entry is the stored position (polled 10 times a second:
    each look is a new database connection)."""
    stored = positions(dsn)
    done = all(stored.get(stream) == last for stream, last in last_ids(client).items())
    if not done:
        time.sleep(0.1)
    return done


def kill_while_writing(pub: Publisher, dsn: str, client: redis.Redis) -> None:
    """kill -9 as soon as the table has grown since the last candles were added: mostly while
    the publisher is between (or inside) the transactions of a catch-up."""
    assert pub.proc is not None
    before = positions(dsn)
    wait_until(lambda: positions(dsn) != before or caught_up(dsn, client), 60, "progress")
    pub.proc.kill9()


def chunk(round_: int, rng: random.Random) -> list[bytes]:
    """New candles of 20 symbols, revisions of earlier ones, and late (lower) revisions."""
    out = [candle(f"S{s:02d}USDT", T0 + 60_000 * (round_ * 10 + m), close=f"{round_}.{s}{m}1")
           for m in range(10) for s in range(20)]  # fmt: skip
    for _ in range(40):
        s, m = rng.randrange(20), rng.randrange((round_ + 1) * 10)
        revision = rng.randrange(1, 4)
        out.append(candle(f"S{s:02d}USDT", T0 + 60_000 * m, revision=revision, close=f"9.{s}"))
        if rng.random() < 0.5:  # arrives after the newer one: must change nothing
            out.append(candle(f"S{s:02d}USDT", T0 + 60_000 * m, revision=revision - 1, close="1"))
    return out


def test_kill9_any_moment_and_a_postgres_restart_leave_the_table_equal_to_the_streams(
    tmp_path: Path, redis_url: str, own_pg: PostgresProcess, publishers: list[Publisher]
) -> None:
    dsn = own_pg.create_database("klines")
    client = redis.Redis.from_url(redis_url)
    rng = random.Random(17)
    pub = Publisher(tmp_path, redis_url, dsn).start()
    publishers.append(pub)
    xadd_candles(client, chunk(0, rng), SHARDS)  # before any position: copied from the start
    wait_until(lambda: caught_up(dsn, client), 60, "the first chunk in PostgreSQL")
    for round_ in range(1, 9):
        xadd_candles(client, chunk(round_, rng), SHARDS)
        if round_ in (2, 4, 6):  # kill -9 while it writes (or right after)
            kill_while_writing(pub, dsn, client)
            xadd_candles(client, chunk(round_ + 100, rng), SHARDS)
            pub.start()
        if round_ == 5:
            own_pg.stop()
            xadd_candles(client, chunk(round_ + 200, rng), SHARDS)
            own_pg.start()
    wait_until(lambda: caught_up(dsn, client), 90, "every candle stream in PostgreSQL")
    assert table_rows(dsn) == expected_rows(stream_candles(client))
    client.close()


def test_an_outage_holds_the_position_turns_health_red_and_catches_up(
    tmp_path: Path, redis_url: str, own_pg: PostgresProcess, publishers: list[Publisher]
) -> None:
    dsn = own_pg.create_database("klines")
    client = redis.Redis.from_url(redis_url)
    pub = Publisher(tmp_path, redis_url, dsn).start()
    publishers.append(pub)
    xadd_candles(client, [candle("BTCUSDT", T0 + 60_000 * i) for i in range(50)], SHARDS)
    wait_until(lambda: caught_up(dsn, client), 60, "the first candles in PostgreSQL")
    wait_until(lambda: pub.health() == 200, 30, "health green")
    own_pg.stop()
    wait_until(lambda: pub.health() == 503, 30, "health red while PostgreSQL is away")
    during = [candle(f"S{i % 7}USDT", T0 + 60_000 * i, revision=1) for i in range(500)]
    xadd_candles(client, during, SHARDS)
    assert pub.proc is not None
    pub.proc.wait_output("PostgreSQL unavailable", 30)
    own_pg.start()
    wait_until(lambda: caught_up(dsn, client), 60, "the candles sent during the outage")
    assert table_rows(dsn) == expected_rows(stream_candles(client))
    wait_until(lambda: pub.health() == 200, 30, "health green again")
    pub.proc.wait_output("PostgreSQL is back after", 10)
    assert pub.proc.output().count("PostgreSQL unavailable") == 1  # not one per retry
    assert pub.proc.stop() == 0
    client.close()


def test_a_table_that_does_not_fit_stops_the_start_with_one_line(
    tmp_path: Path, redis_url: str, pg_dsn: str
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE candles (symbol text, open float8)")
    pub = Publisher(tmp_path, redis_url, pg_dsn).start()
    assert pub.proc is not None
    assert pub.proc.popen.wait(60) == 2
    errors = [line for line in pub.proc.output().splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith(
        "error: consumer 'postgres' cannot start: STREAMER_POSTGRES_TABLE: table candles does "
        "not fit: missing column category (text); "
    )
    assert "column open is double precision (want numeric)" in errors[0]
