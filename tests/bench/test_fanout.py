"""The fan-out control of bench/boundary.py (`--fanout`, bench.aggregate_fanout) runs, and its
user gets exactly the candles publish's user gets: their delays can be compared."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.bench.test_smoke import table_rows
from tests.support.procs import ROOT


@pytest.mark.timeout(200)
def test_the_aggregators_own_fan_out_carries_publishs_candles() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.boundary", "--fanout", "--smoke"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = table_rows(done.stdout)
    stage = "fan-out control, 500 symbols @ 2,000/s, lean load"
    measures = {measure for row_stage, measure, _ in rows if row_stage == stage}
    for way in ("via publish", "in the aggregator"):
        assert f"candle delay p99 − waiter latency, {way}, trial 1" in measures, done.stdout
        assert f"arrival − due p99 (closed by the waiter), {way}, trial 1" in measures, done.stdout
        assert f"arrival − candle written p50, {way}, trial 1" in measures, done.stdout
    same = re.search(r"candles both users got ([\d,]+) the same, (\d+) different", done.stdout)
    assert same is not None, done.stdout
    # every boundary of the 3 s window closes ~500 candles: both users got them, identical
    assert int(same[1].replace(",", "")) >= 1_000 and same[2] == "0", same[0]
