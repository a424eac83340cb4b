"""`python -m bench --smoke` runs every bench module and prints the table. No timing is asserted:
on a shared 2-core box figures from a smoke run mean nothing, only that every measure ran."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from bench.boundary import REALTIME_PRIORITY
from tests.support.procs import ROOT
from tests.support.sched import may_take_realtime

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

STAGES = ("simulator", "ingest", "aggregate", "publish")
PIPELINE_COMMON = (
    "trades delivered through ingest",
    "candle delay (arrival − end), p50",
    "candle delay (arrival − end), p99",
    "candle delay (arrival − end), max",
    "candle delay p99 − waiter latency (80 ms)",
    "trade-stream lag p99 (Redis id − trade time)",
    "aggregator lag p99 (wall − stream time)",
    "peak RSS ingest",
    "peak RSS aggregate",
    "peak RSS publish",
    "peak RSS simulator",
    "Redis used_memory at the end of the run",
)
PIPELINE_500_ONLY = (
    "highest rate kept up (delivered; vs asked)",
    "CPU ingest",
    "CPU aggregate",
    "CPU publish",
    "CPU simulator",
    "CPU redis",
    "trades per trade-stream entry",
    "Redis bytes per trades stream entry",
    "Redis bytes per klines stream entry",
    "Redis after 1 h of stream time (extrapolated)",
)

HISTORY = (
    "GET /v5/market/kline limit=1000, p99",
    "GET /v5/market/kline limit=200, p99",
    "/v5/market/kline limit=200, 50 clients",
    "store bytes per candle (1,000-candle sets)",
    "store for 2,000 symbols × 6 intervals × 1,000 candles",
    "candle delay p99 (same run, store on)",
)
BOUNDARY = (
    "clock entry written − due (end + waiter)",
    "candle written − due (aggregate: read, close, write)",
    "arrival − candle written (publish, WebSocket)",
    "arrival − due (candles closed by the waiter)",
)


def table_rows(output: str) -> list[tuple[str, str, str]]:
    """(stage, measure, value) of every body row of the markdown table."""
    rows = []
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 6 and cells[0] not in ("stage", "---"):
            rows.append((cells[0], cells[1], cells[2]))
    return rows


@pytest.mark.timeout(420)
def test_every_bench_module_runs_and_reports_its_rows() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke"],
        cwd=ROOT, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| stage | measure | value | baseline (same run) | ratio | target |" in done.stdout
    rows = table_rows(done.stdout)
    stages = {stage for stage, _, _ in rows}
    for stage in STAGES:
        assert stage in stages, (stage, done.stdout)
    measures = {(stage, measure) for stage, measure, _ in rows}
    expected = {("pipeline, 500 symbols", m) for m in PIPELINE_COMMON + PIPELINE_500_ONLY}
    for label in ("50 symbols", "2,000 symbols"):
        expected |= {(f"pipeline, {label}", m) for m in PIPELINE_COMMON}
    history = "history, pipeline 50 symbols @ 2,000/s"
    expected |= {(history, m) for m in HISTORY}
    expected.add(("history, burst of 50 symbols × 6 intervals", "the store's cost per candle"))
    expected.add((history, "candle delay p99 − waiter, with the store (median of 1)"))
    boundary = "boundary, 500 symbols @ 2,000/s, lean load, 2 aggregate processes"
    expected |= {(boundary, f"{m}, p99") for m in BOUNDARY}
    expected.add((boundary, "candle delay p99 − waiter latency, trial 1"))
    realtime = (
        "boundary, 500 symbols @ 2,000/s, lean load, 1 aggregate process, real-time priority 20"
    )
    if may_take_realtime(REALTIME_PRIORITY):  # where the bench may (root here and in CI)
        expected.add((realtime, "candle delay p99 − waiter latency, trial 1"))
    expected.add(("publish", "postgres consumer, candles/s into PostgreSQL (batch 2000)"))
    assert sorted(expected - measures) == []
    values = [value for _, _, value in rows]
    assert all(value and "nan" not in value and "inf" not in value for value in values), values
    assert "pipeline rows at" in done.stdout  # the notes under the table
    spent = re.search(r"2 aggregate processes: from 2 ms before a deadline .*: (.*)", done.stdout)
    assert spent is not None, done.stdout[-3000:]  # bench.schedstat's medians, every process
    for name in ("ingest", "aggregate", "aggregate2", "publish", "redis", "simulator", "user"):
        assert re.search(rf"(^|; ){name} \d+\.\d / \d+\.\d", spent[1]), (name, spent[1])
    # which processes the kernel had under SCHED_FIFO, read back in each trial
    assert "2 aggregate processes, trial 1: " in done.stdout
    assert re.search(r"2 aggregate processes, trial 1: [^\n]* \(read back\): none;", done.stdout)
    if may_take_realtime(REALTIME_PRIORITY):
        assert re.search(r"real-time priority 20, trial 1: [^\n]* \(read back\): aggregate 20,"
                         r" publish 20, redis 20;", done.stdout)  # fmt: skip
    # each trial's slowest boundaries hop by hop, and how late the deadlines' clock entries were
    assert re.search(r"slowest boundaries .*: :\d\d\.080 -?\d+/\d+/\d+", done.stdout)
    assert re.search(r"clock entries at the deadlines \(boundary × shard, \d+\): written in the"
                     r" due millisecond \d+%", done.stdout)  # fmt: skip
