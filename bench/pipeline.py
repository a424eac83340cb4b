"""The whole pipeline end to end: simulator → ingest → aggregate → publish → a WebSocket user.

Every stage runs as the real process (`python -m ingest` etc.) on a private redis-server this
bench starts (never port 6379), configured only through STREAMER_* variables. One trial runs the
simulator at a steady rate for a window and measures:

- candle delay: a candle's arrival at a WebSocket client minus its end (open + interval); the
  table also gives p99 minus the configured waiter latency (a candle whose symbol trades again
  after its end closes before the waiter expires, so the delay may be below it). One clock: the
  simulator's trade times are its wall clock (`--clock-offset-ms 0`) and every process runs on
  this machine, so end and arrival are both read from the same wall clock. Only revision-0
  closed candles count.
- trade-stream lag: a trades entry's Redis id time minus its newest trade's time (exchange →
  ingest → Redis), sampled from the tail of every trade stream twice a second.
- aggregator lag: the aggregator's own `aggregate_stream_lag_ms` (wall clock − stream time).
- delivered rate (ingest_trades_total over the window), CPU per process (/proc/<pid>/stat),
  peak RSS per process (VmHWM in /proc/<pid>/status) and Redis used_memory.

"Keeps up" with a load means, over the measured window (25 s, after the first candle arrived):
trade-stream lag p99, aggregator lag p99 and candle delay p99 − waiter each ≤ 1 s. A pipeline
that falls behind builds a backlog, so its lags grow past any bound within the window; 1 s (not
the 25 ms delay target, judged separately) lets pauses of a shared machine pass. The search steps
the asked rate up (5k, 10k, 20k, 30k, 40k, 60k, 80k) and stops at the first step that falls
behind or whose load did not arrive (the simulator delivered < 90 % of it: it shares the two
cores, and skips ahead instead of catching up after a stall), each confirmed by a second try
(the machine is shared: another process's burst must not end the search); the result is the
highest delivered rate among the steps that kept up.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from bench.pipeline_trial import (
    CONNECTIONS,
    INTERVALS,
    SHARDS,
    STAGES,
    WAITER_MS,
    Result,
    Run,
    pct,
)
from bench.report import Row

TARGET_RATE = 20_000
LOGS = Path(tempfile.gettempdir()) / "bench-pipeline-logs"
NOTES: list[str] = []  # printed under the table by `python -m bench`


def trial(symbols: int, rate: int, window_s: float, profile: str | None = None) -> Result:
    result = Result(symbols, rate, window_s)
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        run = Run(Path(tmp), symbols, rate, profile)
        try:
            run.warm_up()
            run.measure(result)
        finally:
            run.close()
        if profile:
            NOTES.extend(_profile_lines(run.profile_path, profile, symbols, rate))
        _keep_logs(Path(tmp), f"{symbols}-{rate}" + (f"-{profile}" if profile else ""))
    print(f"  {symbols} symbols @ {rate:,}/s: {_summary(result)}", file=sys.stderr, flush=True)
    return result


def _keep_logs(tmp: Path, name: str) -> None:
    """The processes' logs of the latest trial of each kind stay in LOGS for a look afterwards."""
    import shutil

    target = LOGS / name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for log in tmp.glob("*.log"):
        shutil.copy(log, target / log.name)


def _summary(r: Result) -> str:
    verdict = "keeps up" if not r.failures() else "falls behind: " + "; ".join(r.failures())
    return (
        f"{verdict}; delivered {r.delivered:,.0f}/s, trade lag p99 {pct(r.trade_lag_ms, 99):.0f}"
        f" ms, agg lag p99 {pct(r.agg_lag_ms, 99):.0f} ms, delay p50/p99/max"
        f" {pct(r.delay_ms, 50):.0f}/{pct(r.delay_ms, 99):.0f}/{pct(r.delay_ms, 100):.0f} ms;"
        f" CPU {r.busiest()}; load average {r.load_1m:.1f}"
    )


def _profile_lines(path: Path, stage: str, symbols: int, rate: int) -> list[str]:
    """Own time by package, then the functions with the most own time."""
    import pstats
    from collections import Counter

    if not path.exists():
        return [f"profile of {stage}: no output (it did not exit cleanly)"]
    stats = pstats.Stats(str(path))
    table: dict[tuple[str, int, str], tuple[int, int, float, float, object]] = stats.stats  # type: ignore[attr-defined]  # not in typeshed
    total = sum(own_s for _, _, own_s, _, _ in table.values()) or 1.0
    by_package: Counter[str] = Counter()  # own time in µs
    for (file, _, _), (_, _, own_s, _, _) in table.items():
        by_package[_package(file)] += int(own_s * 1e6)
    shares = ", ".join(f"{name} {own / 1e6 / total:.0%}" for name, own in by_package.most_common(8))
    lines = [
        f"profile of {stage} under cProfile ({symbols} symbols @ {rate:,} trades/s asked; cProfile"
        f" slows it), own time by package: {shares}; top functions:"
    ]
    for (file, line, func), (_, calls, own_s, _, _) in sorted(
        table.items(), key=lambda kv: -kv[1][2]
    )[:10]:
        where = f"{Path(file).parent.name}/{Path(file).name}:{line}" if line else "C"
        lines.append(f"  {own_s / total:6.1%}  {calls:>9,} calls  {func}  ({where})")
    return lines


