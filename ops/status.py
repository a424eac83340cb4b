"""`python -m ops status`: the pipeline at a glance, read from Redis alone.

Shards and their owners per stage, stream lengths, how far the aggregator's checkpoint is behind
the trade stream, the publishers' lag and WebSocket clients, the newest closed candle of every
configured interval, and whether all that is healthy (`problems()`; the exit code says it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from common.errors import ConfigError
from common.intervals import Interval, parse_intervals
from common.keys import Keys
from common.wire import STREAM_FIELD
from publish.heartbeat import PublishStatus, status_decoder

STAGES = ("ingest", "aggregate")
TAIL_SCANNED = 2000
BOUNDARY_WINDOW_MS = 120_000  # a candle is written within this long after its end (live)
BOUNDARY_READ = 10_000
BOUNDARIES_TRIED = 3
AGGREGATE_LAG_MAX_MS = 30_000
CONSUMER_LAG_MAX_MS = 60_000


class _CheckpointHead(msgspec.Struct):
    last_id: str = ""


_checkpoint_head = msgspec.json.Decoder(_CheckpointHead)


class _CandleHead(msgspec.Struct):
    symbol: str
    interval: int
    timestamp: int
    interval_label: str = ""
    closed: bool = True


_candle_head = msgspec.json.Decoder(_CandleHead)


@dataclass
class ShardStatus:
    shard: int
    owners: dict[str, tuple[str, int]]  # stage -> (token, ms left)
    trades_len: int
    trades_last_ms: int | None
    klines_len: int
    klines_last_ms: int | None
    checkpoint_ms: int | None
    group_pending: int | None
    group_lag: int | None

    def checkpoint_lag_ms(self) -> int | None:
        if self.trades_last_ms is None or self.checkpoint_ms is None:
            return None
        return self.trades_last_ms - self.checkpoint_ms


@dataclass
class PipelineStatus:
    meta: dict[str, str]
    shards: list[ShardStatus]
    publishers: list[PublishStatus]
    now_ms: int
    newest: dict[str, tuple[int, str]] = field(default_factory=dict)  # label -> (open ms, symbol)

    def problems(self) -> list[str]:
        """What makes the pipeline unhealthy; `ops status` exits 1 unless this is empty."""
        if not self.meta:
            return ["no pipeline under this prefix (its meta hash is missing)"]
        stages = ("ingest",) if self.meta.get("mode") == "klines" else STAGES
        out = [f"shard {s.shard}: no {stage} owner" for s in self.shards for stage in stages
               if stage not in s.owners]  # fmt: skip
        out += [
            f"shard {s.shard}: the aggregator is {lag} ms behind the trade stream"
            for s in self.shards
            if (lag := s.checkpoint_lag_ms()) is not None and lag > AGGREGATE_LAG_MAX_MS
        ]
        if not self.publishers:
            out.append("no publish replica reports its status")
        for p in self.publishers:
            if p.expires_ms < self.now_ms:
                out.append(f"publish replica {p.replica}: status not refreshed (stopped?)")
            out += [
                f"publish replica {p.replica}: {name} is {lag} ms behind"
                for name, lag in p.consumers.items()
                if lag > CONSUMER_LAG_MAX_MS
            ]
        return out


def _id_ms(entry_id: bytes | str | None) -> int | None:
    if not entry_id:
        return None
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


async def _last_id(client: aioredis.Redis, key: str) -> tuple[int, bytes | None]:
    length = await client.xlen(key)
    newest: Any = await client.xrevrange(key, count=1)
    return length, (newest[0][0] if newest else None)


async def collect(client: aioredis.Redis, keys: Keys, group: str) -> PipelineStatus:
    raw_meta: Any = await client.hgetall(keys.meta())
    meta = {k.decode(): v.decode() for k, v in raw_meta.items()}
    shard_count = int(meta.get("shards", "0") or 0)
    shards = [await _shard(client, keys, k, group) for k in range(shard_count)]
    status = PipelineStatus(
        meta=meta,
        shards=shards,
        publishers=await _publishers(client, keys),
        now_ms=int(time.time() * 1000),
    )
    intervals = _intervals(meta.get("intervals", ""))
    for shard in shards:
        newest = await _newest_candles(client, keys.klines(shard.shard), intervals, shard)
        for label, (open_ms, symbol) in newest.items():
            if open_ms > status.newest.get(label, (-1, ""))[0]:
                status.newest[label] = (open_ms, symbol)
    return status


def _intervals(text: str) -> list[Interval]:
    try:
        return list(parse_intervals(text)) if text else []
    except ConfigError:
        return []


def _fold(newest: dict[str, tuple[int, str]], entries: Any) -> None:
    for _, fields in entries:
        candle = _candle_head.decode(fields[STREAM_FIELD])
        label = candle.interval_label or f"{candle.interval}ms"
        if candle.closed and candle.timestamp > newest.get(label, (-1, ""))[0]:
            newest[label] = (candle.timestamp, candle.symbol)


async def _newest_candles(
    client: aioredis.Redis, key: str, intervals: list[Interval], shard: ShardStatus
) -> dict[str, tuple[int, str]]:
    """The newest closed candle of every interval, without reading the whole stream: the tail
    holds the short intervals; a long one's newest candle was written just after its end, the
    interval's last boundary before the newest entry (entry ids are write times), so the
    entries from each of its last few boundaries on are read until it shows up."""
    newest: dict[str, tuple[int, str]] = {}
    _fold(newest, await client.xrevrange(key, count=TAIL_SCANNED))
    if shard.klines_last_ms is None:
        return newest
    for interval in intervals:
        boundary = interval.floor(shard.klines_last_ms)
        for _ in range(BOUNDARIES_TRIED):
            if await _read_boundary(client, key, interval, boundary, newest):
                break
            boundary = interval.floor(boundary - 1)
    return newest


async def _read_boundary(
    client: aioredis.Redis, key: str, interval: Interval, boundary: int, newest: dict[str, Any]
) -> bool:
    """Fold the entries written from `boundary` on; True once a candle of `interval` that ends
    at or after the boundary was seen (nothing newer can have been written before)."""

    def reached() -> bool:
        seen = newest.get(interval.label)
        return seen is not None and interval.next_open(seen[0]) >= boundary

    start, end, read = str(boundary), str(boundary + BOUNDARY_WINDOW_MS), 0
    while not reached() and read < BOUNDARY_READ:
        entries: Any = await client.xrange(key, min=start, max=end, count=1000)
        _fold(newest, entries)
        if len(entries) < 1000:
            break
        read += len(entries)
        start = "(" + entries[-1][0].decode()
    return reached()


async def _shard(client: aioredis.Redis, keys: Keys, k: int, group: str) -> ShardStatus:
    owners = {}
    for stage in STAGES:
        token: Any = await client.get(keys.lease(stage, k))
        if token is not None:
            owners[stage] = (token.decode(), int(await client.pttl(keys.lease(stage, k))))
    trades_len, trades_last = await _last_id(client, keys.trades(k))
    klines_len, klines_last = await _last_id(client, keys.klines(k))
    state: Any = await client.hget(keys.state(k), "head")  # aggregate.checkpoint
    checkpoint_ms = _id_ms(_checkpoint_head.decode(state).last_id) if state else None
    pending = lag = None
    try:
        for info in await client.xinfo_groups(keys.klines(k)):
            name = info["name"]
            if (name.decode() if isinstance(name, bytes) else name) == group:
                pending = int(info["pending"])
                lag = info.get("lag")
    except ResponseError:
        pass  # no stream yet
    return ShardStatus(
        k, owners, trades_len, _id_ms(trades_last), klines_len, _id_ms(klines_last),
        checkpoint_ms, pending, None if lag is None else int(lag),
    )  # fmt: skip


async def _publishers(client: aioredis.Redis, keys: Keys) -> list[PublishStatus]:
    replicas: Any = await client.hgetall(keys.status("publish"))
    return sorted(
        (status_decoder.decode(raw) for raw in replicas.values()), key=lambda p: p.replica
    )


def _publisher_line(status: PublishStatus, now_ms: int) -> str:
    stale = " (stale: not refreshed)" if status.expires_ms < now_ms else ""
    lags = ", ".join(f"{name} {lag} ms behind" for name, lag in status.consumers.items())
    return f"{status.replica}: {lags}; {status.websocket_clients} WebSocket clients{stale}"


def _clock(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S.%f")[:-3]


def _owner(owner: tuple[str, int] | None) -> str:
    if owner is None:
        return "(none)"
    token, left_ms = owner
    parts = token.split(":")
    name = ":".join(parts[1:3]) if len(parts) >= 3 else token
    return f"{name} ({left_ms / 1000:.1f}s)"


def render(status: PipelineStatus, prefix: str) -> str:
    meta = status.meta
    if not meta:
        return f"no pipeline found under prefix {prefix!r} ({prefix}:meta is missing)"
    lines = [
        f"pipeline {prefix!r}: {meta.get('shards')} shards, intervals {meta.get('intervals')}, "
        f"mode {meta.get('mode')}, category {meta.get('category')}",
        "",
        f"{'shard':>5}  {'ingest owner':<28} {'aggregate owner':<28} {'trades':>9} "
        f"{'newest trade':>12} {'ckpt lag':>8} {'klines':>9} {'newest kline':>12} "
        f"{'pub pending':>11}",
    ]
    for s in status.shards:
        lag_ms = s.checkpoint_lag_ms()
        agg_lag = "-" if lag_ms is None else f"{lag_ms} ms"
        pending = "-" if s.group_pending is None else f"{s.group_pending}/{s.group_lag}"
        lines.append(
            f"{s.shard:>5}  {_owner(s.owners.get('ingest')):<28} "
            f"{_owner(s.owners.get('aggregate')):<28} {s.trades_len:>9} "
            f"{_clock(s.trades_last_ms):>12} {agg_lag:>8} {s.klines_len:>9} "
            f"{_clock(s.klines_last_ms):>12} {pending:>11}"
        )
    publishers = [_publisher_line(p, status.now_ms) for p in status.publishers]
    lines += ["", "publishers:"] + [f"  {line}" for line in publishers or ["(none)"]]
    lines += ["", "newest closed candle per interval:"]
    labels = [i.label for i in _intervals(meta.get("intervals", ""))] or sorted(status.newest)
    for label in labels:
        found = status.newest.get(label)
        when = f"{_day_clock(found[0])} UTC  ({found[1]})" if found else "(none found)"
        lines.append(f"  {label:>6}  {when}")
    problems = status.problems()
    lines += ["", "healthy" if not problems else "NOT healthy:"]
    lines += [f"  {problem}" for problem in problems]
    return "\n".join(lines)


def _day_clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def as_json(status: PipelineStatus) -> bytes:
    """`ops status --json`: the same figures for scripts, plus `healthy` and `problems`."""
    problems = status.problems()
    return msgspec.json.encode(
        {
            "healthy": not problems,
            "problems": problems,
            "meta": status.meta,
            "shards": [
                {
                    "shard": s.shard,
                    "owners": {
                        stage: {"token": t, "ttl_ms": ms} for stage, (t, ms) in s.owners.items()
                    },
                    "trades": s.trades_len,
                    "newest_trade_ms": s.trades_last_ms,
                    "aggregate_lag_ms": s.checkpoint_lag_ms(),
                    "klines": s.klines_len,
                    "newest_kline_ms": s.klines_last_ms,
                    "group_pending": s.group_pending,
                    "group_lag": s.group_lag,
                }
                for s in status.shards
            ],
            "publishers": [
                {**msgspec.structs.asdict(p), "stale": p.expires_ms < status.now_ms}
                for p in status.publishers
            ],
            "newest": {
                label: {"timestamp": open_ms, "symbol": symbol}
                for label, (open_ms, symbol) in sorted(status.newest.items())
            },
        }
    )
