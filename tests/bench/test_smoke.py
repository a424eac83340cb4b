"""`python -m bench --smoke` runs every bench module and prints the table. No timing is asserted:
on a shared 2-core box figures from a smoke run mean nothing, only that every measure ran."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.procs import ROOT

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


def table_rows(output: str) -> list[tuple[str, str, str]]:
    """(stage, measure, value) of every body row of the markdown table."""
    rows = []
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 6 and cells[0] not in ("stage", "---"):
            rows.append((cells[0], cells[1], cells[2]))
    return rows


def test_every_bench_module_runs_and_reports_its_rows() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke"],
        cwd=ROOT, capture_output=True, text=True, timeout=170,
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
    assert sorted(expected - measures) == []
    values = [value for _, _, value in rows]
    assert all(value and "nan" not in value and "inf" not in value for value in values), values
    assert "pipeline rows at" in done.stdout  # the notes under the table
