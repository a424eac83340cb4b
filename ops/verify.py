"""`python -m ops verify`: recompute the candles from the trade streams and compare.

For each shard, a fresh candle core (the aggregator's own code and settings) reads the retained
trade stream from its start (with --from/--to: only the entries written around that range, see
`read_windows`) and the result is compared with the candle stream, candle by candle (the last
revision of each). In klines mode there is nothing to recompute: it says so and compares nothing.
The recomputation starts cold where the trade stream was trimmed, so
each series' first candle is partial there and not compared; a candle the trim cut short on the
candle stream side is not reported as missing either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from aggregate.candles import CandleCore
from aggregate.feed import EntryFeeder
from aggregate.output import CandleWriter
from aggregate.service import core_config
from common.keys import Keys
from common.redisconn import connect
from common.settings import AggregateSettings
from common.wire import STREAM_FIELD, CandleView, candle_view_decoder

READ_COUNT = 10_000
RANGE_SLACK_MS = 10_000  # entry ids (write times) trail trade times by network and batching
SeriesKey = tuple[str, int, int]  # symbol, interval ms, open time


@dataclass
class Report:
    compared: int = 0
    equal: int = 0
    differ: list[tuple[CandleView, CandleView]] = field(default_factory=list)
    missing: list[CandleView] = field(default_factory=list)  # recomputed, never published
    extra: list[CandleView] = field(default_factory=list)  # published, not recomputed
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.differ or self.missing or self.extra)


async def _read(
    client: aioredis.Redis, key: str, lo_ms: int | None = None, hi_ms: int | None = None
) -> list[bytes]:
    """The payloads of the entries written between lo_ms and hi_ms (entry ids are write times)."""
    out: list[bytes] = []
    start = "-" if lo_ms is None else str(max(lo_ms, 0))
    end = "+" if hi_ms is None else str(hi_ms)
    while True:
        batch: Any = await client.xrange(key, min=start, max=end, count=READ_COUNT)
        out.extend(fields[STREAM_FIELD] for _, fields in batch)
        if len(batch) < READ_COUNT:
            return out
        start = "(" + batch[-1][0].decode()


def read_windows(
    settings: AggregateSettings, from_ms: int | None, to_ms: int | None
) -> tuple[tuple[int | None, int | None], tuple[int | None, int | None]]:
    """The write-time windows of the trade and candle entries that decide the candles opening in
    [from_ms, to_ms): trades from two of the longest candles before (the first recomputed
    candle of a series is partial, and the next one opens at its close) up to the longest
    candle, the wait and the revision (or repair, the longer) window past to_ms; candles from
    from_ms to the end (a candle is written after its end, later still when the aggregator
    caught up a backlog)."""
    longest = max(i.ms for i in settings.kline_intervals)
    window_s = max(settings.kline_revision_window_s, settings.kline_repair_window_s)
    trail = longest + settings.aggregator_waiter_latency_ms + int(window_s * 1000) + RANGE_SLACK_MS
    hi = None if to_ms is None else to_ms + trail
    trades_lo = None if from_ms is None else from_ms - 2 * longest - RANGE_SLACK_MS
    return (trades_lo, hi), (from_ms, None)


def recompute(settings: AggregateSettings, payloads: list[bytes]) -> dict[SeriesKey, CandleView]:
    core = CandleCore(core_config(settings))
    EntryFeeder(core).feed(payloads)
    writer = CandleWriter(settings.kline_intervals, settings.bybit_category.value)
    latest: dict[SeriesKey, CandleView] = {}
    for candle in core.take():
        if candle.closed:
            view = candle_view_decoder.decode(writer.encode(candle))
            latest[(view.symbol, view.interval, view.timestamp)] = view
    return latest


def published(payloads: list[bytes]) -> dict[SeriesKey, CandleView]:
    latest: dict[SeriesKey, CandleView] = {}
    for payload in payloads:
        view = candle_view_decoder.decode(payload)
        key = (view.symbol, view.interval, view.timestamp)
        if key not in latest or view.revision >= latest[key].revision:
            latest[key] = view
    return latest


def compare(
    mine: dict[SeriesKey, CandleView],
    theirs: dict[SeriesKey, CandleView],
    from_ms: int | None,
    to_ms: int | None,
    report: Report,
) -> None:
    first_mine: dict[tuple[str, int], int] = {}
    first_theirs: dict[tuple[str, int], int] = {}
    for keys, firsts in ((mine, first_mine), (theirs, first_theirs)):
        for symbol, interval, open_ms in keys:
            series = (symbol, interval)
            firsts[series] = min(open_ms, firsts.get(series, open_ms))

    def in_range(open_ms: int) -> bool:
        return (from_ms is None or open_ms >= from_ms) and (to_ms is None or open_ms < to_ms)

    for key in sorted(set(mine) | set(theirs)):
        symbol, interval, open_ms = key
        if not in_range(open_ms):
            continue
        a, b = mine.get(key), theirs.get(key)
        if a is not None and b is not None:
            report.compared += 1
            if a == b:
                report.equal += 1
            else:
                report.differ.append((a, b))
        elif a is not None:
            if open_ms >= first_theirs.get((symbol, interval), 1 << 62):
                report.missing.append(a)
        elif b is not None and open_ms > first_mine.get((symbol, interval), 1 << 62):
            report.extra.append(b)


async def verify(
    client: aioredis.Redis, settings: AggregateSettings, from_ms: int | None, to_ms: int | None
) -> Report:
    keys = Keys(settings.redis_prefix)
    report = Report()
    (trades_lo, trades_hi), (klines_lo, klines_hi) = read_windows(settings, from_ms, to_ms)
    for shard in range(settings.shards):
        trades = await _read(client, keys.trades(shard), trades_lo, trades_hi)
        klines = await _read(client, keys.klines(shard), klines_lo, klines_hi)
        if (
            (from_ms, to_ms) != (None, None)
            and not trades
            and await client.xlen(keys.trades(shard))
        ):
            # entry ids are write times, not trade times, after `ingest replay` of history
            report.notes.append(
                f"shard {shard}: no entry written in that time range (replayed history?): "
                "read the whole retained streams"
            )
            trades = await _read(client, keys.trades(shard))
            klines = await _read(client, keys.klines(shard))
        compare(recompute(settings, trades), published(klines), from_ms, to_ms, report)
    return report


def render(report: Report) -> str:
    lines = [*report.notes]
    if report.compared == 0:
        lines.append("nothing compared: no closed candle in the retained streams and range")
    lines += [
        f"compared {report.compared} candles: {report.equal} equal, {len(report.differ)} differ, "
        f"{len(report.missing)} missing from the candle streams, {len(report.extra)} published "
        "but not recomputed"
    ]
    for mine, theirs in report.differ[:20]:
        lines.append(f"DIFFER  recomputed {mine}\n        published  {theirs}")
    for view in report.missing[:20]:
        lines.append(f"MISSING {view}")
    for view in report.extra[:20]:
        lines.append(f"EXTRA   {view}")
    return "\n".join(lines)


KLINES_MODE_NOTE = (
    "klines mode: the candles are Bybit's own and there are no trade streams to recompute them "
    "from; nothing compared (verify checks trade-built candles only)"
)


async def run_verify(settings: AggregateSettings, from_ms: int | None, to_ms: int | None) -> int:
    client = connect(settings)
    try:
        mode: Any = await client.hget(Keys(settings.redis_prefix).meta(), "mode")
        if settings.klines_mode or mode == b"klines":
            print(KLINES_MODE_NOTE)
            return 0
        report = await verify(client, settings, from_ms, to_ms)
    finally:
        await client.aclose()
    print(render(report))
    return 0 if report.ok else 1
