"""The postgres consumer: candles/s into PostgreSQL, next to a raw COPY of the same rows.

Measured: the real `python -m publish postgres` process (one process, uvloop) reading candles
that this bench XADDs into the candle streams of a private redis-server beforehand, and writing
them into a private PostgreSQL (the tests' server helper: fsync off, as for every figure here)
in its usual transactions: COPY into the staging table, upsert, positions. Rate = candles after
the first commit / (last commit - first commit), from the positions table as the bench polls it.
CPU per candle of the publish process and of the PostgreSQL server (postmaster and children,
from /proc) are reported too: on a machine busy with other work the wall-clock rates say more
about the neighbours than about this code, CPU per candle much less so.
Baseline, same run, same server: `COPY` of the same rows, already formatted, straight into an
empty table of the same shape and key, in transactions of the same size (the database's floor
for taking these rows in; no decoding, no upsert, no position).
Then, on the same server, the consumer's lag while the whole pipeline runs with it at 20,000
trades/s and 500 symbols: see bench/postgres_lag.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import redis

from bench import postgres_lag
from bench.publish import make_candles
from bench.report import Row
from common.keys import Keys
from common.sharding import shard_of
from publish.postgres.rows import Rows
from tests.support import replies
from tests.support.pgproc import PostgresProcess
from tests.support.redisproc import RedisProcess

ROOT = Path(__file__).resolve().parents[1]
SHARDS = 2
PREFIX = "bench"
BATCH = 2000  # STREAMER_POSTGRES_BATCH's default
NOTES: list[str] = []


def _xadd(client: redis.Redis, raws: list[bytes]) -> None:
    keys = Keys(PREFIX)
    for start in range(0, len(raws), 10_000):
        pipe = client.pipeline(transaction=False)
        for raw in raws[start : start + 10_000]:
            symbol = raw[11 : raw.index(b'"', 11)].decode()
            pipe.xadd(keys.klines(shard_of(symbol, SHARDS)), {"data": raw})
        pipe.execute()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server_cpu_s(pg: PostgresProcess) -> float:
    """CPU seconds of the PostgreSQL server: the postmaster and its live children."""
    postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
    total = _cpu_s(postmaster)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                total += _cpu_s(int(entry.name))
    return total


class Trial:
    """One measured run: rate, and CPU per candle of the client and of the server."""

    def __init__(self, candles: int, wall_s: float, client_cpu_s: float, server_cpu_s: float):
        tick_s = 1 / os.sysconf("SC_CLK_TCK")  # /proc's resolution: short (smoke) runs show 0
        self.rate = candles / wall_s
        self.client_us = 1e6 * max(client_cpu_s, tick_s) / candles
        self.server_us = 1e6 * max(server_cpu_s, tick_s) / candles


def _positions(conn: psycopg.Connection[tuple[object, ...]]) -> dict[str, str]:
    try:
        rows = conn.execute("SELECT stream, entry_id FROM candles_positions").fetchall()
    except psycopg.errors.UndefinedTable:
        return {}
    return {str(stream): str(entry_id) for stream, entry_id in rows}


def _consumer_trial(
    redis: RedisProcess, pg: PostgresProcess, dsn: str, count: int, batch: int, log: Path
) -> Trial:
    """From the first commit to the last, polling the positions table (two rows: cheap, so the
    polling does not load the server it measures)."""
    client = redis.client()
    keys = Keys(PREFIX)
    ends = {
        keys.klines(k): replies.entries(client.xrevrange(keys.klines(k), count=1))[0][0].decode()
        for k in range(SHARDS)
    }
    client.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
    env.update(
        STREAMER_ENV_FILE="/nonexistent.env", STREAMER_REDIS_URL=redis.url,
        STREAMER_REDIS_PREFIX=PREFIX, STREAMER_SHARDS=str(SHARDS),
        STREAMER_ENABLED_CONSUMERS="postgres", STREAMER_POSTGRES_DSN=dsn,
        STREAMER_POSTGRES_BATCH=str(batch), STREAMER_PUBLISH_REPLICA="bench",
    )  # fmt: skip
    launched, server_at_launch = time.perf_counter(), _server_cpu_s(pg)
    proc = subprocess.Popen(
        [sys.executable, "-m", "publish", "postgres"],
        env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            _poll(conn, proc, log, lambda p: any(v != "0-0" for v in p.values()))
            start, cpu, server = time.perf_counter(), _cpu_s(proc.pid), _server_cpu_s(pg)
            found = conn.execute("SELECT count(*) FROM candles").fetchone()
            first = int(str(found[0])) if found else 0
            if first == count:  # all in before the first look (a smoke run): from the launch
                start, cpu, server, first = launched, 0.0, server_at_launch, 0
            _poll(conn, proc, log, lambda p: p == ends)
            wall, cpu = time.perf_counter() - start, _cpu_s(proc.pid) - cpu
            server = _server_cpu_s(pg) - server
    finally:
        proc.terminate()
        proc.wait(30)
    return Trial(count - first, wall, cpu, server)


def _poll(
    conn: psycopg.Connection[tuple[object, ...]],
    proc: subprocess.Popen[bytes],
    log: Path,
    done: Callable[[dict[str, str]], bool],
) -> None:
    deadline = time.monotonic() + 600
    while not done(_positions(conn)):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the consumer did not finish:\n{log.read_text()[-3000:]}")
        time.sleep(0.005)


def _copy_lines(raws: list[bytes]) -> list[bytes]:
    """The same rows as COPY text for the candle table, built before the clock starts."""
    return [line + b"\n" for line in Rows().extend(raws).copy_text().splitlines()]


def _raw_copy_trial(pg: PostgresProcess, dsn: str, raws: list[bytes], batch: int) -> Trial:
    lines = _copy_lines(raws)
    chunks = [b"".join(lines[i : i + batch]) for i in range(0, len(lines), batch)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE raw_copy (LIKE candles INCLUDING ALL)")
        columns = ", ".join(
            str(name)
            for (name,) in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'candles'::regclass "
                "AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
            ).fetchall()
        )
        start, cpu, server = time.perf_counter(), time.process_time(), _server_cpu_s(pg)
        for chunk in chunks:
            with (
                conn.transaction(),
                conn.cursor().copy(f"COPY raw_copy ({columns}) FROM STDIN") as copy,
            ):
                copy.write(chunk)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        server = _server_cpu_s(pg) - server
        conn.execute("DROP TABLE raw_copy")
    return Trial(len(lines), wall, cpu, server)


def run(smoke: bool) -> list[Row]:
    NOTES.clear()
    count = 6_000 if smoke else 200_000
    raws = make_candles(count, 1_786_000_000_000)
    with tempfile.TemporaryDirectory(prefix="bench-pg-") as tmp:
        server = RedisProcess(Path(tmp) / "redis").start()
        pg = PostgresProcess().start()
        try:
            client = server.client()
            trials: dict[int, Trial] = {}
            for batch in (BATCH,) if smoke else (500, BATCH, 5000):
                client.flushall()
                _xadd(client, raws)
                dsn = pg.create_database(f"bench_{batch}")
                log = Path(tmp) / f"publish-{batch}.log"
                trials[batch] = _consumer_trial(server, pg, dsn, count, batch, log)
            raw = _raw_copy_trial(pg, dsn, raws, BATCH)
            client.close()
            for batch in trials:  # no autovacuum of these during the lag's run
                pg.drop_database(f"bench_{batch}")
            lag = postgres_lag.lag_rows(pg, smoke)
            NOTES.extend(postgres_lag.NOTES)
        finally:
            pg.destroy()
            server.stop()
    if not smoke:
        NOTES.insert(
            0,
            "postgres consumer by STREAMER_POSTGRES_BATCH (candles/s): "
            + ", ".join(f"{batch}: {t.rate:,.0f}" for batch, t in trials.items()),
        )
    ours = trials[BATCH]
    return [
        Row(
            "publish", f"postgres consumer, candles/s into PostgreSQL (batch {BATCH})",
            ours.rate, "candles/s", "raw COPY of the same rows", raw.rate,
            "≥ 0.5 of raw COPY and ≥ 20,000/s",
        ),
        Row(
            "publish", "postgres consumer, candles per CPU-second of the PostgreSQL server",
            1e6 / ours.server_us, "candles/s", "raw COPY of the same rows", 1e6 / raw.server_us,
        ),
        Row(
            "publish", "postgres consumer, candles per CPU-second of the publish process",
            1e6 / ours.client_us, "candles/s",
        ),
        *lag,
    ]  # fmt: skip
