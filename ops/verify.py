"""`python -m ops verify`: recompute the candles from the trade streams and compare.

For each shard, a fresh candle core (the aggregator's own code and settings) reads the retained
trade stream from its start and the result is compared with the candle stream, candle by candle
(the last revision of each). The recomputation starts cold where the trade stream was trimmed, so
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
SeriesKey = tuple[str, int, int]  # symbol, interval ms, open time


@dataclass
class Report:
    compared: int = 0
    equal: int = 0
    differ: list[tuple[CandleView, CandleView]] = field(default_factory=list)
    missing: list[CandleView] = field(default_factory=list)  # recomputed, never published
    extra: list[CandleView] = field(default_factory=list)  # published, not recomputed

    @property
    def ok(self) -> bool:
        return not (self.differ or self.missing or self.extra)


async def _read_all(client: aioredis.Redis, key: str) -> list[bytes]:
    out: list[bytes] = []
    start = "-"
    while True:
        batch: Any = await client.xrange(key, min=start, max="+", count=READ_COUNT)
        out.extend(fields[STREAM_FIELD] for _, fields in batch)
        if len(batch) < READ_COUNT:
            return out
        start = "(" + batch[-1][0].decode()


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
    for shard in range(settings.shards):
        mine = recompute(settings, await _read_all(client, keys.trades(shard)))
        theirs = published(await _read_all(client, keys.klines(shard)))
        compare(mine, theirs, from_ms, to_ms, report)
    return report


def render(report: Report) -> str:
    lines = [
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


async def run_verify(settings: AggregateSettings, from_ms: int | None, to_ms: int | None) -> int:
    client = connect(settings)
    try:
        report = await verify(client, settings, from_ms, to_ms)
    finally:
        await client.aclose()
    print(render(report))
    return 0 if report.ok else 1
