"""`python -m ops status`: the pipeline at a glance, read from Redis alone.

Shards and their owners per stage, stream lengths, how far the aggregator's checkpoint is behind
the trade stream, the publishers' lag and WebSocket clients, and the newest closed candle per
interval.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from common.keys import Keys
from common.wire import STREAM_FIELD
from publish.heartbeat import status_decoder

STAGES = ("ingest", "aggregate")
CANDLES_SCANNED = 200


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


@dataclass
class PipelineStatus:
    meta: dict[str, str]
    shards: list[ShardStatus]
    publishers: list[str]
    newest: dict[str, tuple[int, str]] = field(default_factory=dict)  # label -> (open ms, symbol)


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
    status = PipelineStatus(meta=meta, shards=shards, publishers=await _publishers(client, keys))
    for k in range(shard_count):
        tail: Any = await client.xrevrange(keys.klines(k), count=CANDLES_SCANNED)
        for _, fields in tail:
            candle = _candle_head.decode(fields[STREAM_FIELD])
            label = candle.interval_label or f"{candle.interval}ms"
            if candle.closed and candle.timestamp > status.newest.get(label, (0, ""))[0]:
                status.newest[label] = (candle.timestamp, candle.symbol)
    return status


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


async def _publishers(client: aioredis.Redis, keys: Keys) -> list[str]:
    now_ms = int(time.time() * 1000)
    lines = []
    replicas: Any = await client.hgetall(keys.status("publish"))
    for raw in replicas.values():
        status = status_decoder.decode(raw)
        stale = " (stale: not refreshed)" if status.expires_ms < now_ms else ""
        lags = ", ".join(f"{name} {lag} ms behind" for name, lag in status.consumers.items())
        lines.append(
            f"{status.replica}: {lags}; {status.websocket_clients} WebSocket clients{stale}"
        )
    return sorted(lines)


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
        agg_lag = (
            f"{s.trades_last_ms - s.checkpoint_ms} ms"
            if s.trades_last_ms is not None and s.checkpoint_ms is not None
            else "-"
        )
        pending = "-" if s.group_pending is None else f"{s.group_pending}/{s.group_lag}"
        lines.append(
            f"{s.shard:>5}  {_owner(s.owners.get('ingest')):<28} "
            f"{_owner(s.owners.get('aggregate')):<28} {s.trades_len:>9} "
            f"{_clock(s.trades_last_ms):>12} {agg_lag:>8} {s.klines_len:>9} "
            f"{_clock(s.klines_last_ms):>12} {pending:>11}"
        )
    lines += ["", "publishers:"] + [f"  {line}" for line in status.publishers or ["(none)"]]
    lines += ["", "newest closed candle per interval:"]
    for label, (open_ms, symbol) in sorted(status.newest.items()):
        lines.append(f"  {label:>6}  {_clock(open_ms)} UTC  ({symbol})")
    if not status.newest:
        lines.append("  (none yet)")
    return "\n".join(lines)
