"""The postgres consumer's lag while the pipeline runs: 500 symbols at 20,000 trades/s asked.

Run by bench/postgres.py (`python -m bench postgres`) on its private PostgreSQL server, after the
throughput trials (their databases dropped first, so that no autovacuum of them runs meanwhile).
The pipeline is bench.pipeline_trial's `Run` (simulator → ingest → aggregate → publish as real
processes, intervals 1s,1m,5m,15m,1h,4h, 4 shards, as the pipeline rows) with publish running
its usual consumers plus `postgres` (STREAMER_ENABLED_CONSUMERS=websocket,redis,postgres,
STREAMER_POSTGRES_DSN of a fresh database, every other postgres setting at its default).

Lag of a candle = the commit time of the transaction that put it in the table − the time the
aggregator wrote it into its candle stream (the entry id's milliseconds, Redis's clock); both
are this machine's wall clock. The commit times come from PostgreSQL's own log of the
transactions (logical decoding: `wal_level = logical`, set by ALTER SYSTEM and a restart before
the run, and a `test_decoding` slot made before publish starts; read once, after the run): each
transaction of the consumer moves its positions in `candles_positions` along with the rows, so
the decoded log gives, per candle stream, every position with the exact time it was committed,
and a candle is visible from the first commit whose position reaches its entry. Every closed
candle and revision counts, a revision replacing a row included (the row's own `xmin` would only
date the latest one); nothing is added to the product's tables and nothing polls the server.
Counted: the closed candles written into the candle streams during the measured window (after
warm-up and the consumer's first commit); after the window the bench waits until the positions
reach the streams' ends (up to 60 s; a candle still not in then counts as infinitely late), so
that slow candles count with their real lag rather than drop out. Also reported: candle end
(open + interval) → in PostgreSQL for revision-0 candles (a revision comes after the end by its
late trade's lateness, which says nothing of the consumer), the trades delivered through ingest
(the load the pipeline really had) and publish's CPU with the three consumers. The notes give
how many of the candles were revisions (many on a loaded machine: the simulator's trades then
reach ingest after the waiter, and each revises its 1s candle), the lag p99 of revision-0
candles alone, and the pipeline's own lags in the same run: when the pipeline falls behind
(trade-stream or aggregator lag p99 > 1 s), candles reach the stream in bursts and the
consumer's lag says more about that than about the consumer.

The machine is shared (2 cores, other engineers' test runs): each figure is one run's, and the
load average at its end is printed with it. PostgreSQL runs with fsync off, as for every figure
of the bench (tests/support/pgproc.py); with fsync on, each commit would wait for the disk too.
"""

from __future__ import annotations

import bisect
import math
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import psycopg

from bench.pipeline_trial import Result, Run, pct
from bench.report import Row
from tests.support.pgproc import PostgresProcess

SYMBOLS, RATE = 500, 20_000
WINDOW_S = 25.0  # as the pipeline rows
CATCH_UP_S = 60.0  # after the window: time given to the consumer to reach the streams' ends
SLOT = "bench_lag"
NOTES: list[str] = []

EntryId = tuple[int, int]  # a stream entry id: ms, sequence

_COMMIT = re.compile(r"COMMIT \d+ \(at (.+)\)")
_POSITION = re.compile(r"stream\[text\]:'((?:[^']|'')*)' entry_id\[text\]:'([^']*)'")


class _Head(msgspec.Struct):
    interval: int
    timestamp: int
    closed: bool = True
    revision: int = 0


_head = msgspec.json.Decoder(_Head)


def log_transactions(pg: PostgresProcess) -> None:
    """`wal_level` takes effect only at server start: set it, restart."""
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET wal_level = logical")
    pg.stop()
    pg.start()


def _id(entry_id: str) -> EntryId:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _positions(conn: psycopg.Connection[tuple[Any, ...]]) -> dict[str, EntryId]:
    try:
        rows = conn.execute("SELECT stream, entry_id FROM candles_positions").fetchall()
    except psycopg.errors.UndefinedTable:
        return {}
    return {str(stream): _id(str(entry_id)) for stream, entry_id in rows}