def _package(file: str) -> str:
    if file == "~":
        return "C builtins (msgspec, bytes, uvloop…)"
    if "site-packages/" in file:
        return file.split("site-packages/", 1)[1].split("/", 1)[0]
    root = str(Path(__file__).resolve().parents[1]) + "/"
    if file.startswith(root):
        return file[len(root) :].split("/", 1)[0]
    return "stdlib " + Path(file).parent.name if "/python3" in file else file


def search(symbols: int, rates: list[int], window_s: float) -> tuple[Result | None, list[Result]]:
    """Step the rate up until a step falls behind or its load does not arrive: the step that
    kept up with the most delivered trades (None if none did), and every step run."""
    best: Result | None = None
    steps = []
    for rate in rates:
        result = trial(symbols, rate, window_s)
        if result.failures() or result.short():
            # The box is shared: a failure counts only if a second try fails too.
            NOTES.append(f"{rate:,} trades/s, first try: {_summary(result)}")
            result = trial(symbols, rate, window_s)
        steps.append(result)
        if not result.failures() and (best is None or result.delivered > best.delivered):
            best = result
        if result.failures() or result.short():
            why = "fell behind" if result.failures() else "the load did not arrive"
            NOTES.append(f"search stopped at {rate:,} trades/s ({why}): {_summary(result)}")
            break
    return best, steps


def _rows(label: str, r: Result, with_memory: bool) -> list[Row]:
    stage = f"pipeline, {label}"
    rows = [
        Row(stage, "trades delivered through ingest", r.delivered, "trades/s", "asked", r.asked),
        Row(stage, "candle delay (arrival − end), p50", pct(r.delay_ms, 50), "ms"),
        Row(stage, "candle delay (arrival − end), p99", pct(r.delay_ms, 99), "ms"),
        Row(stage, "candle delay (arrival − end), max", pct(r.delay_ms, 100), "ms"),
        Row(
            stage,
            f"candle delay p99 − waiter latency ({WAITER_MS} ms)",
            pct(r.delay_ms, 99) - WAITER_MS,
            "ms",
            target="≤ 25 ms",
        ),
        Row(stage, "of which: aggregator write − (end + waiter), p50", pct(r.written_ms, 50), "ms"),
        Row(stage, "of which: aggregator write − (end + waiter), p99", pct(r.written_ms, 99), "ms"),
        Row(stage, "of which: arrival − aggregator write, p99", pct(r.hop_ms, 99), "ms"),
        Row(stage, "trade-stream lag p99 (Redis id − trade time)", pct(r.trade_lag_ms, 99), "ms"),
        Row(stage, "aggregator lag p99 (wall − stream time)", pct(r.agg_lag_ms, 99), "ms"),
    ]
    for name in (*STAGES, "simulator"):
        rows.append(Row(stage, f"peak RSS {name}", r.rss_mb.get(name, 0.0), "MB",
                        target="≤ 150 MB" if name in STAGES else ""))  # fmt: skip
    rows.append(Row(stage, "Redis used_memory at the end of the run", r.redis_mb, "MB"))
    if with_memory:
        for name in (*STAGES, "simulator", "redis"):
            rows.append(Row(stage, f"CPU {name}", 100 * r.cpu.get(name, 0.0), "% of a core"))
        rows.append(Row(stage, "trades per trade-stream entry", r.trades_per_entry, ""))
        for kind in ("trades", "klines"):
            rows.append(Row(stage, f"Redis bytes per {kind} stream entry",
                            r.entry_bytes.get(kind, 0.0), "B"))  # fmt: skip
        rows.append(Row(stage, "Redis after 1 h of stream time (extrapolated)",
                        r.redis_hour_mb, "MB"))  # fmt: skip
    return rows


def run(smoke: bool) -> list[Row]:
    NOTES.clear()
    window_s = 2.0 if smoke else 25.0
    rates = [2_000] if smoke else [5_000, 10_000, 20_000, 30_000, 40_000, 60_000, 80_000]
    target = rates[0] if smoke else TARGET_RATE
    best, steps = search(500, rates, window_s)
    at_target = next((r for r in steps if r.asked == target), None) or trial(500, target, window_s)
    rows = [
        Row("pipeline, 500 symbols", "highest rate kept up (delivered; vs asked)",
            best.delivered if best else 0.0, "trades/s", "asked", best.asked if best else 0,
            target="≥ 20,000"),
    ]  # fmt: skip
    rows += _rows("500 symbols", at_target, with_memory=True)
    for symbols in (50, 2_000):
        rows += _rows(f"{symbols:,} symbols", trial(symbols, target, window_s), with_memory=False)
    if not smoke:
        slowest = max(STAGES, key=lambda name: at_target.cpu.get(name, 0.0))
        trial(500, target, window_s, profile=slowest)
    NOTES.insert(0, f"pipeline rows at {target:,} trades/s unless said; {window_s:.0f} s windows;"
                    f" intervals {INTERVALS}; waiter {WAITER_MS} ms; {SHARDS} shards;"
                    f" {CONNECTIONS} ingest connections; one process per stage")  # fmt: skip
    return rows


if __name__ == "__main__":
    for row in run(smoke="--smoke" in sys.argv):
        print(row)
    print("\n".join(NOTES))
