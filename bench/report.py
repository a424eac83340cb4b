"""One row per measurement: the figure, the baseline measured in the same run, and their ratio."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    stage: str
    what: str
    value: float
    unit: str
    baseline_name: str = ""
    baseline: float = 0.0
    target: str = ""

    @property
    def ratio(self) -> float | None:
        return self.value / self.baseline if self.baseline else None


def median_rate(work: Callable[[], int], trials: int) -> float:
    """Median over `trials` of items/s, where `work()` does the items and returns their count."""
    rates = []
    for _ in range(trials):
        start = time.perf_counter()
        count = work()
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def fmt(value: float) -> str:
    if value >= 100_000:
        return f"{value / 1000:,.0f} k"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def table(rows: list[Row]) -> str:
    lines = [
        "| stage | measure | value | baseline (same run) | ratio | target |",
        "|---|---|---:|---:|---:|---|",
    ]
    for row in rows:
        base = f"{fmt(row.baseline)} ({row.baseline_name})" if row.baseline else ""
        ratio = f"{row.ratio:.2f}" if row.ratio is not None else ""
        lines.append(
            f"| {row.stage} | {row.what} | {fmt(row.value)} {row.unit} | {base} | {ratio} "
            f"| {row.target} |"
        )
    return "\n".join(lines)