def _wait(done: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@dataclass
class Commits:
    """Per candle stream, the consumer's positions in commit order and when each committed."""

    ids: dict[str, list[EntryId]] = field(default_factory=dict)
    times_ms: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def decode(cls, conn: psycopg.Connection[tuple[Any, ...]]) -> Commits:
        """The slot's transactions so far: their position updates, then their COMMIT line."""
        changes = conn.execute(
            "SELECT xid::text, data FROM pg_logical_slot_get_changes(%s, NULL, NULL, "
            "'include-timestamp', '1', 'skip-empty-xacts', '1') "
            "WHERE starts_with(data, 'COMMIT ') "
            "OR starts_with(data, 'table public.candles_positions: ')",
            [SLOT],
        ).fetchall()
        out = cls()
        moved: dict[str, list[tuple[str, EntryId]]] = {}
        for xid, data in changes:
            position = _POSITION.search(data)
            if position is not None:
                stream = position.group(1).replace("''", "'")
                moved.setdefault(xid, []).append((stream, _id(position.group(2))))
            elif (commit := _COMMIT.match(data)) is not None:
                at_ms = datetime.fromisoformat(commit.group(1)).timestamp() * 1000
                for stream, entry in moved.pop(xid, []):
                    out.ids.setdefault(stream, []).append(entry)
                    out.times_ms.setdefault(stream, []).append(at_ms)
        return out

    def visible_ms(self, stream: str, entry: EntryId) -> float:
        """When the first position at or past `entry` committed (inf: none did)."""
        ids = self.ids.get(stream, [])
        at = bisect.bisect_left(ids, entry)
        return self.times_ms[stream][at] if at < len(ids) else math.inf


@dataclass
class Lags:
    """Per closed candle of the window: in PostgreSQL − stream write, and − candle end (ms)."""

    window_s: float  # from the first stream write counted to the last
    lag_ms: list[float] = field(default_factory=list)
    first_ms: list[float] = field(default_factory=list)  # the lags of revision-0 candles alone
    after_end_ms: list[float] = field(default_factory=list)  # revision-0 candles: − their end
    missing: int = 0  # of them, not in the table after the catch-up wait

    @classmethod
    def of(cls, run: Run, commits: Commits, from_ms: int, to_ms: int) -> Lags:
        out = cls((to_ms - from_ms) / 1000)
        for shard in range(run.pipe.shards):
            stream = run.pipe.keys.klines(shard)
            entries: Any = run.client.xrange(stream, min=str(from_ms), max=str(to_ms))
            for raw_id, fields in entries:
                candle = _head.decode(fields[b"data"])
                if not candle.closed:
                    continue
                entry = _id(raw_id.decode())
                visible_ms = commits.visible_ms(stream, entry)
                out.lag_ms.append(visible_ms - entry[0])
                if candle.revision == 0:  # a revision comes after the end by its trade's lateness
                    out.first_ms.append(visible_ms - entry[0])
                    out.after_end_ms.append(visible_ms - candle.timestamp - candle.interval)
                out.missing += visible_ms == math.inf
        return out


def measure(pg: PostgresProcess, smoke: bool) -> tuple[Result, Lags]:
    symbols, rate = (50, 2_000) if smoke else (SYMBOLS, RATE)
    result = Result(symbols, rate, 2.0 if smoke else WINDOW_S)
    dsn = pg.create_database("bench_lag")
    env = {"STREAMER_ENABLED_CONSUMERS": "websocket,redis,postgres", "STREAMER_POSTGRES_DSN": dsn}
    with (
        tempfile.TemporaryDirectory(prefix="bench-pglag-") as tmp,
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", [SLOT])
        run = Run(Path(tmp), symbols, rate, None, stage_env={"publish": env})
        try:
            run.warm_up()
            if not _wait(lambda: any(p != (0, 0) for p in _positions(conn).values()), 60):
                log = run.pipe.procs["publish"].output()[-3000:]
                raise RuntimeError(f"no commit by the postgres consumer:\n{log}")
            from_ms = time.time_ns() // 1_000_000
            run.measure(result)
            to_ms = time.time_ns() // 1_000_000
            ends = {}
            for shard in range(run.pipe.shards):
                stream = run.pipe.keys.klines(shard)
                last: Any = run.client.xrevrange(stream, count=1)
                ends[stream] = _id(last[0][0].decode()) if last else (0, 0)

            def caught_up() -> bool:
                held = _positions(conn)
                return all(held.get(stream, (0, 0)) >= end for stream, end in ends.items())

            if not _wait(caught_up, CATCH_UP_S):
                NOTES.append(f"postgres lag: the consumer had not caught up {CATCH_UP_S:.0f} s "
                             "after the window")  # fmt: skip
            lags = Lags.of(run, Commits.decode(conn), from_ms, to_ms)
        finally:
            run.close()  # the slot goes with the server (bench/postgres.py destroys it)
    return result, lags


def lag_rows(pg: PostgresProcess, smoke: bool) -> list[Row]:
    NOTES.clear()
    log_transactions(pg)
    result, lags = measure(pg, smoke)
    stage = f"publish, pipeline {result.symbols} symbols @ {result.asked:,}/s asked"
    lag = lags.lag_ms
    print(f"  postgres lag: {len(lag):,} candles, p50/p99/max {pct(lag, 50):.0f}/{pct(lag, 99):.0f}"
          f"/{pct(lag, 100):.0f} ms, delivered {result.delivered:,.0f} trades/s, load average"
          f" {result.load_1m:.1f}", file=sys.stderr, flush=True)  # fmt: skip
    verdict = "fell behind" if result.failures() else "kept up"
    revisions = len(lag) - len(lags.first_ms)
    NOTES.append(
        f"postgres lag: {len(lag):,} closed candles written in a {lags.window_s:.0f} s window, of"
        f" them {revisions:,} revisions (a late trade's; lag p99 of the revision-0 candles alone"
        f" {pct(lags.first_ms, 99):.0f} ms), {lags.missing} missing after the wait; the pipeline"
        f" meanwhile {verdict} (bound 1 s): trade-stream lag p99 {pct(result.trade_lag_ms, 99):.0f}"
        f" ms, aggregator lag p99 {pct(result.agg_lag_ms, 99):.0f} ms, candle delay to a WebSocket"
        f" client p99 {pct(result.delay_ms, 99):.0f} ms; load average {result.load_1m:.1f} at the"
        " end"
    )
    what = "postgres consumer lag (commit − candle stream write)"
    return [
        Row(stage, "trades delivered through ingest", result.delivered, "trades/s", "asked",
            result.asked),
        Row(stage, f"{what}, p50", pct(lag, 50), "ms"),
        Row(stage, f"{what}, p99", pct(lag, 99), "ms"),
        Row(stage, f"{what}, max", pct(lag, 100), "ms"),
        Row(stage, "candle end → in PostgreSQL (revision 0), p99", pct(lags.after_end_ms, 99),
            "ms"),
        Row(stage, "closed candles into PostgreSQL", len(lag) / lags.window_s, "candles/s"),
        Row(stage, "CPU publish (websocket, redis and postgres consumers)",
            100 * result.cpu.get("publish", 0.0), "% of a core"),
    ]  # fmt: skip
